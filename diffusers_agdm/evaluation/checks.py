"""Which sanity checks an evaluation reports, fed from its aggregated accuracies."""

from .aggregation import Aggregate
from .config import ATTACK_TITLES
from .sanity import SanityCheck, check_converged, check_huge_eps, check_undefended_collapse

AXIS_TITLES = {"steps": "the steps", "eot": "the EOT draws", "restarts": "the restarts"}


def sanity_checks(aggregate: Aggregate, num_classes: int) -> list[SanityCheck]:
    """
    - the undefended classifier falls under the first attack, on every seed (threshold per norm);
    - per purifying defense: doubling each budget axis in `convergence_checks` lowers robust accuracy by at most
      `convergence_tolerance` (under every score), a huge eps without random start reaches chance, and the gradient
      matches finite differences.
    """
    plan, records = aggregate.plan, aggregate.records
    cfg = plan.config
    checks = []
    for seed in cfg.seeds:
        job = plan.main_jobs(seed)[("undefended", plan.base_attack)]
        checks.append(check_undefended_collapse(
            aggregate.accuracy(job, "majority"), job.num_images, cfg.norm, cfg.eps,
            clean_accuracy=aggregate.accuracy(plan.main_jobs(seed)[("undefended", "clean")], "majority"),
            attack=ATTACK_TITLES[plan.base_attack], seed=seed if len(cfg.seeds) > 1 else None))
    n, jobs = plan.sanity_count, plan.sanity_jobs()
    for d in plan.purifying:
        if n == 0:
            skipped = "skipped: sanity_images is 0"
            checks += [SanityCheck(f"attack converged [{d}]", None, skipped),
                       SanityCheck(f"huge eps reaches chance [{d}]", None, skipped)]
        else:
            weak = plan.main_jobs(cfg.seeds[0])[(d, plan.base_attack)]
            for axis in cfg.convergence_checks:
                strong = jobs.get(("converge", axis, d))
                if strong is None:
                    continue
                names = {"steps": (f"{weak.steps} steps", f"{strong.steps} steps"),
                         "eot": (f"EOT {weak.eot_samples}", f"EOT {strong.eot_samples}"),
                         "restarts": (f"{weak.restarts} restarts", f"{strong.restarts} restarts")}[axis]
                by_score = {kind: check_converged(d, AXIS_TITLES[axis], (names[0], aggregate.accuracy(weak, kind, n)),
                                                  (names[1], aggregate.accuracy(strong, kind, n)), n,
                                                  cfg.convergence_tolerance)
                            for kind in ("all", "majority", "single")}
                # Every score must hold; report a failing one if any.
                kind, check = next(((k, c) for k, c in by_score.items() if not c.passed),
                                   ("all", by_score["all"]))
                check.detail += f" [score: {kind}, K = {cfg.rescore_runs}]"
                check.values = {k: c.values for k, c in by_score.items()}
                check.passed = all(c.passed for c in by_score.values())
                checks.append(check)
            checks.append(check_huge_eps(d, aggregate.accuracy(jobs[("huge-eps", d)], "majority"), n, num_classes,
                                         cfg.huge_eps))
    for d in plan.purifying:
        if not cfg.gradient_check:
            checks.append(SanityCheck(f"gradient is exact [{d}]", None, "skipped: gradient_check is off"))
        else:
            check = records.gradient_checks[d]
            checks.append(SanityCheck(check["name"], check["passed"], check["detail"], check["values"]))
    return checks
