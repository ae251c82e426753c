"""Randomness-aware scoring: a stochastic defense is judged over K fresh runs, not one lucky draw."""

from dataclasses import dataclass

import torch

from ..utils.validation import check_int


@dataclass
class RescoredPredictions:
    """
    Predictions of K independent runs of a defense on the same images.

    Args:
        predictions (`torch.Tensor` of shape `(K, N)`): Predicted labels, one row per run.
        labels (`torch.Tensor` of shape `(N,)`): The true labels.
    """

    predictions: torch.Tensor
    labels: torch.Tensor

    @property
    def runs(self) -> int:
        return self.predictions.shape[0]

    @property
    def correct(self) -> torch.Tensor:
        """`(K, N)` booleans: run k classified image n correctly."""
        return self.predictions == self.labels[None]

    @property
    def correct_runs(self) -> torch.Tensor:
        """`(N,)`: in how many of the K runs each image was classified correctly."""
        return self.correct.sum(0)

    @property
    def all_correct(self) -> torch.Tensor:
        """Correct in every one of the K runs: the attacker wins if any run fails (the conservative score)."""
        return self.correct_runs == self.runs

    @property
    def majority_correct(self) -> torch.Tensor:
        """Correct in more than half of the K runs (a tie, possible for even K, counts as wrong)."""
        return 2 * self.correct_runs > self.runs

    def accuracy(self, kind: str = "all") -> float:
        """Fraction of images counted robust: `kind="all"` (every run correct) or `"majority"`."""
        if kind not in ("all", "majority"):
            raise ValueError(f"`kind` must be 'all' or 'majority', got {kind!r}.")
        return (self.all_correct if kind == "all" else self.majority_correct).float().mean().item()


def rescore(model, images: torch.Tensor, labels: torch.Tensor, runs: int = 3, seed: int | None = None):
    r"""
    Run a (possibly stochastic) defense `runs` times on `images` with fresh noise each time and record every
    prediction. A defense that draws new noise per call can look robust by luck on one call; the accuracy over all
    K runs, or over a majority of them, cannot.

    Args:
        model: [0, 1] images to logits. If it has `reseed(seed)` (like `pipe.defended_classifier()`), it is reseeded
            with `seed` first, so scoring is reproducible and independent of what the attack drew.
        images, labels: The (adversarial) images and their true labels.
        runs (`int`, defaults to 3): K; odd values avoid majority ties.
        seed (`int`, *optional*): See `model`.

    Returns:
        [`RescoredPredictions`]

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.attacks import rescore
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> scored = rescore(model, torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long), runs=3)
    >>> scored.predictions.shape, scored.accuracy("all") <= scored.accuracy("majority")
    (torch.Size([3, 5]), True)
    ```
    """
    check_int("runs", runs)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"Got {images.shape[0]} images but {labels.shape[0]} labels.")
    if hasattr(model, "reseed"):
        model.reseed(seed)
    with torch.no_grad():
        predictions = torch.stack([model(images).argmax(-1).cpu() for _ in range(runs)])
    return RescoredPredictions(predictions=predictions, labels=labels.cpu())
