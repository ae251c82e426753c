"""
Adaptive attacks on purification defenses.

- [`apgd`]: APGD-EOT with restarts (Linf, L2), the default attack: adaptive step size, momentum, per image the
  iterate that fails the defense most often on fresh selection draws, early stop once broken on all of them
  ([`AttackStats`] records the evaluations spent). Given `pipe.defended_classifier(...)` its gradient is exact:
  through the forward noising, every reverse step, the guidance gradient (second order through the guidance
  network) and the classifier.
- [`pgd`]: plain PGD-EOT, for comparison with the literature.
- [`per_image_loss`]: cross-entropy (in a form whose gradient never vanishes), margin (CW) and DLR.
- [`AttackObjective`]: the EOT-averaged loss, optionally plus a term on the guidance network's own class prediction
  (`guidance_weight`), the adaptive attack on AGDM's parts.
- [`BPDAClassifier`], [`surrogate_defense`]: the cheaper gradient models (identity backward; fewer reverse steps) for
  comparison; attack them and score on the real defense.
- [`autoattack`]: AutoAttack 'rand' (ours, on [`apgd`]; never returns a clean input for an unflipped point) and
  'standard' (torchattacks 3.5.1).
- [`rescore`], [`robust_under`]: re-run a stochastic defense K times on the images; the one K-run rule ("all K
  correct", "majority of K", one run).
"""

from .apgd import SELECTION_DRAWS, AttackStats, apgd, checkpoints, selection_scores
from .autoattack import AUTOATTACK_VERSIONS, autoattack, autoattack_rand
from .losses import LOSSES, attack_loss, per_image_loss
from .objective import AttackObjective, guidance_target_logits
from .pgd import NORMS, ascent_direction, check_budget, default_step_size, eot_gradient, pgd, project
from .scoring import SCORES, RescoredPredictions, rescore, robust_under
from .surrogates import BPDAClassifier, surrogate_defense

__all__ = [
    "AUTOATTACK_VERSIONS",
    "AttackObjective",
    "AttackStats",
    "BPDAClassifier",
    "LOSSES",
    "NORMS",
    "RescoredPredictions",
    "SELECTION_DRAWS",
    "SCORES",
    "apgd",
    "ascent_direction",
    "attack_loss",
    "autoattack",
    "autoattack_rand",
    "check_budget",
    "checkpoints",
    "default_step_size",
    "eot_gradient",
    "guidance_target_logits",
    "per_image_loss",
    "pgd",
    "project",
    "rescore",
    "robust_under",
    "selection_scores",
    "surrogate_defense",
]
