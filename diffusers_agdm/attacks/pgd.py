"""
Projected gradient descent with expectation over transformation (PGD-EOT), written once.

Exact-gradient PGD, BPDA and the surrogate reverse process differ only in the model this function differentiates:
the whole defense (``pipe.defended_classifier(...)``), a [`BPDAClassifier`] or a defense with fewer reverse steps.
Robust accuracy is then measured on the real defense by [`rescore`], never by the model the gradient came from.
"""

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..utils.validation import check_finite, check_int
from .losses import LOSSES
from .objective import AttackObjective

NORMS = ("Linf", "L2")


def check_budget(norm: str, eps: float, steps: int = 1, step_size: float | None = None, eot_samples: int = 1,
                 loss: str = "margin", restarts: int = 1) -> None:
    """Raise a `ValueError` naming the problem unless the attack budget makes sense."""
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; choose one of {NORMS}.")
    check_finite("eps", eps, minimum=0)
    for name, value in (("steps", steps), ("eot_samples", eot_samples), ("restarts", restarts)):
        check_int(name, value)
    if step_size is not None:
        check_finite("step_size", step_size, minimum=0, inclusive_min=False)
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; choose one of {LOSSES}.")


def check_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise a `ValueError` unless `images` is a batch (B, ...) with one label each."""
    if images.ndim < 2 or labels.shape != images.shape[:1]:
        raise ValueError(f"Expected images (B, ...) with labels (B,), got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}.")


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s rule, 2.5 * eps / steps: enough to cross the whole ball and come back within the budget."""
    return 2.5 * eps / steps


def eot_gradient(model, images: torch.Tensor, labels: torch.Tensor, loss: str = "margin",
                 eot_samples: int = 1) -> torch.Tensor:
    """
    The gradient of the attack loss averaged over `eot_samples` independent calls of a stochastic `model` (each call
    draws fresh purification noise), one call after the other (so the draws are those of `eot_samples` plain calls);
    see [`AttackObjective`], which this wraps.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import eot_gradient
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> eot_gradient(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), eot_samples=2).shape
    torch.Size([2, 1, 2, 2])
    ```
    """
    return AttackObjective(model, loss, eot_samples, eot_batch=1)(images, labels).gradient


def _per_image_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The closest perturbation to `delta` inside the `norm` ball of radius `eps` (per image)."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    if norm == "L2":
        factor = (eps / _per_image_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return delta * factor
    raise ValueError(f"Unknown norm {norm!r}; choose one of {NORMS}.")


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of unit `norm` for a gradient: its sign in Linf, its direction in L2."""
    if norm == "Linf":
        return grad.sign()
    if norm == "L2":
        # Rescale by the largest entry first: a float32 gradient of 1e-20 has a norm that underflows to 0, and
        # dividing by a clamped norm would turn an exact direction into a step of ~0 (PGD then never moves).
        scaled = grad / grad.flatten(1).abs().amax(1).clamp_min(torch.finfo(grad.dtype).tiny).reshape(
            -1, *([1] * (grad.ndim - 1)))
        return scaled / _per_image_norm(scaled).clamp_min(torch.finfo(grad.dtype).tiny)
    raise ValueError(f"Unknown norm {norm!r}; choose one of {NORMS}.")


def random_perturbation(images: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None = None):
    """A uniform point of the Linf ball, or a random direction at a uniform radius in the L2 ball (as torchattacks'
    PGDL2), drawn on the CPU from `generator` so the start does not depend on the device."""
    shape = images.shape
    if norm == "Linf":
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * eps
    else:
        direction = torch.randn(shape, generator=generator)
        radius = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=generator)
        delta = direction / _per_image_norm(direction).clamp_min(1e-12) * radius * eps
    return delta.to(device=images.device, dtype=images.dtype)


def pgd(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 10,
    step_size: float | None = None,
    eot_samples: int = 1,
    eot_batch: int | None = None,
    random_start: bool = True,
    loss: str = "margin",
    guidance_weight: float = 0.0,
    generator: torch.Generator | None = None,
    show_progress_bar: bool = False,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    r"""
    Untargeted PGD(-EOT) in the `norm` ball of radius `eps` around `images` (in [0, 1]). Each step follows the
    gradient of `loss` averaged over `eot_samples` calls of `model` ([`AttackObjective`]): its sign in Linf, its
    direction in L2; then it projects back onto the ball and onto [0, 1] (clamping after the projection never leaves
    the ball, because it only shortens each coordinate of the perturbation). [`apgd`] is the stronger attack (step
    size that adapts, restarts, the worst iterate kept); PGD stays for comparison with the literature.

    Args:
        model: Maps [0, 1] images to logits; differentiated with `torch.autograd.grad`. For an exact attack on a
            purification defense pass `pipe.defended_classifier(...)`.
        images (`torch.Tensor` of shape `(B, C, H, W)`), labels (`torch.Tensor` of shape `(B,)`): The clean batch.
        eps (`float`): The budget in [0, 1] pixel units (MNIST customary: Linf 0.3, L2 2.0).
        norm (`str`): `"Linf"` or `"L2"`.
        steps (`int`), step_size (`float`, *optional*, defaults to `2.5 * eps / steps`): Iterations and their size.
        eot_samples (`int`), eot_batch (`int`, *optional*): Model calls averaged per step, and how many share a batch.
        random_start (`bool`): Start from a random point of the ball instead of the clean image.
        loss (`str`): `"ce"`, `"margin"` or `"dlr"`.
        guidance_weight (`float`): Weight of the guidance-target term (see [`AttackObjective`]).
        generator (`torch.Generator`, *optional*): CPU generator for the random start.
        show_progress_bar (`bool`): A progress bar over the steps.
        callback (`Callable[[int], None]`, *optional*): Called with 1 after every step (progress reporting).

    Returns:
        `torch.Tensor`: the adversarial images of the last iterate, detached.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import pgd
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    >>> x_adv = pgd(model, x, y, eps=0.3, steps=5, generator=torch.Generator().manual_seed(0))
    >>> bool((x_adv - x).abs().max() <= 0.3 + 1e-6)
    True
    ```
    """
    check_budget(norm, eps, steps, step_size, eot_samples, loss)
    check_batch(images, labels)
    images = images.detach()
    if eps == 0:
        return images.clone()
    objective = AttackObjective(model, loss, eot_samples, eot_batch, guidance_weight, norm=norm)
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    delta = random_perturbation(images, norm, eps, generator) if random_start else torch.zeros_like(images)
    x_adv = (images + delta).clamp(0, 1)
    for _ in tqdm(range(steps), desc="PGD", leave=False, disable=not show_progress_bar):
        step = step_size * ascent_direction(objective(x_adv, labels).gradient, norm)
        x_adv = (images + project(x_adv + step - images, norm, eps)).clamp(0, 1).detach()
        if callback is not None:
            callback(1)
    return x_adv
