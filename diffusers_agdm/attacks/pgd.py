"""
Projected gradient descent with expectation over transformation (PGD-EOT), written once.

Exact-gradient PGD, BPDA and the surrogate reverse process differ only in the model this function differentiates:
the whole defense (``pipe.defended_classifier(...)``), a [`BPDAClassifier`] or a defense with fewer reverse steps.
Robust accuracy is then measured on the real defense by [`rescore`], never by the model the gradient came from.
"""

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

NORMS = ("Linf", "L2")
LOSSES = ("ce", "margin")


def check_budget(norm: str, eps: float, steps: int = 1, step_size: float | None = None, eot_samples: int = 1,
                 loss: str = "ce") -> None:
    """Raise a `ValueError` naming the problem unless the attack budget makes sense."""
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; choose one of {NORMS}.")
    if not isinstance(eps, (int, float)) or eps != eps or eps < 0 or eps == float("inf"):
        raise ValueError(f"`eps` must be a finite number >= 0, got {eps!r}.")
    for name, value in (("steps", steps), ("eot_samples", eot_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    if step_size is not None and (not isinstance(step_size, (int, float)) or not 0 < step_size < float("inf")):
        raise ValueError(f"`step_size` must be a finite number > 0, got {step_size!r}.")
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; choose one of {LOSSES}.")


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s rule, 2.5 * eps / steps: enough to cross the whole ball and come back within the budget."""
    return 2.5 * eps / steps


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """
    The objective the attacker maximises, summed over the batch (so each image's gradient does not depend on the
    batch size): ``"ce"`` is the cross-entropy of the true label; ``"margin"`` is Carlini-Wagner's
    ``max_{j != y} z_j - z_y``, which keeps pushing where the softmax of CE saturates.
    """
    if loss == "ce":
        return F.cross_entropy(logits, labels, reduction="sum")
    if loss == "margin":
        true = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
        return (others.max(dim=1).values - true).sum()
    raise ValueError(f"Unknown loss {loss!r}; choose one of {LOSSES}.")


def eot_gradient(model, images: torch.Tensor, labels: torch.Tensor, loss: str = "ce",
                 eot_samples: int = 1) -> torch.Tensor:
    """
    The gradient of the attack loss averaged over `eot_samples` independent calls of a stochastic `model` (each call
    draws fresh purification noise). Calls run one after the other, not as one replicated batch, so memory stays
    that of a single call.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import eot_gradient
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> eot_gradient(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), eot_samples=2).shape
    torch.Size([2, 1, 2, 2])
    ```
    """
    total = torch.zeros_like(images)
    for _ in range(eot_samples):
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            objective = attack_loss(model(x), labels, loss)
            grad = torch.autograd.grad(objective, x, allow_unused=True)[0] if objective.requires_grad else None
        if grad is None:
            raise RuntimeError("The model's output does not depend differentiably on its input, so a gradient attack "
                               "cannot see it; attack it through a differentiable approximation (BPDAClassifier).")
        total += grad
    return total / eot_samples


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
        return grad / _per_image_norm(grad).clamp_min(1e-12)
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
    random_start: bool = True,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    show_progress_bar: bool = False,
) -> torch.Tensor:
    r"""
    Untargeted PGD(-EOT) in the `norm` ball of radius `eps` around `images` (in [0, 1]). Each step follows the
    gradient of `loss` averaged over `eot_samples` calls of `model` ([`eot_gradient`]): its sign in Linf, its
    direction in L2; then it projects back onto the ball and onto [0, 1] (clamping after the projection never leaves
    the ball, because it only shortens each coordinate of the perturbation).

    Args:
        model: Maps [0, 1] images to logits; differentiated with `torch.autograd.grad`. For an exact attack on a
            purification defense pass `pipe.defended_classifier(...)`.
        images (`torch.Tensor` of shape `(B, C, H, W)`), labels (`torch.Tensor` of shape `(B,)`): The clean batch.
        eps (`float`): The budget in [0, 1] pixel units (MNIST customary: Linf 0.3, L2 2.0).
        norm (`str`): `"Linf"` or `"L2"`.
        steps (`int`), step_size (`float`, *optional*, defaults to `2.5 * eps / steps`): Iterations and their size.
        eot_samples (`int`): Model calls averaged per step.
        random_start (`bool`): Start from a random point of the ball instead of the clean image.
        loss (`str`): `"ce"` or `"margin"`.
        generator (`torch.Generator`, *optional*): CPU generator for the random start.
        show_progress_bar (`bool`): A progress bar over the steps.

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
    if images.ndim < 2 or labels.shape != images.shape[:1]:
        raise ValueError(f"Expected images (B, ...) with labels (B,), got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}.")
    images = images.detach()
    if eps == 0:
        return images.clone()
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    delta = random_perturbation(images, norm, eps, generator) if random_start else torch.zeros_like(images)
    x_adv = (images + delta).clamp(0, 1)
    for _ in tqdm(range(steps), desc="PGD", leave=False, disable=not show_progress_bar):
        step = step_size * ascent_direction(eot_gradient(model, x_adv, labels, loss, eot_samples), norm)
        x_adv = (images + project(x_adv + step - images, norm, eps)).clamp(0, 1).detach()
    return x_adv
