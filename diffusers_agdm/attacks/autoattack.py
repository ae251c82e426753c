"""
AutoAttack on any defended `nn.Module`: 'rand' (for randomised defenses) is APGD-CE then APGD-DLR with EOT, written
here on [`apgd`]; 'standard' (APGD-CE, APGD-T, FAB-T, Square, for deterministic models) goes through
torchattacks 3.5.1.

Why 'rand' is not torchattacks'. torchattacks' APGD and MultiAttack return the *clean* input for every point that one
stochastic pass did not flip. A randomised defense is then re-scored over K fresh runs on clean images, and the
attack looks far weaker than it is (on the embedded default: 75% robust against 49% under plain PGD). Here each
sub-attack returns its worst iterate for every point, and the two candidates are compared per image on fresh
draws of the defense (not the draws that score the result).
"""

import torch

from ..utils.validation import check_int
from .apgd import AttackStats, apgd
from .losses import per_image_loss
from .pgd import NORMS, check_budget

AUTOATTACK_VERSIONS = ("rand", "standard")
# The original AutoAttack (Croce & Hein 2020, fra31/auto-attack) runs 100 iterations per gradient attack, EOT 20 in
# its 'rand' version and 5,000 Square queries. torchattacks' AutoAttack keeps EOT 20 and 5,000 queries but leaves
# APGD/APGD-T/FAB at 10 iterations; we restore 100 unless told otherwise, so "AutoAttack" means the published attack.
ORIGINAL_STEPS = 100
ORIGINAL_EOT_ITER = 20
ORIGINAL_SQUARE_QUERIES = 5000


def autoattack_min_classes(version: str) -> int:
    """The fewest classes AutoAttack `version` works with."""
    # APGD's DLR loss reads the 3rd largest logit; APGD-T's targeted DLR the 4th.
    return 3 if version == "rand" else 4


def autoattack_rand(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = ORIGINAL_STEPS,
    eot_samples: int = ORIGINAL_EOT_ITER,
    eot_batch: int | None = None,
    selection_runs: int = 5,
    generator: torch.Generator | None = None,
    callback=None,
    stats: AttackStats | None = None,
) -> torch.Tensor:
    r"""
    AutoAttack 'rand': APGD-CE and APGD-DLR, each `steps` iterations with EOT over `eot_samples` draws, both run on
    every image; per image the candidate with the larger margin loss averaged over `selection_runs` fresh calls of
    `model` is returned. Never the clean input: an unflipped point comes back as its worst iterate. Each APGD keeps
    its worst iterate by its own EOT loss and runs its full budget on every image (`selection_draws=0`), as the
    published attack does; `stats` ([`AttackStats`]) receives the evaluations spent.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import autoattack_rand
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4))
    >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    >>> x_adv = autoattack_rand(model, x, y, eps=0.3, steps=4, eot_samples=1)
    >>> bool((x_adv - x).abs().max() <= 0.3 + 1e-6)
    True
    ```
    """
    check_budget(norm, eps, steps, None, eot_samples)
    check_int("selection_runs", selection_runs)
    candidates = [apgd(model, images, labels, eps=eps, norm=norm, steps=steps, eot_samples=eot_samples,
                       eot_batch=eot_batch, loss=loss, generator=generator, callback=callback, selection_draws=0,
                       stats=stats)
                  for loss in ("ce", "dlr")]
    with torch.no_grad():
        scores = torch.stack([
            torch.stack([per_image_loss(model(x), labels, "margin") for _ in range(selection_runs)]).mean(0)
            for x in candidates])
    if stats is not None:
        stats.forward_evaluations = stats.forward_evaluations + 2 * selection_runs
    pick = scores.argmax(0).view(-1, *([1] * (images.ndim - 1)))
    return torch.where(pick == 0, candidates[0], candidates[1])


def autoattack(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "rand",
    n_classes: int = 10,
    seed: int = 0,
    steps: int = ORIGINAL_STEPS,
    eot_iter: int = ORIGINAL_EOT_ITER,
    square_queries: int = ORIGINAL_SQUARE_QUERIES,
    eot_batch: int | None = None,
    verbose: bool = False,
    callback=None,
) -> torch.Tensor:
    r"""
    AutoAttack `version` on [0, 1] images; returns the adversarial batch. 'rand' is [`autoattack_rand`] (APGD-CE and
    APGD-DLR with EOT over `eot_iter` calls, for randomised defenses); 'standard' is
    `torchattacks.AutoAttack(model, norm, eps, "standard", n_classes, seed)` (APGD-CE, APGD-T, FAB-T and Square),
    meant for deterministic models.

    For 'standard', `model` must have at least one parameter (torchattacks reads the device from it);
    `pipe.defended_classifier()` has. torchattacks seeds torch's global generator; it runs inside
    `torch.random.fork_rng`, so the caller's global random state is left as it was.

    Args:
        model: [0, 1] images to logits; the whole defense for a white-box evaluation.
        images, labels: The clean batch.
        eps, norm: The threat model (`"Linf"` or `"L2"`).
        version (`str`): `"rand"` or `"standard"`.
        n_classes (`int`): Number of classes (>= 3 for 'rand', >= 4 for 'standard').
        seed (`int`): Seed of the random starts.
        steps (`int`, defaults to 100): Iterations of APGD, APGD-T and FAB (the original's; torchattacks' is 10).
        eot_iter (`int`, defaults to 20): EOT calls per APGD step in 'rand'.
        square_queries (`int`, defaults to 5000): Square's query budget in 'standard'.
        eot_batch (`int`, *optional*): EOT draws per model call in 'rand'.
        callback (*optional*): Called with 1 after every APGD iteration in 'rand' (progress reporting).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import autoattack
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4))
    >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    >>> x_adv = autoattack(model, x, y, eps=0.3, version="rand", n_classes=4, steps=2, eot_iter=1)
    >>> bool((x_adv - x).abs().max() <= 0.3 + 1e-6)
    True
    ```
    """
    check_budget(norm, eps)
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"Unknown AutoAttack version {version!r}; choose one of {AUTOATTACK_VERSIONS}.")
    if n_classes < autoattack_min_classes(version):
        raise ValueError(f"AutoAttack '{version}' needs at least {autoattack_min_classes(version)} classes (its DLR "
                         f"losses read the top logits), got {n_classes}.")
    for name, value in (("steps", steps), ("eot_iter", eot_iter), ("square_queries", square_queries)):
        check_int(name, value)
    if eps == 0:
        return images.detach().clone()
    if version == "rand":
        return autoattack_rand(model, images.detach(), labels, eps=eps, norm=norm, steps=steps,
                               eot_samples=eot_iter, eot_batch=eot_batch,
                               generator=torch.Generator().manual_seed(seed), callback=callback)
    try:
        import torchattacks
    except ImportError as err:
        raise ValueError("AutoAttack 'standard' needs torchattacks 3.5.1: pip install --no-deps torchattacks==3.5.1"
                         ) from err
    if next(iter(model.parameters()), None) is None:
        raise ValueError("torchattacks reads the device from the model's parameters, and this model has none.")

    devices = [images.device.index or 0] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        attack = torchattacks.AutoAttack(model, norm=norm, eps=eps, version=version, n_classes=n_classes, seed=seed)
        for sub_attack in attack._autoattack.attacks:
            if hasattr(sub_attack, "steps"):
                sub_attack.steps = steps
            if hasattr(sub_attack, "n_queries"):
                sub_attack.n_queries = square_queries
            sub_attack.verbose = verbose
        adversarial = attack(images.detach(), labels)
    return adversarial.detach()


__all__ = ["AUTOATTACK_VERSIONS", "NORMS", "autoattack", "autoattack_min_classes", "autoattack_rand"]
