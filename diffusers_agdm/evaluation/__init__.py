"""
Robustness evaluation of purification defenses: [`evaluate`] (and `agdm evaluate`) compares the undefended classifier,
unguided purification, pixel guidance and latent guidance under exact-gradient PGD-EOT, the BPDA and surrogate
baselines and AutoAttack, with randomness-aware scoring, sanity checks, JSON / markdown reports and plots.
"""

from .defenses import DEFENSE_TITLES, DEFENSES, DefenseSpec, UndefendedClassifier, defense_specs
from .report import markdown_report, results_table, write_outputs
from .runner import ATTACKS, EvaluationConfig, EvaluationResult, SanityCheckError, derive_seed, evaluate
from .sanity import (
    SanityCheck,
    check_gradient,
    check_huge_eps,
    check_no_rise,
    check_undefended_collapse,
    format_sanity_block,
)

__all__ = [
    "ATTACKS",
    "DEFENSES",
    "DEFENSE_TITLES",
    "DefenseSpec",
    "EvaluationConfig",
    "EvaluationResult",
    "SanityCheck",
    "SanityCheckError",
    "UndefendedClassifier",
    "check_gradient",
    "check_huge_eps",
    "check_no_rise",
    "check_undefended_collapse",
    "defense_specs",
    "derive_seed",
    "evaluate",
    "format_sanity_block",
    "markdown_report",
    "results_table",
    "write_outputs",
]
