"""Which sanity checks an evaluation reports, fed from its aggregated accuracies."""

from .aggregation import Aggregate
from .attacks_registry import ATTACK_TITLES, WORST_CASE
from .config import SCORES
from .sanity import SanityCheck, check_converged_paired, check_huge_eps, check_undefended_collapse

AXIS_TITLES = {"steps": "the steps", "eot": "the EOT draws", "restarts": "the runs"}


def _budget_name(job, axis: str) -> str:
    if axis == "steps":
        return f"{job.steps} steps"
    if axis == "eot":
        return f"EOT {job.eot_samples}"
    return f"{job.restarts} + {job.targeted_restarts} runs"


def convergence_checks(aggregate: Aggregate, defense: str) -> list[SanityCheck]:
    """Per budget axis in `convergence_checks`: every attack row of `defense` that has the axis, doubled, against
    the same images under the reported budget (paired), and the worst case over the doubled rows against the
    reported worst-case row. The worst-case check is named `... [defense]`, an attack row's `... [defense, attack]`."""
    plan, records = aggregate.plan, aggregate.records
    cfg, n = plan.config, plan.sanity_count
    seed = cfg.seeds[0]
    main = plan.main_jobs(seed)
    weak_jobs = {a: main[(defense, a)] for a in plan.attacks_of(defense)}
    checks = []
    for axis in cfg.convergence_checks:
        doubled = plan.convergence_jobs(defense, axis)
        if not doubled:
            continue
        for attack, strong in doubled.items():
            weak = weak_jobs[attack]
            flags = ({kind: aggregate.robust(weak, kind, n) for kind in SCORES},
                     {kind: aggregate.robust(strong, kind, n) for kind in SCORES})
            spent = None
            if strong.spec.fixed_budget:
                spent = (records.spent_per_image(weak), records.spent_per_image(strong))
            check = check_converged_paired(
                f"{defense}, {attack}", AXIS_TITLES[axis], (_budget_name(weak, axis), flags[0]),
                (_budget_name(strong, axis), flags[1]), cfg.convergence_tolerance, cfg.convergence_alpha, spent)
            check.detail += f" [{ATTACK_TITLES[attack]}, K = {cfg.rescore_runs}]"
            checks.append(check)
        # The combined row: an attack without this axis enters with its reported budget.
        weak_all = list(weak_jobs.values())
        strong_all = [doubled.get(a, job) for a, job in weak_jobs.items()]
        flags = ({kind: aggregate.robust(weak_all, kind, n) for kind in SCORES},
                 {kind: aggregate.robust(strong_all, kind, n) for kind in SCORES})
        check = check_converged_paired(defense, AXIS_TITLES[axis], ("reported budget", flags[0]),
                                       ("doubled budget", flags[1]), cfg.convergence_tolerance,
                                       cfg.convergence_alpha)
        check.detail += f" [{ATTACK_TITLES[WORST_CASE]} ({', '.join(doubled)} doubled), K = {cfg.rescore_runs}]"
        checks.append(check)
    return checks


def sanity_checks(aggregate: Aggregate, num_classes: int) -> list[SanityCheck]:
    """
    - the undefended classifier falls under the first attack, on every seed (threshold per norm);
    - per checked defense (every one but the undefended classifier): doubling each budget axis in
      `convergence_checks` does not break images that the reported budget left robust (a paired test per attack row
      and on the worst-case row, see [`check_converged_paired`]), a huge eps without random start reaches chance,
      and the gradient matches finite differences.
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
    for d in plan.checked:
        if n == 0:
            skipped = "skipped: sanity_images is 0"
            checks += [SanityCheck(f"attack converged [{d}]", None, skipped),
                       SanityCheck(f"huge eps reaches chance [{d}]", None, skipped)]
        else:
            checks += convergence_checks(aggregate, d)
            checks.append(check_huge_eps(d, aggregate.accuracy(jobs[("huge-eps", d)], "majority"), n, num_classes,
                                         cfg.huge_eps))
    for d in plan.checked:
        if not cfg.gradient_check:
            checks.append(SanityCheck(f"gradient is exact [{d}]", None, "skipped: gradient_check is off"))
        else:
            check = records.gradient_checks[d]
            checks.append(SanityCheck(check["name"], check["passed"], check["detail"], check["values"]))
    return checks
