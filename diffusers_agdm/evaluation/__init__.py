"""
Robustness evaluation of purification defenses: [`evaluate`] (and `agdm evaluate`) compares the undefended classifier,
the adversarial-training baseline (the guidance network as the classifier), unguided purification, pixel guidance,
latent guidance and latent guidance classified by the robust network under exact-gradient APGD-EOT (with restarts and
a guidance-target variant), PGD, the BPDA and surrogate baselines and AutoAttack (one table: `attacks_registry.py`),
with clean-and-robust scoring over K defense runs, the per-image worst case over all attacks, paired convergence and
sanity checks, JSON / markdown reports and plots, and resumable runs.
"""

from .aggregation import Aggregate, Records, wilson_interval
from .attacks_registry import ATTACK_SPECS, WORST_CASE, AttackSpec, attack_spec
from .checks import sanity_checks
from .config import ATTACK_TITLES, ATTACKS, CONVERGENCE_AXES, SCORES, EvaluationConfig
from .defenses import (
    DEFENSE_TITLES,
    DEFENSES,
    DefenseSpec,
    RobustClassifier,
    UndefendedClassifier,
    defense_specs,
    robust_logits,
)
from .planning import EvaluationPlan, Job, Unit, share_units, unit_cost
from .report import markdown_report, results_table, write_outputs
from .runner import EvaluationResult, SanityCheckError, check_output_dir, evaluate
from .sanity import (
    SanityCheck,
    check_converged,
    check_converged_paired,
    check_gradient,
    check_huge_eps,
    check_no_rise,
    check_undefended_collapse,
    format_sanity_block,
)
from .seeds import derive_seed

__all__ = [
    "ATTACKS",
    "ATTACK_SPECS",
    "AttackSpec",
    "RobustClassifier",
    "WORST_CASE",
    "attack_spec",
    "check_converged_paired",
    "robust_logits",
    "ATTACK_TITLES",
    "Aggregate",
    "CONVERGENCE_AXES",
    "DEFENSES",
    "DEFENSE_TITLES",
    "DefenseSpec",
    "EvaluationConfig",
    "EvaluationPlan",
    "EvaluationResult",
    "Job",
    "Records",
    "SCORES",
    "SanityCheck",
    "SanityCheckError",
    "Unit",
    "UndefendedClassifier",
    "check_converged",
    "check_gradient",
    "check_huge_eps",
    "check_no_rise",
    "check_output_dir",
    "check_undefended_collapse",
    "defense_specs",
    "derive_seed",
    "evaluate",
    "format_sanity_block",
    "markdown_report",
    "results_table",
    "sanity_checks",
    "share_units",
    "unit_cost",
    "wilson_interval",
    "write_outputs",
]
