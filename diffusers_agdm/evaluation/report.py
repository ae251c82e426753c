"""Reports a person can read: `results.json` (everything), `results.md` (tables and sanity checks), the plots."""

import json
from pathlib import Path

from .sanity import SanityCheck, format_sanity_block

SCORE_TITLES = {
    "all": "correct in all {k} defense runs (conservative)",
    "majority": "correct in a majority of {k} defense runs",
}


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A markdown table; cells are formatted with `str`."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def format_accuracy(stat: dict) -> str:
    """`{"mean": 0.4375, "std": 0.021}` as `43.8 ± 2.1` (percent); no std with a single seed."""
    text = f"{100 * stat['mean']:.1f}"
    return text if stat.get("std") is None else f"{text} ± {100 * stat['std']:.1f}"


def results_table(report: dict, kind: str = "all") -> str:
    """Defense x {clean, each attack} as a markdown table of accuracy (%), mean ± std over seeds."""
    from .runner import ATTACK_TITLES

    columns = ["clean"] + list(report["settings"]["attacks"])
    return markdown_table(["defense"] + [ATTACK_TITLES[c] for c in columns],
                          [[report["defenses"][defense]["title"]] + [format_accuracy(by_attack[c][kind])
                                                                     for c in columns]
                           for defense, by_attack in report["results"].items()])


def eps_table(report: dict, kind: str = "all") -> str:
    """Robust accuracy (%) under exact PGD against eps, one row per defense (eps 0 is clean accuracy)."""
    curve = report["eps_curve"]
    eps_values = [point["eps"] for point in next(iter(curve.values()))]
    return markdown_table(["defense"] + [f"eps {e:g}" for e in eps_values],
                          [[report["defenses"][defense]["title"]] + [format_accuracy(p[kind]) for p in points]
                           for defense, points in curve.items()])


def _settings_lines(report: dict) -> list[str]:
    s = report["settings"]
    pgd = s["pgd"]
    lines = [
        f"- pipeline: `{report['pipeline']}`; data: `{report['data']['name']}`, {report['data']['num_images']} "
        f"images, {report['data']['num_classes']} classes",
        f"- threat model: {s['threat_model']['norm']} eps = {s['threat_model']['eps']:g}",
        f"- PGD: {pgd['steps']} steps of {pgd['step_size']:.4g}, EOT {pgd['eot_samples']}, loss {pgd['loss']}, "
        f"random start {pgd['random_start']}; exact gradient through the whole defense",
        f"- scoring: each image re-classified by {s['rescore_runs']} fresh defense runs; seeds {s['seeds']}",
    ]
    if "surrogate" in s["attacks"]:
        lines.append(f"- surrogate reverse steps: {s['surrogate']['num_inference_steps']}")
    if any(a.startswith("autoattack") for a in s["attacks"]):
        aa = s["autoattack"]
        lines.append(f"- AutoAttack: {aa['steps']} iterations, EOT {aa['eot_iter (rand)']} (rand), "
                     f"{aa['square_queries (standard)']} Square queries (standard)")
    for defense, info in report["defenses"].items():
        if "strength" in info:
            lines.append(f"- {info['title']}: t* = {info['first_timestep']} of {info['num_train_timesteps']} "
                         f"(strength {info['strength']:g}), {info['num_inference_steps']} {info['scheduler']} steps, "
                         f"guidance {info['guidance']} scale {info['guidance_scale']:g}, "
                         f"lambda {info['feature_weight']:g}")
    return lines


def _checks(report: dict) -> list[SanityCheck]:
    return [SanityCheck(c["name"], c["passed"], c["detail"], c["values"]) for c in report["sanity_checks"]]


def markdown_report(report: dict) -> str:
    """The whole `results.md`: settings, both score tables, the eps curve, the sanity checks, the command."""
    k = report["settings"]["rescore_runs"]
    run = report["run"]
    parts = [f"# {report['title']}", ""]
    if not report["sanity_passed"]:
        parts += ["> **SANITY CHECK FAILED: the robust accuracies below cannot be trusted.** See the checks below.", ""]
    parts += _settings_lines(report) + [""]
    for kind in ("all", "majority"):
        parts += [f"## Accuracy (%), {SCORE_TITLES[kind].format(k=k)}", "", results_table(report, kind), ""]
    parts += ["## Robust accuracy (%) against eps, exact PGD, all runs correct", "", eps_table(report, "all"), "",
              "## Sanity checks", "", "```", format_sanity_block(_checks(report)), "```", "",
              "## Run", "", f"- command: `{run['command']}`",
              f"- {run['num_processes']} process(es) on {run['device']}, wall time {run['wall_time_s']:.1f} s, "
              f"started {run['started_at']}",
              f"- versions: " + ", ".join(f"{name} {version}" for name, version in run["versions"].items()), ""]
    return "\n".join(parts)


def text_summary(result, color: bool = False) -> str:
    """What `agdm evaluate` prints: the conservative table, the majority table and the sanity checks."""
    report = result.report
    k = report["settings"]["rescore_runs"]
    parts = []
    for kind in ("all", "majority"):
        parts += [f"Accuracy (%), {SCORE_TITLES[kind].format(k=k)}:", results_table(report, kind), ""]
    parts += ["Sanity checks:", format_sanity_block(result.sanity_checks, color=color)]
    if result.output_dir is not None:
        parts += ["", f"Wrote {result.output_dir}/results.json, results.md, robust_accuracy_vs_eps.png, "
                      "examples_grid.png"]
    return "\n".join(parts)


def write_outputs(result, output_dir) -> None:
    """Write `results.json`, `results.md`, `robust_accuracy_vs_eps.png` and `examples_grid.png` to `output_dir`."""
    from .plots import plot_accuracy_vs_eps, plot_examples_grid

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(result.report, indent=2) + "\n")
    (output_dir / "results.md").write_text(markdown_report(result.report))
    plot_accuracy_vs_eps(result.report, output_dir / "robust_accuracy_vs_eps.png")
    if result.examples is not None:
        plot_examples_grid(result.examples, output_dir / "examples_grid.png", result.report)
