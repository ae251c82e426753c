"""Render benchmarks/RESULTS.md, and the robustness table of the README, from benchmarks/results/*.json, so they
always agree. Nothing is measured here: every number is read from the JSON files.

    python benchmarks/write_results_md.py
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, markdown_table  # noqa: E402

from diffusers_agdm.evaluation.report import format_accuracy  # noqa: E402

OUT = Path(__file__).resolve().parent / "RESULTS.md"
SCORE_HEADERS = {"all": "all {k}", "majority": "majority of {k}", "single": "one run"}


def _load(results_dir: Path, name: str):
    path = Path(results_dir) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _table_runs(r) -> list[tuple[str, dict, list[str]]]:
    """(key, entry, attacks) per evaluation run of robustness_table.json; a run of an earlier version of the
    benchmark names its one attack only in its key ("Linf/pgd")."""
    return [(key, entry, entry.get("attacks") or [key.split("/", 1)[1]]) for key, entry in r["results"].items()]


def _rescore_runs(r, entry) -> int:
    return entry.get("rescore_runs", r["settings"]["rescore_runs"])


def _header(r) -> list[str]:
    m = r["machine"]
    where = m.get("gpu") or f"{m['cpu_count']} CPU cores, {m['torch_threads']} torch thread(s)"
    return [f"Command: `{r['command']}`  ", f"Machine: {where}, torch {m['torch']}; diffusers-agdm "
            f"{r['diffusers_agdm_version']}; wall time {r['wall_time_s'] / 60:.1f} min.", ""]


def throughput(r) -> list[str]:
    lines = ["## 1. Purification throughput", "", *_header(r)]
    for name, res in r["results"].items():
        modes, params = res["modes"], res["parameters"]
        rows = [[mode, f"{v['images_per_s']:.2f}", f"{v['median_s_per_batch']:.3f}", f"{v['ratio_to_unguided']:.2f}x"]
                for mode, v in modes.items()]
        ratio = modes["latent"]["ratio_to_unguided"]
        lines += [f"### {name}", "",
                  f"UNet {params['unet'] / 1e6:.2f}M and guidance network {params['guidance'] / 1e6:.2f}M parameters; "
                  f"t* = {res['strength']}, {res['num_inference_steps']} DDIM steps, batch {res['batch_size']}, "
                  "median "
                  f"of {res['repeats']} interleaved repeats, latent scale {res['guidance_scale']}.", "",
                  markdown_table(["guidance", "images / s", "s / batch", "time vs unguided"], rows), "",
                  f"Target latent / unguided <= 1.25x: **{'met' if ratio <= 1.25 else 'not met'}** ({ratio:.2f}x).",
                  ""]
    return lines


def memory(r) -> list[str]:
    res = r["results"]
    by = {(row["steps"], row["checkpointing"]): row for row in res["rows"]}
    steps = sorted({row["steps"] for row in res["rows"]})
    rows = [[n, f"{by[(n, False)]['peak_bytes'] / 2**20:.1f}", f"{by[(n, True)]['peak_bytes'] / 2**20:.1f}",
             f"{by[(n, False)]['seconds']:.2f}", f"{by[(n, True)]['seconds']:.2f}",
             f"{by[(n, True)]['seconds'] / by[(n, False)]['seconds']:.2f}x"] for n in steps]
    growth = res["growth_checkpointed"]
    return ["## 2. Memory of the exact-gradient attack", "", *_header(r),
            f"One exact PGD gradient (latent guidance, batch {r['settings']['batch_size']}); memory: "
            f"{r['settings']['measure']}.", "",
            markdown_table(["reverse steps", "peak MiB, plain", "peak MiB, checkpointed", "s, plain",
                            "s, checkpointed", "time overhead"], rows), "",
            f"Peak at {steps[-1]} steps / peak at {steps[0]} steps: checkpointed **{growth:.2f}x** (target <= 1.5x: "
            f"**{'met' if growth <= 1.5 else 'not met'}**), plain {res['growth_plain']:.2f}x.", ""]


def steps(r) -> list[str]:
    res = r["results"]

    def percent(row, key):
        return f"{100 * row[key]:.1f}" if row.get(key) is not None else "n/a"

    rows = [[row["scheduler"], row["steps"], row["first_timestep"], percent(row, "clean_accuracy"),
             percent(row, "robust_all"), percent(row, "robust_majority"), percent(row, "robust_single"),
             f"{row['seconds']:.0f}"] for row in res["rows"]]
    s = r["settings"]
    # An earlier version of the benchmark ran PGD with cross-entropy and recorded `pgd_steps`.
    attack, iterations = s.get("attack", "pgd").upper(), s.get("steps", s.get("pgd_steps"))
    loss = s.get("loss", "cross-entropy")
    clean_rule = "correct in all K runs" if "attack" in s else "one run"
    return ["## 3. Steps against robustness", "", *_header(r),
            f"Latent guidance (scale {s['guidance_scale']}), t* = {s['strength']}; clean accuracy ({clean_rule}) on "
            f"{s['clean_images']} test images; robust accuracy under exact {attack}-{iterations} ({loss} loss, EOT "
            f"{s['eot_samples']}, {s['norm']} {s['eps']}) on {s['num_images']}, scored over K = {s['rescore_runs']} "
            f"runs; seed {s['seed']}.", "",
            markdown_table(["scheduler", "UNet evaluations / image", "first timestep", "clean %", "robust % (all K)",
                            "robust % (majority)", "robust % (one run)", "seconds"], rows), "",
            f"Fewest DDIM steps within 1 point of the full chain's robust accuracy: "
            f"**{res['fewest_ddim_steps_within_1_point']}**.", ""]


def table(r) -> list[str]:
    lines = ["## 4. The robustness table", "", *_header(r)]
    for key, entry, attacks in _table_runs(r):
        k = _rescore_runs(r, entry)
        rows = []
        for defense, by_attack in entry["results"].items():
            for attack in attacks:
                if by_attack.get(attack) is None:  # the guidance-target attack exists for latent guidance only
                    continue
                rows.append([defense, attack, format_accuracy(by_attack["clean"]["all"]),
                             *(format_accuracy(by_attack[attack].get(kind)) for kind in SCORE_HEADERS)])
        failed = [c for c in entry["sanity"] if c["passed"] is False]
        norm = entry.get("norm", key.split("/", 1)[0])
        lines += [f"### {norm}, {', '.join(attacks)} ({entry['images']} images; full report: `{entry['report']}`)",
                  ""]
        # Each run's own command and time: a resumed run was partly computed by an earlier process.
        compute = (f"; {entry['compute_s'] / 60:.1f} min of compute over all units, resumed ones included"
                   if "compute_s" in entry else "")
        lines += [f"Run by `{entry['command']}` in {entry['wall_time_s'] / 60:.1f} min{compute}.", ""]
        if entry.get("robust_rule"):
            lines += [entry["robust_rule"] + " " + _spread_note(entry.get("seeds", r["settings"]["seeds"])), ""]
        lines += [markdown_table(["defense", "attack", f"clean % (all {k})",
                                  *(f"robust % ({SCORE_HEADERS[kind].format(k=k)})" for kind in SCORE_HEADERS)],
                                 rows), "",
                  "Sanity checks: " + ("all passed or skipped" if not failed else
                                       "**FAILED: " + "; ".join(c["name"] for c in failed) + "**"), ""]
    return lines


def _spread_note(seeds) -> str:
    if len(seeds) == 1:
        return f"One seed ({seeds[0]}): each number shows its 95% (Wilson) interval."
    return f"Mean ± sample std over seeds {seeds}."


DEFENSE_NAMES = {"undefended": "undefended classifier", "none": "unguided purification (DiffPure-style)",
                 "pixel": "pixel guidance (GDMP-style)", "latent": "latent guidance (AGDM)"}
README = Path(__file__).resolve().parents[1] / "README.md"
README_START, README_END = "<!-- robustness-table:start -->", "<!-- robustness-table:end -->"


def readme_table(r) -> str:
    """The robustness table in one block for the README: a column per (threat model, attack), clean-and-robust
    accuracy correct in all K runs (one seed: with its 95% interval; several: mean ± std); clean accuracy from the
    first run."""
    runs = _table_runs(r)
    attack_names = {"apgd": "APGD-EOT", "apgd-guidance": "APGD + guidance term", "pgd": "PGD-EOT",
                    "autoattack-rand": "AA-rand"}
    columns = [(entry, attack) for _, entry, attacks in runs for attack in attacks]
    headers = [f"{entry.get('norm', key.split('/')[0])} {attack_names.get(attack, attack)} ({entry['images']} img) %"
               for key, entry, attacks in runs for attack in attacks]
    first = runs[0][1]["results"]
    rows = []
    for defense in first:
        cells = [format_accuracy(first[defense]["clean"]["all"])]
        cells += [format_accuracy(entry["results"][defense].get(attack, {}).get("all")) for entry, attack in columns]
        rows.append([DEFENSE_NAMES.get(defense, defense), *cells])
    k = {_rescore_runs(r, entry) for _, entry, _ in runs}
    failed = {key: [c["name"] for c in entry["sanity"] if c["passed"] is False] for key, entry, _ in runs}
    failed_note = "".join(f" **{key}: sanity check failed ({'; '.join(names)}); treat it as an upper bound.**"
                          for key, names in failed.items() if names)
    k = "/".join(str(v) for v in sorted(k))
    if all(entry.get("robust_rule") for _, entry, _ in runs):
        rule = (f"An image counts as robust only if the defense classifies it correctly both clean and attacked, in "
                f"all K = {k} fresh defense runs (clean accuracy uses the same score).")
    else:  # numbers of an earlier version of the benchmark, which did not require clean-correct images
        rule = f"Robust accuracy counts an image if all K = {k} fresh runs of the defense classify its adversarial " \
               "example correctly (clean-correct or not)."
    return (markdown_table(["defense", "clean %", *headers], rows) + "\n\n"
            f"{rule} {_spread_note(r['settings']['seeds'])} Clean accuracy is from the first column's images; each "
            f"column attacks the first N test images it names, so columns with different N are not directly "
            f"comparable; n/a: the attack does not apply to the defense.{failed_note} Budgets, the majority-of-K and "
            f"one-run scores, sanity checks, shortfalls and commands: [benchmarks/RESULTS.md](benchmarks/RESULTS.md).")


def update_readme(r, readme: Path = README) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    _write_atomic(readme, f"{head}{README_START}\n{readme_table(r)}\n{README_END}{tail}")
    print(f"updated the robustness table in {readme}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", type=Path, default=RESULTS_DIR, help="where the benchmarks' JSON files are")
    parser.add_argument("--output", type=Path, default=OUT, help="the markdown file written")
    parser.add_argument("--readme", type=Path, default=README,
                        help="the README whose robustness table (between its markers) is rewritten")
    args = parser.parse_args(argv)
    parts = ["# Benchmark results", "",
             "The last measured numbers, rendered from `benchmarks/results/*.json` by "
             "`python benchmarks/write_results_md.py`; each section names the command that produced it.", ""]
    sections = (("purification_throughput", throughput), ("attack_memory", memory),
                ("steps_vs_robustness", steps), ("robustness_table", table))
    loaded = {name: _load(args.results_dir, name) for name, _ in sections}
    for name, render in sections:
        r = loaded[name]
        parts += render(r) if r else [f"## {name}", "", "Not measured yet.", ""]
    extra = Path(__file__).resolve().parent / "NOTES.md"
    if extra.is_file():
        parts += [extra.read_text()]
    _write_atomic(args.output, "\n".join(parts))
    print(f"wrote {args.output}")
    if loaded["robustness_table"] and args.readme.is_file():
        update_readme(loaded["robustness_table"], args.readme)


if __name__ == "__main__":
    main()
