"""Randomness-aware scoring: a stochastic defense is judged over K fresh runs, not one lucky draw."""

from dataclasses import dataclass

import torch

from ..utils.scores import SCORES
from ..utils.validation import check_int
from .losses import per_image_loss


def robust_under(kind: str, correct_runs, runs: int, run0_correct=None):
    r"""
    The K-run scoring rule, its one home: whether an image the defense classified correctly in `correct_runs` of
    `runs` fresh runs counts as correct under score `kind`:

    - `"all"`: correct in every run (the attacker wins if any run fails; the conservative score, "worst of K");
    - `"majority"`: correct in more than half of the runs (a tie, possible for even K, counts as wrong);
    - `"single"`: correct in run 0 (`run0_correct`), comparable with papers that score one run.

    Works on Python numbers and on tensors alike (element-wise). An image counts as *robust* only if this holds both
    clean and attacked: combine the two results with `and` / `&`.

    Example:

    ```py
    >>> from diffusers_agdm.attacks import robust_under
    >>> robust_under("all", 5, 5), robust_under("majority", 3, 5), robust_under("majority", 2, 4)
    (True, True, False)
    ```
    """
    if kind == "all":
        return correct_runs == runs
    if kind == "majority":
        return 2 * correct_runs > runs
    if kind == "single":
        if run0_correct is None:
            raise ValueError("The 'single' score needs `run0_correct`, the verdict of run 0.")
        return run0_correct
    raise ValueError(f"Unknown score {kind!r}; choose from {SCORES}.")


@dataclass
class RescoredPredictions:
    """
    Predictions of K independent runs of a defense on the same images.

    Args:
        predictions (`torch.Tensor` of shape `(K, N)`): Predicted labels, one row per run.
        labels (`torch.Tensor` of shape `(N,)`): The true labels.
        losses (`torch.Tensor` of shape `(K, N)`, *optional*): The margin loss ``max_{j != y} z_j - z_y`` of every
            run (> 0 exactly when the run misclassified the image), when asked for (`rescore(..., losses=True)`).
    """

    predictions: torch.Tensor
    labels: torch.Tensor
    losses: torch.Tensor | None = None

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
        return self.counts_correct("all")

    @property
    def majority_correct(self) -> torch.Tensor:
        """Correct in more than half of the K runs (a tie, possible for even K, counts as wrong)."""
        return self.counts_correct("majority")

    def counts_correct(self, kind: str = "all") -> torch.Tensor:
        """`(N,)` booleans: each image correct under score `kind` (see [`robust_under`])."""
        return robust_under(kind, self.correct_runs, self.runs, self.correct[0])

    def accuracy(self, kind: str = "all") -> float:
        """Fraction of images counted correct under score `kind`: `"all"`, `"majority"` or `"single"`."""
        return self.counts_correct(kind).float().mean().item()


def rescore(model, images: torch.Tensor, labels: torch.Tensor, runs: int = 3, seed: int | None = None, *,
            losses: bool = False):
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
        losses (`bool`, defaults to `False`): Also keep every run's margin loss (how far from flipping each image
            was), for choosing between adversarial candidates.

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
    predictions, margins = [], []
    with torch.no_grad():
        for _ in range(runs):
            logits = model(images)
            predictions.append(logits.argmax(-1).cpu())
            if losses:
                margins.append(per_image_loss(logits.double(), labels, "margin").cpu())
    return RescoredPredictions(predictions=torch.stack(predictions), labels=labels.cpu(),
                               losses=torch.stack(margins) if losses else None)
