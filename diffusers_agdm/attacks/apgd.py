"""
APGD with EOT and restarts (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020), for Linf and L2, on any (stochastic) model.

Why not PGD. PGD's fixed step is either too large to settle in a good region or too small to get there, and it
returns its last iterate. APGD starts with a step of 2 eps, halves it whenever progress stalls (too few improving
steps since the last checkpoint, or no new best), moves with momentum, restarts from the best point after each
halving, and returns per image the *worst* iterate it met over all iterations and restarts. On a stochastic defense
"worst" is first judged by the loss averaged over the attack's own EOT draws; then, because that loss is noisy (on
the unguided default at EOT 1 the loss at the kept point averaged 36 on the attack's draw and 3.5 over 5 fresh draws),
the candidate kept per image is judged again on `selection_draws` fresh draws of the defense (see [`apgd`]). Both sets
of draws are separate from the draws that score the result afterwards ([`rescore`]), so the selection cannot overfit
the score.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..utils.validation import check_int
from .losses import per_image_loss
from .objective import AttackObjective
from .pgd import ascent_direction, check_batch, check_budget, project, random_perturbation

MOMENTUM = 0.75  # alpha of the paper: weight of the new step against the previous move
OSCILLATION_RHO = 0.75  # a checkpoint halves the step if fewer than rho x (checkpoint interval) steps improved
SELECTION_DRAWS = 4  # fresh defense draws on which each kept candidate is judged (0: the attack's own loss only)


@dataclass
class AttackStats:
    """
    What an attack spent, per image, filled in by [`apgd`] (and [`autoattack_rand`]) when passed as `stats=`; calls
    add to it, so one object can sum several attacks on the same images.

    Args:
        gradient_evaluations (`torch.Tensor` of shape `(B,)`): Model calls with a backward pass (EOT draws count
            one each). An image found broken on its selection draws stops early and spends fewer.
        forward_evaluations (`torch.Tensor` of shape `(B,)`): Model calls without a backward pass (selection draws
            and the ranking of target classes).
        broken_on_selection (`torch.Tensor` of shape `(B,)`): Whether the returned point was misclassified on every
            selection draw (False everywhere without selection draws).
    """

    gradient_evaluations: torch.Tensor | None = None
    forward_evaluations: torch.Tensor | None = None
    broken_on_selection: torch.Tensor | None = None

    def add(self, gradient_evaluations: torch.Tensor, forward_evaluations: torch.Tensor,
            broken_on_selection: torch.Tensor) -> None:
        if self.gradient_evaluations is None:
            self.gradient_evaluations = torch.zeros_like(gradient_evaluations.cpu())
            self.forward_evaluations = torch.zeros_like(forward_evaluations.cpu())
            self.broken_on_selection = torch.zeros_like(broken_on_selection.cpu())
        self.gradient_evaluations = self.gradient_evaluations + gradient_evaluations.cpu()
        self.forward_evaluations = self.forward_evaluations + forward_evaluations.cpu()
        self.broken_on_selection = self.broken_on_selection | broken_on_selection.cpu()


@torch.no_grad()
def selection_scores(model, x: torch.Tensor, labels: torch.Tensor, draws: int):
    """On `draws` fresh calls of `model` at `x`: per image the fraction of draws misclassified and the mean margin
    loss (``max_{j != y} z_j - z_y``). Candidates are ranked by the first, ties broken by the second."""
    repeated = x.repeat(draws, *([1] * (x.ndim - 1)))
    logits = model(repeated)
    wrong = (logits.argmax(-1) != labels.repeat(draws)).view(draws, -1).double().mean(0)
    margin = per_image_loss(logits, labels.repeat(draws), "margin").view(draws, -1).mean(0)
    return wrong, margin


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
    selection_draws: int = SELECTION_DRAWS,
    selection_model=None,
    early_stop: bool = True,
    normalise_guidance: bool = True,
    stats: AttackStats | None = None,
):
    r"""
    Untargeted APGD-EOT with `restarts` random restarts in the `norm` ball of radius `eps` around `images`.

    Which point is kept. Within each stretch between APGD's checkpoints (and at the end of each run), the iterate with
    the highest loss averaged over the attack's EOT draws is a candidate; each candidate is then judged on
    `selection_draws` fresh calls of `selection_model`, and per image the candidate misclassified on the most of them
    (ties: the higher mean margin) is kept over all runs. An image whose kept point is misclassified on every
    selection draw is broken under every scoring rule those draws can tell, so with `early_stop` it gets no further
    iterations or runs (AutoAttack likewise attacks only the points still robust); `stats` records what each image
    spent. The returned point is always an iterate, never the clean input.

    Args:
        model: Maps [0, 1] images to logits; for an exact attack on a defense, `pipe.defended_classifier(...)`.
        images (`torch.Tensor` of shape `(B, C, H, W)`), labels (`torch.Tensor` of shape `(B,)`): The clean batch.
        eps (`float`), norm (`str`): The threat model (`"Linf"` or `"L2"`), in [0, 1] pixel units.
        steps (`int`): Iterations per restart (the paper: 100).
        restarts (`int`): Independent runs from random starts; the worst point over all of them is returned.
        targeted_restarts (`int`): Further runs, run k ascending the targeted margin ``z_t - z_y`` towards the k-th
            most likely wrong class t (APGD-T). Some points that no untargeted run moves fall to one aimed at the
            right class (the undefended default at L2 2.0 keeps 3% under 5 untargeted restarts, 0% with targets).
        eot_samples (`int`), eot_batch (`int`, *optional*): Model calls averaged per gradient, and per batch. The
            step-size rule (rho = 0.75) watches the objective averaged over these draws (Croce & Hein's reference
            code reads the last draw only); at EOT 1 it reacts to noise (only ~53% of steps "improve" on the unguided
            default, so the step halves at every checkpoint). At a fixed budget of steps x EOT x runs, spend it at
            EOT >= 2: on 16 held-out images of the embedded default (K = 5, majority, clean-and-robust), unguided
            purification kept 50.0% under 50 steps x 4 runs x EOT 1 (200 evaluations) and 37.5% under an EOT-2
            loop with 160 (issue 18; benchmarks/attack_comparison.py repeats the comparison on >= 32 images).
        loss (`str`): `"margin"` (default), `"dlr"` or `"ce"` (the stable form; see [`per_image_loss`]).
        guidance_weight (`float`): Weight of the guidance-target term (see [`AttackObjective`]); its scale c is fixed
            per image at each run's random start.
        generator (`torch.Generator`, *optional*): CPU generator for the random starts.
        record_at (`tuple[int, ...]`): Total iteration counts (over all runs: run r's iteration i is
            r * steps + i + 1) at which to keep a copy of the kept points so far; then the return value is
            `(x_adv, {count: x_adv_at_count})`. A convergence study reads many budgets off one long run this way.
        show_progress_bar (`bool`): A progress bar over all iterations.
        callback (`Callable[[int], None]`, *optional*): Called with the number of iterations done (1 after every
            iteration; the rest at once when every image stopped early), for progress reporting.
        selection_draws (`int`, defaults to 4): Fresh draws judging each candidate; 0 keeps the old rule (the
            highest attack loss wins, no early stop).
        selection_model (*optional*): The model the selection draws come from (default: `model`, whose noise stream
            then simply continues). Give an evaluation a copy of the defense seeded apart from both the attack's
            draws and the scoring draws.
        early_stop (`bool`, defaults to `True`): Stop attacking images broken on every selection draw.
        normalise_guidance (`bool`, defaults to `True`): See [`AttackObjective`].
        stats ([`AttackStats`], *optional*): Receives the gradient and forward evaluations spent per image.

    Returns:
        `torch.Tensor`: per image the kept point, detached; with `record_at`, a tuple as described there.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import AttackStats, apgd
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    >>> stats = AttackStats()
    >>> x_adv = apgd(model, x, y, eps=0.3, steps=10, restarts=2, generator=torch.Generator().manual_seed(0),
    ...              stats=stats)
    >>> bool((x_adv - x).abs().max() <= 0.3 + 1e-6), bool((stats.gradient_evaluations <= 20).all())
    (True, True)
    ```
    """
    check_budget(norm, eps, steps, None, eot_samples, loss, restarts)
    check_int("targeted_restarts", targeted_restarts, minimum=0)
    check_int("selection_draws", selection_draws, minimum=0)
    check_batch(images, labels)
    total = steps * (restarts + targeted_restarts)
    bad = [r for r in record_at if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= total]
    if bad:
        raise ValueError(f"`record_at` must hold iteration counts in [1, {total}], got {bad}.")
    images = images.detach()
    batch, device = images.shape[0], images.device
    spent = torch.zeros(batch, dtype=torch.long, device=device)
    forwards = torch.zeros(batch, dtype=torch.long, device=device)
    if eps == 0:
        if stats is not None:
            stats.add(spent, forwards, torch.zeros(batch, dtype=torch.bool))
        return (images.clone(), {r: images.clone() for r in record_at}) if record_at else images.clone()

    objective = AttackObjective(model, loss, eot_samples, eot_batch, guidance_weight, norm=norm,
                                normalise_guidance=normalise_guidance)
    selection_model = model if selection_model is None else selection_model
    shape = (-1,) + (1,) * (images.ndim - 1)
    marks = set(checkpoints(steps))
    # The highest attack loss met so far (all iterates), and since the last selection (this stretch's candidate).
    best_x, best_loss = images.clone(), torch.full((batch,), -float("inf"), device=device)
    stretch_x, stretch_loss = images.clone(), torch.full((batch,), -float("inf"), device=device)
    # The candidate kept on the selection draws: fraction of them misclassified, then mean margin.
    kept_x = images.clone()
    kept_wrong = torch.full((batch,), -1.0, dtype=torch.float64, device=device)
    kept_margin = torch.full((batch,), -float("inf"), dtype=torch.float64, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    recorded = {}
    bar = tqdm(total=total, desc="APGD", leave=False, disable=not show_progress_bar)
    done = 0

    def clip(x):
        return (images + project(x - images, norm, eps)).clamp(0, 1)

    def evaluate(x, targets, scale):
        """The objective on the images still attacked; the others get -inf (never kept) and a zero gradient."""
        index = active.nonzero().squeeze(1)
        spent[index] += eot_samples
        if index.numel() == batch:
            return objective(x, labels, targets, guidance_scale=scale)
        out = objective(x[index], labels[index], None if targets is None else targets[index],
                        guidance_scale=None if scale is None else scale[index])
        full = torch.full((batch,), -float("inf"), device=device)
        objective_value, loss_value = full.clone(), full.clone()
        objective_value[index], loss_value[index] = out.objective, out.loss
        gradient = torch.zeros_like(x)
        gradient[index] = out.gradient
        guidance_scale = None
        if out.guidance_scale is not None:
            guidance_scale = torch.zeros(batch, dtype=out.guidance_scale.dtype, device=device)
            guidance_scale[index] = out.guidance_scale
        return type(out)(objective_value, loss_value, gradient, guidance_scale)

    def keep_worst(x, loss_value):
        better = loss_value > best_loss
        best_x[better], best_loss[better] = x[better], loss_value[better]
        better = loss_value > stretch_loss
        stretch_x[better], stretch_loss[better] = x[better], loss_value[better]

    def select():
        """Judge this stretch's candidates on fresh draws; stop attacking images broken on all of them."""
        if not selection_draws:
            return
        index = (active & (stretch_loss > -float("inf"))).nonzero().squeeze(1)
        if index.numel():
            forwards[index] += selection_draws
            wrong, margin = selection_scores(selection_model, stretch_x[index], labels[index], selection_draws)
            better = (wrong > kept_wrong[index]) | ((wrong == kept_wrong[index]) & (margin > kept_margin[index]))
            chosen = index[better]
            kept_x[chosen], kept_wrong[chosen], kept_margin[chosen] = stretch_x[chosen], wrong[better], margin[better]
        stretch_loss.fill_(-float("inf"))
        if early_stop:
            active.copy_(kept_wrong < 1)

    def result():
        return kept_x if selection_draws else best_x

    def tick(selected: bool):
        nonlocal done
        done += 1
        if done in record_at:
            if not selected:
                select()
            recorded[done] = result().clone()
        bar.update(1)
        if callback is not None:
            callback(1)

    runs = [None] * restarts
    if targeted_restarts:
        with torch.no_grad():  # the most likely wrong classes, from the model's mean logits over the EOT draws
            logits = torch.stack([model(images).double() for _ in range(eot_samples)]).mean(0)
        forwards += eot_samples
        if targeted_restarts >= logits.shape[1]:
            raise ValueError(f"`targeted_restarts` must be below the number of classes ({logits.shape[1]}), got "
                             f"{targeted_restarts}.")
        ranked = logits.scatter(1, labels[:, None], -float("inf")).argsort(1, descending=True)
        runs += [ranked[:, k] for k in range(targeted_restarts)]
    for targets in runs:
        if not active.any():
            break
        x = clip(images + random_perturbation(images, norm, eps, generator))
        out = evaluate(x, targets, None)
        scale = out.guidance_scale  # the guidance term's c, fixed for this run
        keep_worst(x, out.loss)
        step = torch.full((batch,), 2.0 * eps, device=device)
        # Per restart: the best objective (what the step-size rule watches), where it was, and its gradient.
        run_best, run_best_x, run_best_grad = out.objective.clone(), x.clone(), out.gradient.clone()
        grad, previous_x, previous_objective = out.gradient, x.clone(), out.objective.clone()
        improved = torch.zeros(batch, device=device)
        last_mark, best_at_last_mark = 0, run_best.clone()
        halved_at_last_mark = torch.ones(batch, dtype=torch.bool, device=device)
        for i in range(steps):
            if not active.any():
                break
            candidate = clip(x + step.view(shape) * ascent_direction(grad, norm))
            if i > 0:  # momentum from the second iteration on
                candidate = clip(x + MOMENTUM * (candidate - x) + (1 - MOMENTUM) * (x - previous_x))
            previous_x, x = x, candidate
            out = evaluate(x, targets, scale)
            keep_worst(x, out.loss)
            improved += (out.objective > previous_objective).float()
            previous_objective = out.objective
            new_best = out.objective > run_best
            run_best[new_best], run_best_x[new_best] = out.objective[new_best], x[new_best]
            run_best_grad[new_best] = out.gradient[new_best]
            grad = out.gradient
            selected = i + 1 in marks or i + 1 == steps
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
            if selected:
                select()
            tick(selected)
    skipped = total - done  # every image stopped early: the rest of the budget is not spent
    if skipped:
        kept = result().clone()
        for count in record_at:
            recorded.setdefault(count, kept)
        bar.update(skipped)
        if callback is not None:
            callback(skipped)
    bar.close()
    if stats is not None:
        stats.add(spent, forwards, kept_wrong >= 1)
    return (result(), recorded) if record_at else result()
