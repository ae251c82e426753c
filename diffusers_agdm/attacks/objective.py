"""
What an attack differentiates: the per-image loss of a (stochastic) model averaged over EOT draws, optionally plus a
term that attacks the guidance network's own class prediction.

Why the extra term. Latent guidance pulls every reverse step towards the class y_hat that the guidance network
predicts on the input. y_hat is an argmax, a discrete choice with zero derivative, so an end-to-end gradient never
learns to flip it, however many steps it takes; yet once it flips, the defense itself steers the image into the wrong
class. An adaptive attacker therefore also pushes the guidance network's margin on the input towards a wrong class
(`guidance_weight` > 0): a part of the defense attacked on its own, as Tramer et al. (2020) ask of every defense. A
targeted run aims both terms at its target class.

Why the term is normalised. Raw, its gradient is 10-100x smaller than the end-to-end one on the embedded default (L1
norm 1.3-4.8 against 31-334 on 8 images), so at any weight near 1 it does not change the sign of a single step. Each
image's term is therefore multiplied by c = ||g_e||_* / ||g_g||_*, the ratio of the dual norms (L1 for an Linf
attack, L2 for L2: a step's first-order gain is eps times the dual norm of the gradient) of the end-to-end gradient
g_e and the guidance term's gradient g_g. At weight w the term then promises w times the end-to-end loss's first-order
gain. APGD fixes c per image at the random start of each run, so within a run the objective is one fixed function
(exact gradients, a step-size rule comparing values on one scale); a single call without a given scale uses the
ratio at that point.
"""

from dataclasses import dataclass

import torch

from ..guided_step import input_class_logits
from ..utils.validation import check_finite, check_int
from .losses import LOSSES, per_image_loss


def guidance_target_logits(model, images: torch.Tensor) -> torch.Tensor:
    """
    The guidance network's class logits on `images` exactly as latent guidance computes y_hat from them (the input
    mapped to [-1, 1], timestep 0: [`~diffusers_agdm.guided_step.input_class_logits`]). `model` is
    `pipe.defended_classifier(...)` (or anything with `.guidance`).
    """
    guidance = getattr(model, "guidance", None)
    if guidance is None:
        raise ValueError("The guidance-target attack needs a defense with a guidance network (latent guidance).")
    return input_class_logits(guidance, images)


def dual_norm(gradient: torch.Tensor, norm: str) -> torch.Tensor:
    """Per image, the norm dual to the threat model's: L1 for Linf, L2 for L2 (a step's first-order gain / eps)."""
    flat = gradient.flatten(1)
    if norm == "Linf":
        return flat.abs().sum(1)
    if norm == "L2":
        return flat.norm(dim=1)
    raise ValueError(f"Unknown norm {norm!r}; choose 'Linf' or 'L2'.")


def targeted_margin(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``z_target - z_label`` per image, in float64 (what a targeted run ascends)."""
    z = logits.double()
    return (z.gather(1, targets[:, None]) - z.gather(1, labels[:, None])).squeeze(1)


@dataclass
class Evaluation:
    """One evaluation of the objective at a batch of points."""

    objective: torch.Tensor  # (B,) what the attack ascends: the mean loss over EOT draws (+ the guidance term)
    loss: torch.Tensor  # (B,) the end-to-end loss alone, averaged over the EOT draws: what selects the worst iterate
    gradient: torch.Tensor  # d objective / d x, same shape as x
    guidance_scale: torch.Tensor | None = None  # (B,) c of the module docstring, None without the guidance term


class AttackObjective:
    r"""
    The attack objective of each image: `loss` of `model(x)` averaged over `eot_samples` calls (each call draws fresh
    purification noise), plus `guidance_weight` x c x the margin of the guidance network's prediction on x, where c
    scales the term's gradient to the end-to-end gradient's dual norm (see the module docstring; with
    `normalise_guidance=False`, c = 1).

    EOT draws are batched: the images are repeated `eot_batch` times along the batch dimension and sent through the
    model in one call (the default puts all draws in one call); memory grows with `eot_batch`, so lower it on a
    small GPU.

    Args:
        model: [0, 1] images to logits, e.g. `pipe.defended_classifier(...)`.
        loss (`str`): `"ce"`, `"margin"` or `"dlr"` (see [`per_image_loss`]).
        eot_samples (`int`): Model calls averaged per gradient.
        eot_batch (`int`, *optional*): Draws per model call (default: all of them).
        guidance_weight (`float`): Weight of the guidance-target term (0 = end-to-end only).
        norm (`str`, keyword-only): The threat model (`"Linf"` or `"L2"`), whose dual norm normalises the term.
        normalise_guidance (`bool`, keyword-only): Scale the term to the end-to-end gradient (default) or add it raw.

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
                 guidance_weight: float = 0.0, *, norm: str = "Linf", normalise_guidance: bool = True):
        if loss not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}; choose one of {LOSSES}.")
        check_int("eot_samples", eot_samples)
        if eot_batch is not None:  # None: every draw in one call
            check_int("eot_batch", eot_batch)
        check_finite("guidance_weight", guidance_weight, minimum=0)
        if norm not in ("Linf", "L2"):
            raise ValueError(f"Unknown norm {norm!r}; choose 'Linf' or 'L2'.")
        self.model, self.loss, self.eot_samples = model, loss, eot_samples
        self.eot_batch = min(eot_batch or eot_samples, eot_samples)
        self.guidance_weight = float(guidance_weight)
        self.norm, self.normalise_guidance = norm, bool(normalise_guidance)
        self.gradient_evaluations = 0  # per image: model calls with a backward pass

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None, *,
                 guidance_scale: torch.Tensor | None = None) -> Evaluation:
        """The objective at `images`. With `targets`, the ascended objective is the targeted margin
        ``z_target - z_label`` of the model and, with the guidance term, of the guidance network (both aimed at the
        same class); `loss` stays the untargeted one, so points from targeted and untargeted runs are compared on
        one scale. `guidance_scale` (per image) fixes c; without it, c is measured at `images`."""
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
                    pull = targeted_margin(logits, labels.repeat(draws), targets.repeat(draws))
                    pulls.append(pull.view(draws, batch))
                remaining -= draws
            loss = torch.cat(losses).mean(0)
            end_to_end = loss if targets is None else torch.cat(pulls).mean(0)
            gradient = None
            if end_to_end.requires_grad:
                gradient = torch.autograd.grad(end_to_end.sum(), x, allow_unused=True)[0]
            if gradient is None:
                raise RuntimeError("The model's output does not depend differentiably on its input, so a gradient "
                                   "attack cannot see it; attack it through a differentiable approximation "
                                   "(BPDAClassifier).")
            objective = end_to_end.detach()
            if self.guidance_weight > 0:
                guidance_logits = guidance_target_logits(self.model, x)
                term = (per_image_loss(guidance_logits, labels, "margin") if targets is None
                        else targeted_margin(guidance_logits, labels, targets))
                term_gradient = torch.autograd.grad(term.sum(), x)[0]
                if guidance_scale is None:
                    guidance_scale = self.guidance_scale(gradient, term_gradient)
                weight = self.guidance_weight * guidance_scale.to(objective.dtype)
                objective = objective + weight * term.detach()
                gradient = gradient + weight.to(gradient.dtype).view(-1, *([1] * (x.ndim - 1))) * term_gradient
        self.gradient_evaluations += self.eot_samples
        return Evaluation(objective.float(), loss.detach().float(), gradient.detach().to(images.dtype),
                          guidance_scale)

    def guidance_scale(self, end_to_end_gradient: torch.Tensor, term_gradient: torch.Tensor) -> torch.Tensor:
        """c per image: the end-to-end gradient's dual norm over the guidance term's (1 when not normalising; 0
        where the term has no gradient at all)."""
        if not self.normalise_guidance:
            return torch.ones(term_gradient.shape[0], dtype=torch.float64, device=term_gradient.device)
        numerator = dual_norm(end_to_end_gradient.double(), self.norm)
        denominator = dual_norm(term_gradient.double(), self.norm)
        return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), torch.zeros_like(numerator))
