"""Render benchmarks/RESULTS.md, and the robustness table of the README, from benchmarks/results/*.json, so they
always agree.

    python benchmarks/write_results_md.py
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, markdown_table  # noqa: E402

OUT = Path(__file__).resolve().parent / "RESULTS.md"


def _load(name):
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


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
                  f"t* = {res['strength']}, {res['num_inference_steps']} DDIM steps, batch {res['batch_size']}, median "
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
    rows = [[row["scheduler"], row["steps"], row["first_timestep"], f"{100 * row['clean_accuracy']:.1f}",
             f"{100 * row['robust_all']:.1f}", f"{100 * row['robust_majority']:.1f}", f"{row['seconds']:.0f}"]
            for row in res["rows"]]
    s = r["settings"]
    return ["## 3. Steps against robustness", "", *_header(r),
            f"Latent guidance (scale {s['guidance_scale']}), t* = {s['strength']}; clean accuracy on "
            f"{s['clean_images']} test images; robust accuracy under exact PGD-{s['pgd_steps']} (EOT "
            f"{s['eot_samples']}, {s['norm']} {s['eps']}) on {s['num_images']}, scored over K = {s['rescore_runs']} "
            f"runs; seed {s['seed']}.", "",
            markdown_table(["scheduler", "UNet evaluations / image", "first timestep", "clean %", "robust % (all K)",
                            "robust % (majority)", "seconds"], rows), "",
            f"Fewest DDIM steps within 1 point of the full chain's robust accuracy: "
            f"**{res['fewest_ddim_steps_within_1_point']}**.", ""]


def table(r) -> list[str]:
    lines = ["## 4. The robustness table", "", *_header(r)]
    for key, entry in r["results"].items():
        norm, attack = key.split("/")
        results = entry["results"]
        rows = []
        for defense, by_attack in results.items():
            clean, robust = by_attack["clean"], by_attack[attack]
            rows.append([defense, f"{100 * clean['all']['mean']:.1f} ± {100 * clean['all']['std']:.1f}",
                         f"{100 * robust['all']['mean']:.1f} ± {100 * robust['all']['std']:.1f}",
                         f"{100 * robust['majority']['mean']:.1f} ± {100 * robust['majority']['std']:.1f}"])
        failed = [c for c in entry["sanity"] if c["passed"] is False]
        lines += [f"### {norm}, {attack} ({entry['images']} images; full report: `{entry['report']}`)", ""]
        # Each run's own command and time: a run read back from an earlier report was not made by this command.
        lines += [f"Run by `{entry['command']}` in {entry['wall_time_s'] / 60:.1f} min.", "",
                  markdown_table(["defense", "clean % (all K)", "robust % (all K)", "robust % (majority of K)"],
                                 rows), "",
                  "Sanity checks: " + ("all passed or skipped" if not failed else
                                       "**FAILED: " + "; ".join(c["name"] for c in failed) + "**"), ""]
    return lines


DEFENSE_NAMES = {"undefended": "undefended classifier", "none": "unguided purification (DiffPure-style)",
                 "pixel": "pixel guidance (GDMP-style)", "latent": "latent guidance (AGDM)"}
README = Path(__file__).resolve().parents[1] / "README.md"
README_START, README_END = "<!-- robustness-table:start -->", "<!-- robustness-table:end -->"


def readme_table(r) -> str:
    """The robustness table in one block for the README: a column per (threat model, attack), robust accuracy
    correct in all K runs, mean ± std over seeds; clean accuracy from the first run."""
    runs = list(r["results"].items())
    attack_names = {"pgd": "PGD-EOT", "autoattack-rand": "AA-rand"}
    columns = [f"{key.split('/')[0]} {attack_names.get(key.split('/')[1], key.split('/')[1])} ({entry['images']} img)"
               for key, entry in runs]
    first = runs[0][1]["results"]
    rows = []
    for defense in first:
        clean = first[defense]["clean"]["all"]
        cells = [f"{100 * clean['mean']:.1f}"]
        for key, entry in runs:
            robust = entry["results"][defense][key.split("/")[1]]["all"]
            cells.append(f"{100 * robust['mean']:.1f} ± {100 * robust['std']:.1f}")
        rows.append([DEFENSE_NAMES.get(defense, defense), *cells])
    seeds = r["settings"]["seeds"]
    failed = {key: [c["name"] for c in entry["sanity"] if c["passed"] is False] for key, entry in runs}
    failed_note = "".join(f" **{key}: sanity check failed ({'; '.join(names)}); treat it as an upper bound.**"
                          for key, names in failed.items() if names)
    return (markdown_table(["defense", "clean %", *[c + " %" for c in columns]], rows) + "\n\n"
            f"Robust accuracy counts an image only if all K = {r['settings']['rescore_runs']} fresh runs of the "
            f"defense classify its adversarial example correctly; mean ± std over seeds {seeds}. Clean accuracy is "
            f"from the first column's images; each column attacks the first N test images it names, so columns with "
            f"different N are not directly comparable.{failed_note} Budgets, sanity checks, shortfalls and commands: "
            f"[benchmarks/RESULTS.md](benchmarks/RESULTS.md).")


def update_readme(r) -> None:
    text = README.read_text()
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    README.write_text(f"{head}{README_START}\n{readme_table(r)}\n{README_END}{tail}")
    print(f"updated the robustness table in {README}")


def main():
    parts = ["# Benchmark results", "",
             "The last measured numbers, rendered from `benchmarks/results/*.json` by "
             "`python benchmarks/write_results_md.py`; each section names the command that produced it.", ""]
    sections = (("purification_throughput", throughput), ("attack_memory", memory),
                ("steps_vs_robustness", steps), ("robustness_table", table))
    loaded = {name: _load(name) for name, _ in sections}
    for name, render in sections:
        r = loaded[name]
        parts += render(r) if r else [f"## {name}", "", "Not measured yet.", ""]
    extra = Path(__file__).resolve().parent / "NOTES.md"
    if extra.is_file():
        parts += [extra.read_text()]
    OUT.write_text("\n".join(parts))
    print(f"wrote {OUT}")
    if loaded["robustness_table"]:
        update_readme(loaded["robustness_table"])


if __name__ == "__main__":
    main()
