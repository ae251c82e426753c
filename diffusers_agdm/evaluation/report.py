"""Reports a person can read: `results.json` (everything), `results.md` (tables and sanity checks), the plots."""

import json
from pathlib import Path

from ..utils.io import atomic_write_text, markdown_table
from .attacks_registry import ATTACK_SPECS, ATTACK_TITLES, WORST_CASE
from .config import SCORE_TITLES, SCORES
from .plots import plot_accuracy_vs_eps, plot_examples_grid
from .sanity import SanityCheck, format_sanity_block

ROBUST_RULE = ("An image counts as robust only if the defense classifies it correctly both clean and attacked; "
               "clean accuracy uses the same score. K = {k} fresh defense runs per image.")
WORST_CASE_RULE = ("Worst case over all attacks: per image, the adversarial example of the attack row misclassified "
                   "on the most of {s} selection runs (drawn apart from the attack's and the K scoring runs; ties: "
                   "the larger mean margin loss) is chosen, then scored over the same K runs; robust only if that "
                   "example fails too.")


def format_accuracy(stat: dict | None) -> str:
    """`{"mean": 0.4375, "std": 0.021}` as `43.8 ± 2.1` (percent, std over seeds); a single seed shows its 95%
    interval instead, `43.8 [31.6, 56.7]`; `None` (the attack does not apply) as `n/a`."""
    if stat is None:
        return "n/a"
    text = f"{100 * stat['mean']:.1f}"
    if stat.get("std") is not None:
        return f"{text} ± {100 * stat['std']:.1f}"
    if stat.get("ci95") is not None:
        low, high = stat["ci95"]
        return f"{text} [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def results_table(report: dict, kind: str = "all") -> str:
    """Defense x {clean, each attack} as a markdown table of accuracy (%), mean ± std over seeds (one seed: its
    95% interval); robust columns are clean-and-robust."""
    columns = ["clean"] + list(report["settings"]["attacks"]) + [WORST_CASE]
    return markdown_table(["defense"] + [ATTACK_TITLES[c] for c in columns],
                          [[report["defenses"][defense]["title"]] + [format_accuracy(by_attack.get(c, {}).get(kind))
                                                                     for c in columns]
                           for defense, by_attack in report["results"].items()])


def eps_table(report: dict, kind: str = "all") -> str:
    """Robust accuracy (%) under exact PGD against eps, one row per defense (eps 0 is clean accuracy)."""
    curve = report["eps_curve"]
    eps_values = [point["eps"] for point in next(iter(curve.values()))]
    return markdown_table(["defense"] + [f"eps {e:g}" for e in eps_values],
                          [[report["defenses"][defense]["title"]] + [format_accuracy(p[kind]) for p in points]
                           for defense, points in curve.items()])


def settings_summary(config, plan, pipeline, specs) -> dict:
    """The settings block of `results.json`: the threat model, each attack's budget, scoring, sanity checks."""
    from dataclasses import asdict

    base = plan.job("latent" if "latent" in plan.defenses else plan.defenses[-1], plan.base_attack,
                    config.seeds[0])
    surrogate = {}
    if "surrogate" in config.attacks:
        for d in plan.defenses:
            if specs[d].purifies:
                steps = specs[d].settings.num_inference_steps
                surrogate[d] = config.surrogate_steps if config.surrogate_steps is not None else max(1, steps // 2)
    budgets = {}
    for attack in config.attacks:
        job, spec = plan.job(plan.defenses[0], attack, config.seeds[0]), ATTACK_SPECS[attack]
        budgets[attack] = {"budget": spec.describe_budget(job), "iterations_per_image": spec.iterations(job),
                           "runs": spec.runs(job), "eot_samples": job.eot_samples,
                           "gradient_evaluations_per_image": spec.gradient_evaluations(job, plan.num_classes),
                           "gradient": spec.gradient}
        # APGD's runs differ between deterministic and purifying defenses (`long_runs_on_purifiers`): name both.
        purifier = next((d for d in plan.defenses if specs[d].purifies), None)
        if purifier is not None:
            other = plan.job(purifier, attack, config.seeds[0])
            if spec.describe_budget(other) != budgets[attack]["budget"]:
                budgets[attack]["budget_on_purifiers"] = spec.describe_budget(other)
    return {
        "threat_model": {"norm": config.norm, "eps": config.eps, "eps_grid": plan.curve_eps()},
        "attacks": list(config.attacks),
        "attack": {"first": plan.base_attack, "loss": config.loss, "steps": config.steps,
                   "restarts": config.restarts, "targeted_restarts": config.targeted_restarts,
                   "eot_samples": config.eot_samples, "gradient_evaluations_per_image":
                       base.iterations * max(1, base.eot_samples) if base.attack != "clean" else 0,
                   "pgd_step_size": config.pgd_step_size, "random_start (pgd)": config.random_start,
                   "guidance_weight (apgd-guidance)": config.guidance_weight,
                   "gradient": "exact, through the whole defense (forward noising, every reverse step, second order "
                               "through the guidance network, classifier), per-step gradient checkpointing"},
        "attack_budgets": budgets,
        "surrogate": {"num_inference_steps": surrogate},
        "autoattack": {"steps": config.autoattack_steps, "eot_iter (rand)": config.autoattack_eot_iter,
                       "square_queries (standard)": config.autoattack_square_queries},
        "rescore_runs": config.rescore_runs,
        "scores": list(SCORES),
        "robust_rule": ROBUST_RULE.format(k=config.rescore_runs),
        "selection_runs": config.selection_runs,
        "worst_case_rule": WORST_CASE_RULE.format(s=config.selection_runs),
        "seeds": list(config.seeds),
        "batch_size": config.batch_size,
        "sanity": {"images": plan.sanity_count, "convergence_checks": list(config.convergence_checks),
                   "convergence_tolerance": config.convergence_tolerance,
                   "convergence_alpha": config.convergence_alpha,
                   "convergence_rule": (
                       "per image, paired: fails when the exact one-sided McNemar test of robust -> broken against "
                       f"broken -> robust rejects at alpha {config.convergence_alpha:g} or robust accuracy drops by "
                       f"more than {100 * config.convergence_tolerance:g} points, under any score; every attack row "
                       "and the worst-case row"),
                   "huge_eps": config.huge_eps,
                   "huge_eps_attack": "PGD-20 from the clean image (no random start)",
                   "gradient_check": config.gradient_check},
        "config": asdict(config),
    }


def _settings_lines(report: dict) -> list[str]:
    s = report["settings"]
    attack = s["attack"]
    lines = [
        f"- pipeline: `{report['pipeline']}`; data: `{report['data']['name']}`, {report['data']['num_images']} "
        f"images, {report['data']['num_classes']} classes",
        f"- threat model: {s['threat_model']['norm']} eps = {s['threat_model']['eps']:g}",
        f"- attack budget: {attack['steps']} iterations x ({attack['restarts']} + {attack['targeted_restarts']} "
        f"targeted) runs, EOT {attack['eot_samples']}, loss {attack['loss']}: "
        f"{attack['gradient_evaluations_per_image']} gradient evaluations per image for {attack['first']}; exact "
        "gradient through the whole defense",
        f"- scoring: {s['robust_rule']} Seeds {s['seeds']}.",
    ]
    if s.get("worst_case_rule"):
        lines.append(f"- {s['worst_case_rule']}")
    sanity = s["sanity"]
    if sanity["images"] and sanity["convergence_checks"] and sanity.get("convergence_rule"):
        lines.append(f"- convergence check ({', '.join(sanity['convergence_checks'])} doubled on {sanity['images']} "
                     f"images): {sanity['convergence_rule']}. With no real change it fires at most alpha of the time "
                     "per row, axis and score through the test, more through the tolerance when many images "
                     "change; each check states its exact false-alarm rate.")
    if "surrogate" in s["attacks"]:
        lines.append(f"- surrogate reverse steps: {s['surrogate']['num_inference_steps']}")
    if any(ATTACK_SPECS[a].family == "autoattack" for a in s["attacks"] if a in ATTACK_SPECS):
        aa = s["autoattack"]
        lines.append(f"- AutoAttack: {aa['steps']} iterations, EOT {aa['eot_iter (rand)']} (rand), "
                     f"{aa['square_queries (standard)']} Square queries (standard)")
    for defense, info in report["defenses"].items():
        if "strength" in info:
            scale = info.get("guidance_scale", info.get("pixel_guidance_scale"))
            lines.append(f"- {info['title']}: t* = {info['first_timestep']} of {info['num_train_timesteps']} "
                         f"(strength {info['strength']:g}), {info['num_inference_steps']} {info['scheduler']} steps, "
                         f"guidance {info['guidance']} scale {scale:g}, lambda {info['feature_weight']:g}"
                         + (", then the robust classifier" if info.get("classifier", "classifier") != "classifier"
                            else ""))
    return lines


def budget_lines(report: dict) -> list[str]:
    """Each attack's budget, as planned and as spent: what every table's numbers were measured under."""
    s = report["settings"]
    budgets, spent = s.get("attack_budgets", {}), report.get("gradient_evaluations_spent", {})
    lines = []
    for attack in s["attacks"]:
        b = budgets.get(attack)
        if b is None:
            continue
        used = sorted({round(by_attack[attack], 1) for by_attack in spent.values() if attack in by_attack})
        used_text = f"; spent {', '.join(f'{u:g}' for u in used)} per image" if used else ""
        purifiers = (f" (on defenses that purify: {b['budget_on_purifiers']}, the targeted runs' budget spent as "
                     "iterations of the untargeted run)") if "budget_on_purifiers" in b else ""
        lines.append(f"- {ATTACK_TITLES[attack]}: {b['budget']}{purifiers} = {b['gradient_evaluations_per_image']} "
                     f"gradient evaluations per image{'' if ATTACK_SPECS[attack].fixed_budget else ' (at most)'}"
                     f"{used_text}")
    return lines


def verdict_line(report: dict) -> str | None:
    """One line before the tables when a sanity check failed: the numbers below cannot be trusted."""
    failed = [c["name"] for c in report["sanity_checks"] if c["passed"] is False]
    if not failed:
        return None
    return (f"VERDICT: {len(failed)} sanity check(s) FAILED ({', '.join(failed[:3])}"
            f"{', ...' if len(failed) > 3 else ''}): the robust accuracies below cannot be trusted.")


def _checks(report: dict) -> list[SanityCheck]:
    return [SanityCheck(c["name"], c["passed"], c["detail"], c["values"]) for c in report["sanity_checks"]]


def markdown_report(report: dict) -> str:
    """The whole `results.md`: settings, both score tables, the eps curve, the sanity checks, the command."""
    k = report["settings"]["rescore_runs"]
    run = report["run"]
    parts = [f"# {report['title']}", ""]
    if not report["sanity_passed"]:
        parts += [
            "> **SANITY CHECK FAILED: the robust accuracies below cannot be trusted.** See the checks below.", ""
        ]
    parts += _settings_lines(report) + ["", "Attack budgets:", ""] + budget_lines(report) + [""]
    for kind in SCORES:
        parts += [f"## Accuracy (%), {SCORE_TITLES[kind].format(k=k)}", "", results_table(report, kind), ""]
    parts += ["## Robust accuracy (%) against eps, first attack, all runs correct", "", eps_table(report, "all"), "",
              "## Sanity checks", "", "```", format_sanity_block(_checks(report)), "```", "",
              "## Run", "", f"- command: `{run['command']}`",
              f"- {run['num_processes']} process(es) on {run['device']}, wall time {run['wall_time_s']:.1f} s, "
              f"started {run['started_at']}",
              "- versions: " + ", ".join(f"{name} {version}" for name, version in run["versions"].items()), ""]
    return "\n".join(parts)


def text_summary(result, color: bool = False) -> str:
    """What `agdm evaluate` prints: a verdict line first when a sanity check failed, the scoring rules and each
    attack's budget, the three score tables (every attack, then the worst case over them) and the sanity checks."""
    report = result.report
    k = report["settings"]["rescore_runs"]
    verdict = verdict_line(report)
    parts = [verdict, ""] if verdict else []
    parts += [report["settings"]["robust_rule"], report["settings"].get("worst_case_rule", ""), "",
              "Attack budget:", *budget_lines(report), ""]
    for kind in SCORES:
        parts += [f"Accuracy (%), {SCORE_TITLES[kind].format(k=k)}:", results_table(report, kind), ""]
    parts += ["Sanity checks:", format_sanity_block(result.sanity_checks, color=color)]
    return "\n".join(parts)


def write_outputs(result, output_dir) -> None:
    """Write `results.json`, `results.md`, `robust_accuracy_vs_eps.png` and `examples_grid.png` to `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "results.json", json.dumps(result.report, indent=2) + "\n")
    atomic_write_text(output_dir / "results.md", markdown_report(result.report))
    plot_accuracy_vs_eps(result.report, output_dir / "robust_accuracy_vs_eps.png")
    if result.examples is not None:
        plot_examples_grid(result.examples, output_dir / "examples_grid.png", result.report)
    # Said only once every file is on disk.
    written = "results.json, results.md, robust_accuracy_vs_eps.png" + (
        ", examples_grid.png" if result.examples is not None else "")
    print(f"\nWrote {output_dir}/{written}")
