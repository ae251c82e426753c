"""
What an attack differentiates: the per-image loss of a (stochastic) model averaged over EOT draws, optionally plus a
term that attacks the guidance network's own class prediction.

Why the extra term. Latent guidance pulls every reverse step towards the class y_hat that the guidance network
predicts on the input. y_hat is an argmax, a discrete choice with zero derivative, so an end-to-end gradient never
learns to flip it, however many steps it takes; yet once it flips, the defense itself steers the image into the wrong
class. An adaptive attacker therefore also pushes the guidance network's margin on the input towards a wrong class
(`guidance_weight` > 0): a part of the defense attacked on its own, as Tramer et al. (2020) ask of every defense.
"""

from dataclasses import dataclass

import torch

from ..utils.validation import check_finite, check_int
from .losses import LOSSES, per_image_loss


def guidance_target_logits(model, images: torch.Tensor) -> torch.Tensor:
    """
    The guidance network's class logits on `images` exactly as latent guidance computes y_hat from them (the input
    mapped to [-1, 1], timestep 0). `model` is `pipe.defended_classifier(...)` (or anything with `.guidance`).
    """
    guidance = getattr(model, "guidance", None)
    if guidance is None:
        raise ValueError("The guidance-target attack needs a defense with a guidance network (latent guidance).")
    dtype = next(guidance.parameters()).dtype
    reference = images.to(dtype) * 2 - 1
    timestep = torch.zeros(1, dtype=torch.long, device=images.device)
    return guidance(reference, timestep).logits


@dataclass
class Evaluation:
    """One evaluation of the objective at a batch of points."""

    objective: torch.Tensor  # (B,) what the attack ascends: the mean loss over EOT draws (+ the guidance term)
    loss: torch.Tensor  # (B,) the end-to-end loss alone, averaged over the EOT draws: what selects the worst iterate
    gradient: torch.Tensor  # d objective / d x, same shape as x


class AttackObjective:
    r"""
    The attack objective of each image: `loss` of `model(x)` averaged over `eot_samples` calls (each call draws fresh
    purification noise), plus `guidance_weight` x the margin of the guidance network's prediction on x.

    EOT draws are batched: the images are repeated `eot_batch` times along the batch dimension and sent through the
    model in one call (the default puts all draws in one call); memory grows with `eot_batch`, so lower it on a
    small GPU.

    Args:
        model: [0, 1] images to logits, e.g. `pipe.defended_classifier(...)`.
        loss (`str`): `"ce"`, `"margin"` or `"dlr"` (see [`per_image_loss`]).
        eot_samples (`int`): Model calls averaged per gradient.
        eot_batch (`int`, *optional*): Draws per model call (default: all of them).
        guidance_weight (`float`): Weight of the guidance-target term (0 = end-to-end only).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import AttackObjective
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> out = AttackObjective(model, "margin", eot_samples=2)(torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))
    >>> out.objective.shape, out.gradient.shape
    (torch.Size([2]), torch.Size([2, 1, 2, 2]))
    ```
    """

    def __init__(self, model, loss: str = "margin", eot_samples: int = 1, eot_batch: int | None = None,
                 guidance_weight: float = 0.0):
        if loss not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}; choose one of {LOSSES}.")
        check_int("eot_samples", eot_samples)
        if eot_batch is not None:  # None: every draw in one call
            check_int("eot_batch", eot_batch)
        check_finite("guidance_weight", guidance_weight, minimum=0)
        self.model, self.loss, self.eot_samples = model, loss, eot_samples
        self.eot_batch = min(eot_batch or eot_samples, eot_samples)
        self.guidance_weight = float(guidance_weight)
        self.gradient_evaluations = 0  # per image: model calls with a backward pass

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> Evaluation:
        """The objective at `images`. With `targets`, the ascended objective is the targeted margin
        ``z_target - z_label`` (the restarts of APGD-T); `loss` stays the untargeted one, so points from targeted and
        untargeted runs are compared on one scale."""
        batch = images.shape[0]
        x = images.detach().requires_grad_(True)
        losses, pulls = [], []
        with torch.enable_grad():
            remaining = self.eot_samples
            while remaining:
                draws = min(self.eot_batch, remaining)
                repeated = x.repeat(draws, *([1] * (x.ndim - 1))) if draws > 1 else x
                logits = self.model(repeated)
                losses.append(per_image_loss(logits, labels.repeat(draws), self.loss).view(draws, batch))
                if targets is not None:
                    z = logits.double()
                    pull = z.gather(1, targets.repeat(draws)[:, None]) - z.gather(1, labels.repeat(draws)[:, None])
                    pulls.append(pull.view(draws, batch))
                remaining -= draws
            loss = torch.cat(losses).mean(0)
            objective = loss if targets is None else torch.cat(pulls).mean(0)
            if self.guidance_weight > 0:
                guidance = guidance_target_logits(self.model, x)
                objective = loss + self.guidance_weight * per_image_loss(guidance, labels, "margin")
            if not objective.requires_grad:
                raise RuntimeError("The model's output does not depend differentiably on its input, so a gradient "
                                   "attack cannot see it; attack it through a differentiable approximation "
                                   "(BPDAClassifier).")
            gradient = torch.autograd.grad(objective.sum(), x, allow_unused=True)[0]
        if gradient is None:
            raise RuntimeError("The model's output does not depend differentiably on its input, so a gradient attack "
                               "cannot see it; attack it through a differentiable approximation (BPDAClassifier).")
        self.gradient_evaluations += self.eot_samples
        return Evaluation(objective.detach().float(), loss.detach().float(), gradient.detach().to(images.dtype))
