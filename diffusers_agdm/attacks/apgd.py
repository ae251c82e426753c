"""
APGD with EOT and restarts (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020), for Linf and L2, on any (stochastic) model.

Why not PGD. PGD's fixed step is either too large to settle in a good region or too small to get there, and it
returns its last iterate. APGD starts with a step of 2 eps, halves it whenever progress stalls (too few improving
steps since the last checkpoint, or no new best), moves with momentum, restarts from the best point after each
halving, and returns per image the *worst* iterate it met over all iterations and restarts. On a stochastic defense
"worst" is judged by the loss averaged over the attack's own EOT draws, which are separate from the draws that score
the result afterwards ([`rescore`]), so the selection cannot overfit the score.
"""

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..utils.validation import check_int
from .objective import AttackObjective
from .pgd import ascent_direction, check_batch, check_budget, project, random_perturbation

MOMENTUM = 0.75  # alpha of the paper: weight of the new step against the previous move
OSCILLATION_RHO = 0.75  # a checkpoint halves the step if fewer than rho x (checkpoint interval) steps improved


def checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD considers halving its step: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j +
    max(p_j - p_{j-1} - 0.03, 0.06), times `steps` (the paper's schedule)."""
    marks, previous, current = [], 0.0, 0.22
    while current <= 1:
        marks.append(int(round(current * steps)))
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    return sorted({m for m in marks if 0 < m < steps})


def apgd(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 100,
    restarts: int = 1,
    targeted_restarts: int = 0,
    eot_samples: int = 1,
    eot_batch: int | None = None,
    loss: str = "margin",
    guidance_weight: float = 0.0,
    generator: torch.Generator | None = None,
    record_at: tuple[int, ...] = (),
    show_progress_bar: bool = False,
    callback: Callable[[int], None] | None = None,
):
    r"""
    Untargeted APGD-EOT with `restarts` random restarts in the `norm` ball of radius `eps` around `images`.

    Args:
        model: Maps [0, 1] images to logits; for an exact attack on a defense, `pipe.defended_classifier(...)`.
        images (`torch.Tensor` of shape `(B, C, H, W)`), labels (`torch.Tensor` of shape `(B,)`): The clean batch.
        eps (`float`), norm (`str`): The threat model (`"Linf"` or `"L2"`), in [0, 1] pixel units.
        steps (`int`): Iterations per restart (the paper: 100).
        restarts (`int`): Independent runs from random starts; the worst point over all of them is returned.
        targeted_restarts (`int`): Further runs, run k ascending the targeted margin ``z_t - z_y`` towards the k-th
            most likely wrong class t (APGD-T). Some points that no untargeted run moves fall to one aimed at the
            right class (the undefended default at L2 2.0 keeps 3% under 5 untargeted restarts, 0% with targets).
        eot_samples (`int`), eot_batch (`int`, *optional*): Model calls averaged per gradient, and per batch.
        loss (`str`): `"margin"` (default), `"dlr"` or `"ce"` (the stable form; see [`per_image_loss`]).
        guidance_weight (`float`): Weight of the guidance-target term (see [`AttackObjective`]).
        generator (`torch.Generator`, *optional*): CPU generator for the random starts.
        record_at (`tuple[int, ...]`): Total iteration counts (over all runs: run r's iteration i is
            r * steps + i + 1) at which to keep a copy of the worst points so far; then the return value is
            `(x_adv, {count: x_adv_at_count})`. A convergence study reads many budgets off one long run this way.
        show_progress_bar (`bool`): A progress bar over all iterations.
        callback (`Callable[[int], None]`, *optional*): Called with 1 after every iteration (progress reporting).

    Returns:
        `torch.Tensor`: per image the iterate with the highest loss (averaged over the attack's EOT draws), detached;
        with `record_at`, a tuple as described there.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import apgd
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    >>> x_adv = apgd(model, x, y, eps=0.3, steps=10, restarts=2, generator=torch.Generator().manual_seed(0))
    >>> bool((x_adv - x).abs().max() <= 0.3 + 1e-6)
    True
    ```
    """
    check_budget(norm, eps, steps, None, eot_samples, loss, restarts)
    check_int("targeted_restarts", targeted_restarts, minimum=0)
    check_batch(images, labels)
    total = steps * (restarts + targeted_restarts)
    bad = [r for r in record_at if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= total]
    if bad:
        raise ValueError(f"`record_at` must hold iteration counts in [1, {total}], got {bad}.")
    images = images.detach()
    if eps == 0:
        return (images.clone(), {r: images.clone() for r in record_at}) if record_at else images.clone()

    objective = AttackObjective(model, loss, eot_samples, eot_batch, guidance_weight)
    shape = (-1,) + (1,) * (images.ndim - 1)
    marks = set(checkpoints(steps))
    best_x, best_loss = images.clone(), torch.full((images.shape[0],), -float("inf"), device=images.device)
    recorded = {}
    bar = tqdm(total=total, desc="APGD", leave=False, disable=not show_progress_bar)
    done = 0

    def clip(x):
        return (images + project(x - images, norm, eps)).clamp(0, 1)

    def keep_worst(x, loss_value):
        better = loss_value > best_loss
        best_x[better], best_loss[better] = x[better], loss_value[better]

    def tick():
        nonlocal done
        done += 1
        if done in record_at:
            recorded[done] = best_x.clone()
        bar.update(1)
        if callback is not None:
            callback(1)

    runs = [None] * restarts
    if targeted_restarts:
        with torch.no_grad():  # the most likely wrong classes, from the model's mean logits over the EOT draws
            logits = torch.stack([model(images).double() for _ in range(eot_samples)]).mean(0)
        if targeted_restarts >= logits.shape[1]:
            raise ValueError(f"`targeted_restarts` must be below the number of classes ({logits.shape[1]}), got "
                             f"{targeted_restarts}.")
        ranked = logits.scatter(1, labels[:, None], -float("inf")).argsort(1, descending=True)
        runs += [ranked[:, k] for k in range(targeted_restarts)]
    for targets in runs:
        x = clip(images + random_perturbation(images, norm, eps, generator))
        out = objective(x, labels, targets)
        keep_worst(x, out.loss)
        step = torch.full((images.shape[0],), 2.0 * eps, device=images.device)
        # Per restart: the best objective (what the step-size rule watches), where it was, and its gradient.
        run_best, run_best_x, run_best_grad = out.objective.clone(), x.clone(), out.gradient.clone()
        grad, previous_x, previous_objective = out.gradient, x.clone(), out.objective.clone()
        improved = torch.zeros(images.shape[0], device=images.device)
        last_mark, best_at_last_mark = 0, run_best.clone()
        halved_at_last_mark = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        for i in range(steps):
            candidate = clip(x + step.view(shape) * ascent_direction(grad, norm))
            if i > 0:  # momentum from the second iteration on
                candidate = clip(x + MOMENTUM * (candidate - x) + (1 - MOMENTUM) * (x - previous_x))
            previous_x, x = x, candidate
            out = objective(x, labels, targets)
            keep_worst(x, out.loss)
            improved += (out.objective > previous_objective).float()
            previous_objective = out.objective
            new_best = out.objective > run_best
            run_best[new_best], run_best_x[new_best] = out.objective[new_best], x[new_best]
            run_best_grad[new_best] = out.gradient[new_best]
            grad = out.gradient
            if i + 1 in marks:
                interval = i + 1 - last_mark
                oscillating = improved < OSCILLATION_RHO * interval
                stuck = ~halved_at_last_mark & (run_best <= best_at_last_mark)
                halve = oscillating | stuck
                step[halve] /= 2
                # Restart the halved ones from their best point, with its gradient (and no momentum).
                x[halve], grad[halve] = run_best_x[halve], run_best_grad[halve]
                previous_x[halve] = x[halve]
                halved_at_last_mark, best_at_last_mark = halve, run_best.clone()
                improved.zero_()
                last_mark = i + 1
            tick()
    bar.close()
    return (best_x, recorded) if record_at else best_x
