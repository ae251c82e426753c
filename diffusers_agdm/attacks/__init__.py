"""
Adaptive attacks on purification defenses.

- [`pgd`]: PGD with EOT (Linf, L2; CE or margin loss). Given `pipe.defended_classifier(...)` its gradient is exact:
  through the forward noising, every reverse step, the guidance gradient (second order through the guidance network)
  and the classifier.
- [`BPDAClassifier`], [`surrogate_defense`]: the cheaper gradient models (identity backward; fewer reverse steps) for
  comparison; attack them with [`pgd`] and score on the real defense.
- [`autoattack`]: AutoAttack 'rand' / 'standard' through torchattacks 3.5.1.
- [`rescore`]: re-run a stochastic defense K times on the adversarial images; "all K correct" and "majority of K".
"""

from .autoattack import AUTOATTACK_VERSIONS, autoattack
from .pgd import (LOSSES, NORMS, ascent_direction, attack_loss, check_budget, default_step_size, eot_gradient, pgd,
                  project)
from .scoring import RescoredPredictions, rescore
from .surrogates import BPDAClassifier, surrogate_defense

__all__ = [
    "AUTOATTACK_VERSIONS",
    "BPDAClassifier",
    "LOSSES",
    "NORMS",
    "RescoredPredictions",
    "ascent_direction",
    "attack_loss",
    "autoattack",
    "check_budget",
    "default_step_size",
    "eot_gradient",
    "pgd",
    "project",
    "rescore",
    "surrogate_defense",
]
