"""
Robustness evaluation of purification defenses: [`evaluate`] (and `agdm evaluate`) compares the undefended classifier,
the adversarial-training baseline (the guidance network as the classifier), unguided purification, pixel guidance,
latent guidance and latent guidance classified by the robust network under exact-gradient APGD-EOT (with restarts and
a guidance-target variant), PGD, the BPDA and surrogate baselines and AutoAttack (one table: `attacks_registry.py`),
with clean-and-robust scoring over K defense runs, the per-image worst case over all attacks, paired convergence and
sanity checks, JSON / markdown reports and plots, and resumable runs.

The names below load on first use (as the package's top level does), so that `agdm evaluate --help` can read
[`EvaluationConfig`]'s fields without importing torch.
"""

from ..utils.lazy import lazy_names

_LAZY = {
    "ATTACK_SPECS": ".attacks_registry",
    "AttackSpec": ".attacks_registry",
    "WORST_CASE": ".attacks_registry",
    "attack_spec": ".attacks_registry",
    "RobustClassifier": ".defenses",
    "robust_logits": ".defenses",
    "check_converged_paired": ".sanity",
    "Aggregate": ".aggregation",
    "Records": ".aggregation",
    "wilson_interval": ".aggregation",
    "sanity_checks": ".checks",
    "ATTACK_TITLES": ".config",
    "ATTACKS": ".config",
    "CONVERGENCE_AXES": ".config",
    "SCORES": ".config",
    "EvaluationConfig": ".config",
    "DEFENSE_TITLES": ".defenses",
    "DEFENSES": ".defenses",
    "DefenseSpec": ".defenses",
    "UndefendedClassifier": ".defenses",
    "defense_specs": ".defenses",
    "EvaluationPlan": ".planning",
    "Job": ".planning",
    "Unit": ".planning",
    "share_units": ".planning",
    "unit_cost": ".planning",
    "markdown_report": ".report",
    "results_table": ".report",
    "write_outputs": ".report",
    "EvaluationResult": ".runner",
    "SanityCheckError": ".runner",
    "check_output_dir": ".runner",
    "evaluate": ".runner",
    "SanityCheck": ".sanity",
    "check_gradient": ".sanity",
    "check_huge_eps": ".sanity",
    "check_undefended_collapse": ".sanity",
    "format_sanity_block": ".sanity",
    "derive_seed": ".seeds",
}


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)


__all__ = sorted(_LAZY)
