"""
Sanity checks printed in every report. Each says whether the attack could have produced the numbers it reports.

Each check is a function returning a [`SanityCheck`]; the runner feeds them the accuracies it measured. On tiny
random components (the tests) the thresholds are not meaningful: there the tests check the machinery, e.g. that a
deliberately broken attack or defense fails.
"""

import math
from dataclasses import dataclass, field

import torch

from ..attacks import attack_loss
from .config import UNDEFENDED_MAX_ACCURACY


@dataclass
class SanityCheck:
    """One check's outcome: `passed` is `None` when it was skipped (e.g. `sanity_images=0`)."""

    name: str
    passed: bool | None
    detail: str
    values: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "SKIPPED" if self.passed is None else ("PASSED" if self.passed else "FAILED")

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "passed": self.passed, "detail": self.detail,
                "values": self.values}


def noise_tolerance(accuracy: float, num_images: int, z: float = 2.0) -> float:
    """z standard errors of a binomial proportion at `accuracy` over `num_images`, and never less than one image."""
    return max(z * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / num_images), 1.0 / num_images)


def check_undefended_collapse(accuracy: float, num_images: int, norm: str, eps: float,
                              threshold: float | None = None,
                              clean_accuracy: float | None = None, attack: str = "PGD",
                              seed: int | None = None) -> SanityCheck:
    """The attack must break the undefended classifier at the nominal eps: accuracy at most `threshold` (default:
    the calibrated threshold of `norm`, `UNDEFENDED_MAX_ACCURACY`).
    If it does not, the attack (not the defense) is broken, and every number beside it is meaningless. With a
    clean accuracy of 0 the check is vacuous (there was nothing to break) and fails too."""
    threshold = UNDEFENDED_MAX_ACCURACY[norm] if threshold is None else threshold
    vacuous = clean_accuracy is not None and clean_accuracy == 0
    passed = accuracy <= threshold and not vacuous
    clean = "" if clean_accuracy is None else f", clean {100 * clean_accuracy:.1f}%"
    detail = (f"undefended classifier under {attack} at {norm} eps={eps:g}: {100 * accuracy:.1f}% of {num_images} "
              f"images (must be <= {100 * threshold:g}%{clean})")
    if vacuous:
        detail += "; vacuous: the classifier gets no clean image right, so the attack was never tested"
    return SanityCheck(f"undefended falls under attack{'' if seed is None else f' [seed {seed}]'}", passed, detail,
                       {"accuracy": accuracy, "threshold": threshold, "num_images": num_images,
                        "clean_accuracy": clean_accuracy})


def check_huge_eps(defense: str, accuracy: float, num_images: int, num_classes: int, eps: float = 1.0) -> SanityCheck:
    """At Linf eps = 1 the attacker may draw any image, so a defense must fall to chance (1 / classes) or below,
    up to sampling noise. Higher means the gradient does not reach the input (gradient masking)."""
    chance = 1.0 / num_classes
    limit = chance + noise_tolerance(chance, num_images)
    passed = accuracy <= limit
    detail = (f"PGD at Linf eps={eps:g} leaves {100 * accuracy:.1f}% of {num_images} images "
              f"(chance {100 * chance:.1f}%, must be <= {100 * limit:.1f}%)")
    return SanityCheck(f"huge eps reaches chance [{defense}]", passed, detail,
                       {"accuracy": accuracy, "chance": chance, "limit": limit, "num_images": num_images, "eps": eps})


def sign_test_p_value(broken: int, repaired: int) -> float:
    """The exact one-sided McNemar (sign) test: with `broken` images robust -> broken and `repaired` broken ->
    robust, the probability of at least `broken` of the `broken + repaired` discordant images going that way if each
    went either way with probability 1/2 (no real change)."""
    discordant = broken + repaired
    return sum(math.comb(discordant, b) for b in range(broken, discordant + 1)) / 2**discordant


def convergence_flagged(broken: int, repaired: int, num_images: int, alpha: float, tolerance: float) -> bool:
    """The convergence rule: the paired test rejects at `alpha`, or robust accuracy drops by more than
    `tolerance` (a fraction) of `num_images`."""
    drop = (broken - repaired) / num_images
    return sign_test_p_value(broken, repaired) < alpha or drop > tolerance + 1e-12


def false_alarm_rate(discordant: int, num_images: int, alpha: float, tolerance: float) -> float:
    """The exact probability that [`convergence_flagged`] fires when doubling changes nothing, given `discordant`
    images changed either way: each of them then turned robust -> broken with probability 1/2."""
    return sum(math.comb(discordant, b) for b in range(discordant + 1)
               if convergence_flagged(b, discordant - b, num_images, alpha, tolerance)) / 2**discordant


def check_converged_paired(defense: str, what: str, weak: tuple[str, dict], strong: tuple[str, dict],
                           tolerance: float = 0.15, alpha: float = 0.05,
                           spent: tuple[float, float] | None = None) -> SanityCheck:
    r"""
    Doubling an attack's budget (steps, EOT draws or runs) must not break images the weaker attack left robust,
    compared per image on the same images (paired). `weak` and `strong` are `(name, {score: [robust per image]})`
    (clean-and-robust under each score). Per score, b images turn robust -> broken under the doubled budget and c
    broken -> robust; the attack is "not converged" when the exact one-sided McNemar test of b against c rejects at
    `alpha`, or robust accuracy drops by more than `tolerance`; any score failing fails the check.

    False alarms. If doubling changes nothing (each discordant image goes either way with probability 1/2), the
    test part fires at most `alpha` of the time per score; the tolerance part adds to that when many images are
    discordant. The exact rate given the discordant images observed is reported in `values` ("false_alarm_rate",
    per score) and in the detail (on 32 images at alpha 0.05 and tolerance 0.15: 0% with 4 discordant images, 3.1%
    with 5, 5.5% with 10, 13.2% with 20). The three scores are checked together, so a converged attack fails the
    check at most about three times as often as one score alone, and an evaluation with many rows and axes raises
    some false alarm more often than one check does: read a lone failure with p near `alpha` in that light.

    `spent`, the gradient evaluations per image the weak and the doubled attack actually spent: the doubled one must
    spend at least 1.5x (2x, less the first evaluation of each run on tiny budgets), or the check fails, since an
    attack that ignored its doubled budget gives the same images and would pass unseen.

    Example:

    ```py
    >>> weak = ("50 steps", {"all": [True] * 20 + [False] * 12})
    >>> strong = ("100 steps", {"all": [False] * 8 + [True] * 12 + [False] * 12})
    >>> check_converged_paired("latent", "the steps", weak, strong).passed  # 8 robust -> broken, 0 back
    False
    ```
    """
    (weak_name, weak_flags), (strong_name, strong_flags) = weak, strong
    values, failing = {}, []
    for kind, before in weak_flags.items():
        after = strong_flags[kind]
        if len(before) != len(after):
            raise ValueError(f"Paired convergence check on {len(before)} and {len(after)} images.")
        n = len(before)
        broken = sum(b and not a for b, a in zip(before, after))
        repaired = sum(a and not b for b, a in zip(before, after))
        p_value = sign_test_p_value(broken, repaired)
        flagged = convergence_flagged(broken, repaired, n, alpha, tolerance)
        values[kind] = {weak_name: sum(before) / n, strong_name: sum(after) / n, "robust_to_broken": broken,
                        "broken_to_robust": repaired, "p_value": p_value, "num_images": n,
                        "false_alarm_rate": false_alarm_rate(broken + repaired, n, alpha, tolerance)}
        if flagged:
            failing.append(kind)
    kind = failing[0] if failing else next(iter(values))
    v = values[kind]
    detail = (f"{weak_name} {100 * v[weak_name]:.1f}% -> {strong_name} {100 * v[strong_name]:.1f}% on "
              f"{v['num_images']} images; {v['robust_to_broken']} robust -> broken, {v['broken_to_robust']} broken -> "
              f"robust (one-sided exact McNemar p = {v['p_value']:.3g}; fails if p < {alpha:g} or the drop exceeds "
              f"{100 * tolerance:g} points; false-alarm rate {100 * v['false_alarm_rate']:.1f}%) [score: {kind}]")
    passed = not failing
    if not passed:
        detail += "; attack not converged: the reported robust accuracy is an upper bound"
    values = {"scores": values, "alpha": alpha, "tolerance": tolerance}
    if spent is not None:
        weak_spent, strong_spent = spent
        values["gradient_evaluations_per_image"] = {weak_name: weak_spent, strong_name: strong_spent}
        if strong_spent < 1.5 * weak_spent or strong_spent == 0:
            passed = False
            detail += (f"; the doubled budget was not spent ({strong_spent:g} against {weak_spent:g} gradient "
                       "evaluations per image): the check cannot tell whether the attack converged")
    return SanityCheck(f"attack converged: doubling {what} [{defense}]", passed, detail, values)


def check_gradient(model, images: torch.Tensor, labels: torch.Tensor, name: str = "defense", seed: int = 0,
                   step: float | None = None, rtol: float | None = None) -> SanityCheck:
    r"""
    The defense's input gradient is non-zero and matches central finite differences along a random direction, with
    the purification noise held fixed (`model.reseed(seed)` before every call). Run it in float64 on a tiny case
    (one image): there `step=1e-6` and `rtol=1e-4`; float32 uses `step=1e-3`, `rtol=5e-2`.

    Example:

    ```py
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    >>> check_gradient(model, torch.rand(1, 1, 2, 2, dtype=torch.float64), torch.tensor([0])).passed
    True
    ```
    """
    double = images.dtype == torch.float64
    step = step if step is not None else (1e-6 if double else 1e-3)
    rtol = rtol if rtol is not None else (1e-4 if double else 5e-2)
    # Keep the +-step probes inside [0, 1], where the defense accepts them.
    x = images.detach().clamp(1e-3, 1 - 1e-3)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    direction = (direction / direction.norm()).to(device=x.device, dtype=x.dtype)

    def loss_at(z):
        if hasattr(model, "reseed"):
            model.reseed(seed)
        # The margin loss, not CE: a confidently correct float64 prediction saturates the softmax, and its CE
        # gradient (~1e-13) would fail the check although the defense's gradient is fine.
        return attack_loss(model(z), labels, "margin")

    with torch.enable_grad():
        probe = x.clone().requires_grad_(True)
        loss = loss_at(probe)
        # A defense that cuts the graph has, for the attacker, a zero gradient: that is what this check must catch.
        grad = torch.autograd.grad(loss, probe, allow_unused=True)[0] if loss.requires_grad else None
        grad = torch.zeros_like(x) if grad is None else grad
    with torch.no_grad():
        numeric = ((loss_at(x + step * direction) - loss_at(x - step * direction)) / (2 * step)).item()
    analytic = (grad * direction).sum().item()
    grad_norm = grad.norm().item()
    error = abs(analytic - numeric)
    scale = max(abs(analytic), abs(numeric))
    nonzero = grad_norm > 1e-10
    passed = nonzero and error <= rtol * scale + 1e-9
    detail = (f"|grad| = {grad_norm:.3g}; directional derivative {analytic:.6g} (autograd) vs {numeric:.6g} "
              f"(finite differences), relative error {error / max(scale, 1e-30):.2g} (must be <= {rtol:g}"
              f"{' and the gradient non-zero' if not nonzero else ''})")
    return SanityCheck(f"gradient is exact [{name}]", passed, detail,
                       {"grad_norm": grad_norm, "autograd": analytic, "finite_differences": numeric,
                        "step": step, "rtol": rtol, "dtype": str(x.dtype).replace("torch.", "")})


def format_sanity_block(checks: list[SanityCheck], color: bool = False) -> str:
    """The checks as text; a failed one opens with a loud FAILED banner."""
    red, green, yellow, reset = ("\033[31;1m", "\033[32m", "\033[33m", "\033[0m") if color else ("",) * 4
    colors = {"PASSED": green, "FAILED": red, "SKIPPED": yellow}
    lines = [f"{colors[c.status]}[{c.status}]{reset} {c.name}: {c.detail}" for c in checks]
    failed = [c for c in checks if c.passed is False]
    if failed:
        banner = f"{red}{'!' * 78}\n!!! SANITY CHECK FAILED ({len(failed)} of {len(checks)}): the robust accuracies " \
                 f"below cannot be trusted\n{'!' * 78}{reset}"
        lines = [banner] + lines
    return "\n".join(lines)
