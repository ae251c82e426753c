"""
The objectives an attacker maximises, per image: cross-entropy, Carlini-Wagner margin and DLR.

All three are computed so that their gradient never vanishes on a confident prediction. The textbook
``F.cross_entropy`` does: its gradient with respect to the true logit is ``p_y - 1``, which rounds to 0 in float32 once
the logit margin passes ~17 (the embedded default's median margin is ~26), and L2 PGD then stalls at its random start.
Here CE is written as ``softplus(logsumexp_{j != y}(z_j - z_y))``: the same value, and a gradient
``sigmoid(m) * (softmax of the other logits, -1)`` that is a tiny but exact, well-directed number instead of a
cancellation. (Its size, ~exp(-margin), still underflows in float32 beyond a margin of ~100; the margin and DLR
losses, whose gradients do not shrink with confidence, have no such limit.)
"""

import torch
import torch.nn.functional as F

LOSSES = ("ce", "margin", "dlr")


def _other_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logits with the true class masked to -inf."""
    return logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))


def per_image_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str = "margin") -> torch.Tensor:
    r"""
    The attack objective of each image, shape `(B,)`; larger means closer to (or further into) misclassification.

    - ``"ce"``: cross-entropy of the true label, in the stable form described in the module docstring.
    - ``"margin"``: Carlini-Wagner's ``max_{j != y} z_j - z_y`` (> 0 exactly when the image is misclassified).
    - ``"dlr"``: Croce & Hein's difference of logits ratio, ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3))``, the
      margin made invariant to the scale of the logits (needs >= 3 classes).

    Computed in float64, so a float32 classifier's logits lose nothing in the subtraction.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import per_image_loss
    >>> logits = torch.tensor([[30.0, 0.0, -1.0]], requires_grad=True)
    >>> per_image_loss(logits, torch.tensor([0]), "ce").sum().backward()
    >>> bool(logits.grad.abs().sum() > 0)  # float32 F.cross_entropy gives exactly 0 here
    True
    ```
    """
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; choose one of {LOSSES}.")
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"Expected logits (B, classes) and labels (B,), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}.")
    z = logits.double()
    true = z.gather(1, labels[:, None]).squeeze(1)
    others = _other_logits(z, labels)
    if loss == "ce":
        return F.softplus(torch.logsumexp(others - true[:, None], dim=1))
    best_other = others.max(dim=1).values
    if loss == "margin":
        return best_other - true
    if z.shape[1] < 3:
        raise ValueError(f"The DLR loss reads the third largest logit; it needs >= 3 classes, got {z.shape[1]}.")
    top = z.sort(dim=1, descending=True).values
    return (best_other - true) / (top[:, 0] - top[:, 2] + 1e-12)


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str = "margin") -> torch.Tensor:
    """[`per_image_loss`] summed over the batch (so each image's gradient does not depend on the batch size)."""
    return per_image_loss(logits, labels, loss).sum()
