"""
The cheaper gradient models the literature attacks purification with, kept for comparison only.

Both feed [`pgd`]; both are scored on the real defense. Neither is a robustness number on its own: a defense that
holds against them but falls to exact-gradient PGD-EOT was never robust.
"""

from collections.abc import Callable

import torch
from torch import nn


class BPDAClassifier(nn.Module):
    r"""
    Backward-pass differentiable approximation (Athalye et al. 2018) with the identity: the forward pass runs the real
    purification, the backward pass treats it as the identity, so the gradient is the classifier's gradient at the
    purified image.

    Args:
        defended (`nn.Module`): The defense; its `purify(images)` is run without gradients.
        classify (`Callable`): The undefended classifier, [0, 1] images to logits (`pipe.classifier_logits`).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import BPDAClassifier
    >>> class Blur(torch.nn.Module):
    ...     def purify(self, x):
    ...         return torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> BPDAClassifier(Blur(), clf)(torch.rand(2, 1, 4, 4)).shape
    torch.Size([2, 3])
    ```
    """

    def __init__(self, defended: nn.Module, classify: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.defended = defended  # a submodule, so `.parameters()` (and torchattacks' device lookup) reach it
        self.classify = classify

    def reseed(self, seed: int | None) -> None:
        if hasattr(self.defended, "reseed"):
            self.defended.reseed(seed)

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.defended.purify(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        purified = self.purify(images)
        # Straight-through: the value is the purified image, the derivative w.r.t. `images` is the identity.
        return self.classify(images + (purified - images).detach())


def surrogate_defense(pipeline, num_inference_steps: int, seed: int | None = 0, gradient_checkpointing: bool = True,
                      **purify_kwargs) -> nn.Module:
    r"""
    Lee & Kim (ICCV 2023)'s surrogate reverse process: the same defense (same t*, same guidance) run with fewer
    reverse steps, so each exact gradient is cheaper. Attack it with [`pgd`]; score on the real defense.

    Args:
        pipeline ([`AdversarialGuidedPurificationPipeline`]): The defense's pipeline.
        num_inference_steps (`int`): The surrogate's reverse steps (fewer than the defense's).
        seed, gradient_checkpointing, purify_kwargs: As for `pipeline.defended_classifier`.

    Example:

    ```py
    >>> surrogate = surrogate_defense(pipe, num_inference_steps=2, guidance="latent")  # doctest: +SKIP
    >>> x_adv = pgd(surrogate, images, labels, eps=0.3, steps=20)  # doctest: +SKIP
    ```
    """
    purify_kwargs = {**purify_kwargs, "num_inference_steps": num_inference_steps}
    return pipeline.defended_classifier(seed=seed, gradient_checkpointing=gradient_checkpointing, **purify_kwargs)
