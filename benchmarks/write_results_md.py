"""Render benchmarks/RESULTS.md, and the robustness table of the README, from benchmarks/results/*.json, so they
always agree. Nothing is measured here: every number is read from the JSON files.

    python benchmarks/write_results_md.py
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from purification_throughput import TARGET_RATIO  # noqa: E402

from common import RESULTS_DIR, markdown_table  # noqa: E402
from diffusers_agdm.evaluation.report import format_accuracy  # noqa: E402
from diffusers_agdm.utils.io import atomic_write_text  # noqa: E402

OUT = Path(__file__).resolve().parent / "RESULTS.md"
SCORE_HEADERS = {"all": "all {k}", "majority": "majority of {k}", "single": "one run"}


def _load(results_dir: Path, name: str):
    path = Path(results_dir) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _table_runs(r) -> list[tuple[str, dict, list[str]]]:
    """(key, entry, attacks) per evaluation run of robustness_table.json; a run of an earlier version of the
    benchmark names its one attack only in its key ("Linf/pgd"). A run that reports the per-image worst case over
    its attacks ("worst-case") shows it as one more attack column."""
    runs = []
    for key, entry in r["results"].items():
        attacks = list(entry.get("attacks") or [key.split("/", 1)[1]])
        if any("worst-case" in by_attack for by_attack in entry["results"].values()):
            attacks.append("worst-case")
        runs.append((key, entry, attacks))
    return runs


def _rescore_runs(r, entry) -> int:
    return entry.get("rescore_runs", r["settings"]["rescore_runs"])


def _header(r) -> list[str]:
    m = r["machine"]
    where = m.get("gpu") or f"{m['cpu_count']} CPU cores, {m['torch_threads']} torch thread(s)"
    return [f"Command: `{r['command']}`  ", f"Machine: {where}, torch {m['torch']}; diffusers-agdm "
            f"{r['diffusers_agdm_version']}; wall time {r['wall_time_s'] / 60:.1f} min.", ""]


def _t_star(res: dict) -> str:
    """t* as the timestep purification started from. Results of earlier versions recorded only `strength`, which then
    followed Diffusers' img2img convention (a strided schedule starting at its last step at or below strength x T),
    not today's (t* = strength x T): shown as recorded, and said so."""
    if "first_timestep" in res:
        return f"t* = {res['first_timestep']} (strength {res['strength']})"
    return f"strength {res['strength']} as recorded by an earlier version (img2img convention, not today's t*)"


def throughput(r) -> list[str]:
    lines = ["## 1. Purification throughput", "", *_header(r)]
    for name, res in r["results"].items():
        modes, params = res["modes"], res["parameters"]
        rows = [[mode, f"{v['images_per_s']:.2f}", f"{v['median_s_per_batch']:.3f}", f"{v['ratio_to_unguided']:.2f}x"]
                for mode, v in modes.items()]
        ratio = modes["latent"]["ratio_to_unguided"]
        lines += [f"### {name}", "",
                  f"UNet {params['unet'] / 1e6:.2f}M and guidance network {params['guidance'] / 1e6:.2f}M parameters; "
                  f"{_t_star(res)}, {res['num_inference_steps']} DDIM steps, batch {res['batch_size']}, "
                  "median "
                  f"of {res['repeats']} interleaved repeats, latent scale {res['guidance_scale']}.", "",
                  markdown_table(["guidance", "images / s", "s / batch", "time vs unguided"], rows), "",
                  f"Target latent / unguided <= {TARGET_RATIO:.2f}x: "
                  f"**{'met' if ratio <= TARGET_RATIO else 'not met'}** ({ratio:.2f}x).",
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


def _is_old_protocol(r) -> bool:
    """A robustness table measured before the converged evaluation: PGD with float32 CE, not clean-and-robust."""
    return not all(entry.get("robust_rule") for _, entry, _ in _table_runs(r))


def table(r) -> list[str]:
    lines = ["## 4. The robustness table", "", *_header(r)]
    if _is_old_protocol(r):
        lines += ["**Withdrawn.** These numbers were measured with PGD-10, float32 cross-entropy, EOT 1, K = 3 and "
                  "without requiring clean-correct images. The convergence study (section 0) shows that this attack "
                  "overstates every defense's robustness, so they are kept for the record only: upper bounds, not "
                  "results.", ""]
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


CONVERGENCE_TITLES = {"none": "unguided (DiffPure-style)", "pixel": "pixel guidance (GDMP-style)",
                      "latent": "latent guidance (AGDM)"}


def _setting_words(settings: dict) -> str:
    runs = f"{settings['restarts']} run(s)" + (f" + {settings['targeted_restarts']} targeted"
                                                 if settings.get("targeted_restarts") else "")
    extra = f", guidance-target term weight {settings['guidance_weight']:g}" if settings.get("guidance_weight") else ""
    return (f"APGD, {settings['loss']} loss, {settings['steps']} iterations x {runs}, EOT {settings['eot_samples']}"
            f"{extra}; {settings['norm']} eps {settings['eps']:g}; K = {settings['rescore_runs']}, seed "
            f"{settings['seed']}")


def convergence(r) -> list[str]:
    lines = ["## 0. Attack convergence", "",
             "Command: `python benchmarks/attack_convergence.py` (settings per row below; `--summarize` renders).  ",
             f"Machine: {r['machine']['cpu_count']} CPU cores, torch {r['machine']['torch']}.", "",
             "Clean-and-robust accuracy (%) of the embedded default's three purification defenses under "
             "exact-gradient APGD through the whole defense, against gradient evaluations per image (iterations x "
             "EOT x runs), on the first held-out MNIST test images. Each point is the worst point per image found so "
             "far in one long run, re-scored over K fresh defense runs (draws separate from the attack's); an image "
             "counts only if it is also clean-correct under the same score.", "",
             "![robust accuracy against gradient evaluations](results/attack_convergence.png)", ""]
    for tag, by_defense in r["results"].items():
        for defense, result in by_defense.items():
            clean, curve = result["clean"], result["curve"]
            n, k = clean["num_images"], result["settings"]["rescore_runs"]
            rows = [[p["gradient_evaluations"], *(f"{100 * p[kind]:.1f}" for kind in SCORE_HEADERS)] for p in curve]
            rows.insert(0, ["clean", *(f"{100 * clean[kind]:.1f}" for kind in SCORE_HEADERS)])
            lines += [f"### {CONVERGENCE_TITLES.get(defense, defense)}, `{tag}` ({n} images)", "",
                      _setting_words(result["settings"]) + f"; {result['cpu_s'] / 60:.0f} CPU-min.", "",
                      markdown_table(["gradient evaluations / image",
                                      *(f"{SCORE_HEADERS[kind].format(k=k)} %" for kind in SCORE_HEADERS)], rows),
                      ""]
    return lines


def gradient_throughput(r) -> list[str]:
    if "rows" in r["results"]:  # the cost of one exact gradient against the floor (gradient_throughput.py renders it)
        from gradient_throughput import markdown_lines

        return ["## 5. What one exact gradient costs", "", *_header(r),
                f"{r['settings']['num_images']} images, EOT 1, margin loss, median of {r['settings']['repeats']} "
                "interleaved timed calls after a warm-up; one process measures everything.", "",
                *markdown_lines(r["results"]), ""]
    rows = [[defense, f"{v['one_call_per_draw']:.2f}", f"{v['batched']:.2f}", f"{v['ratio']:.2f}x"]
            for defense, v in r["results"].items()]
    return ["## 5. Gradient evaluations per CPU-second", "", *_header(r),
            f"{r['settings']['num_images']} images, EOT {r['settings']['eot_samples']}, margin loss, median of "
            f"{r['settings']['repeats']} timed calls after a warm-up; the same process measures both.", "",
            markdown_table(["defense", "EOT draws one call each", "EOT draws batched", "batched / one each"], rows),
            ""]


# Sections 7 and 8 compare attacks with each other at the default budget; they are not robustness numbers.
ATTACK_STUDY_CAVEAT = ("These compare attacks at one budget, not converged (section 0 and the campaign say where "
                       "robust accuracy stops falling): the lower number is the stronger attack, not the defense's "
                       "robustness.")


def attack_comparison(r) -> list[str]:
    """The default attack against an independent full-budget APGD-style loop (attack_comparison.py), paired."""
    st = r["settings"]
    e = st.get("effective", st)  # the runs as they ran on purifiers, where recorded
    budget = (f"default: {e['steps']} iterations x ({e['restarts']} + {e['targeted_restarts']} targeted) runs "
              f"x EOT {st['eot_samples']}, early stop {'on' if st.get('early_stop') else 'off'}; plain loop: EOT "
              f"{st['plain_eot']}, the same maximum number of gradient evaluations")
    rows, verdicts = [], []
    for defense, res in r["results"].items():
        for method in ("default", "plain"):
            scores = [f"{100 * res[method][score]:.1f}" for score in ("all", "majority", "single")]
            mean = res[method].get("per_run_mean")
            scores.append("-" if mean is None else f"{100 * mean:.1f}")
            rows.append([defense, method, *scores, f"{res[method]['mean_gradient_evaluations']:.0f}",
                         f"{res[method]['attack_cpu_s']:.0f}", str(res["num_images"])])
        paired = ", ".join(f"{score}: {v['robust_to_default_broken_by_plain']} vs "
                           f"{v['robust_to_plain_broken_by_default']}" for score, v in res["paired"].items())
        verdict = "not weaker under any score" if res["default_not_weaker"] else "WEAKER under at least one score"
        verdicts.append(f"- {defense}: the default is {verdict}; images robust to one attack but broken by the "
                        f"other (default-robust vs plain-robust): {paired}.")
        if "paired_image_runs" in res:
            pr = res["paired_image_runs"]
            verdicts.append(f"  One run, each of the K runs taken as a one-run trial (the same quantity as run 0 "
                            f"alone, estimated from all the data): image-runs robust to the default but broken by "
                            f"the plain loop vs the reverse: {pr['robust_to_default_broken_by_plain']} vs "
                            f"{pr['robust_to_plain_broken_by_default']} of {pr['image_runs']}.")
    return ["## 7. The default attack against an independent loop", "", *_header(r),
            f"Linf {st['eps']:g}, K = {st['rescore_runs']}, seed {st['seed']}; {budget}. Clean-and-robust "
            f"accuracy (%) on the same held-out images and scoring runs (lower = stronger attack). "
            f"{ATTACK_STUDY_CAVEAT}", "",
            markdown_table(["defense", "attack", "all K", "majority", "one run", "one run, mean of K",
                            "gradient evals / image",
                            "attack CPU-s (all units)", "images"], rows), "", *verdicts,
            "", "(The wall time above is the run that wrote the summary; units computed earlier are read from the "
            "store, and their attack CPU time is the column.)", ""]


def guidance_weight(r) -> list[str]:
    """Which weight of the guidance-target term lowers latent guidance most (guidance_weight.py)."""
    from guidance_weight import markdown_lines

    st = r["settings"]
    e = st.get("effective", st)
    return [f"## {SECTION_TITLES['guidance_weight']}", "", *_header(r),
            f"Latent guidance, Linf {st['eps']:g}, K = {st['rescore_runs']}, seed {st['seed']}; each weight runs "
            f"`apgd-guidance` at {e['steps']} iterations x ({e['restarts']} + {e['targeted_restarts']} targeted) "
            f"runs x EOT {st['eot_samples']}, early stop {'on' if st.get('early_stop') else 'off'}, "
            f"{st.get('selection_runs', 5)} selection runs for the worst case, the term "
            "normalised to the end-to-end gradient's dual norm (weight 0 = plain `apgd`). Clean-and-robust accuracy "
            f"(%) on the same held-out images and scoring runs (lower = stronger attack). {ATTACK_STUDY_CAVEAT}", "",
            *markdown_lines(r["results"]), ""]


def quickstart(r, first=None) -> list[str]:
    """The README's first steps, timed by `benchmarks/time_quickstart.py`: the first success (`agdm info`, then
    `agdm purify --sample`) and the short evaluation. The commands set their own torch threads (`agdm` gives torch
    the idle cores), so the timing script's own thread count is not theirs."""
    lines = ["## 6. The README's first commands", ""]
    for label, result in (("First success", first), ("Short evaluation", r)):
        if result is None:
            lines += [f"{label}: not measured yet (`python benchmarks/time_quickstart.py`).", ""]
            continue
        n, m = result["results"], result["machine"]
        runs = n.get("commands") or [{"command": n["command"], "wall_s": n["wall_s"]}]
        target = (f" (target < {n['target_s']:.0f} s: **{'met' if n['met'] else 'not met'}**)"
                  if "target_s" in n else "")
        lines += [f"### {label}", "", f"Command: `{result['command']}`; {m['cpu_count']} CPU cores, torch "
                  f"{m['torch']}, diffusers-agdm {result['diffusers_agdm_version']}.", "",
                  *(f"- `{run['command']}`: {run['wall_s']:.1f} s wall" for run in runs), "",
                  f"In all, after the install: **{n['wall_s']:.1f} s wall ({n['wall_s'] / 60:.1f} min), "
                  f"{n['cpu_s']:.0f} CPU-s**{target}, exit code {n['exit_code']}, load average "
                  f"{n['load_average_before'][0]:.2f} when it started.", ""]
    return lines


def withdrawn(name: str, why: str) -> list[str]:
    """A section whose committed result was measured by an earlier version of the code: not shown (its numbers and
    its command no longer describe this version), with how to measure it again."""
    return [f"## {SECTION_TITLES[name]}", "", f"**Not shown: `results/{name}.json` was measured by an earlier "
            f"version of this project ({why}); its numbers and its command do not describe this version.** Rerun "
            f"`python benchmarks/{name}.py` to measure it again.", ""]


SECTION_TITLES = {"steps_vs_robustness": "3. Steps against robustness", "robustness_table": "4. The robustness table",
                  "guidance_weight": "8. The guidance-target weight of `apgd-guidance`"}


def campaign(r) -> list[str]:
    """The headline campaign (benchmarks/campaign.py): its study, verdict and table, or what is still missing."""
    from campaign_publish import results_section

    return results_section(r)


def stale_reason(name: str, r) -> str | None:
    """Why a committed result no longer describes the code, or None."""
    if name == "steps_vs_robustness" and "attack" not in r["settings"]:
        return "PGD with float32 cross-entropy on 4 images, and `strength` under the img2img convention"
    if name == "robustness_table" and _is_old_protocol(r):
        return "PGD-10 with float32 cross-entropy, not clean-and-robust; withdrawn, see section 0"
    return None


def _spread_note(seeds) -> str:
    if len(seeds) == 1:
        return f"One seed ({seeds[0]}): each number shows its 95% (Wilson) interval."
    return f"Mean ± sample std over seeds {seeds}."


DEFENSE_NAMES = {"undefended": "undefended classifier", "none": "unguided purification (DiffPure-style)",
                 "pixel": "pixel guidance (GDMP-style)", "latent": "latent guidance (AGDM)",
                 "robust-classifier": "robust classifier (adversarial training)",
                 "latent+robust-classifier": "latent guidance, then the robust classifier"}
README = Path(__file__).resolve().parents[1] / "README.md"
README_START, README_END = "<!-- robustness-table:start -->", "<!-- robustness-table:end -->"


def readme_table(r) -> str:
    """The robustness table in one block for the README: a column per (threat model, attack), clean-and-robust
    accuracy correct in all K runs (one seed: with its 95% interval; several: mean ± std); clean accuracy from the
    first run."""
    runs = _table_runs(r)
    attack_names = {"apgd": "APGD-EOT", "apgd-guidance": "APGD + guidance term", "pgd": "PGD-EOT",
                    "autoattack-rand": "AA-rand", "autoattack-standard": "AA-standard", "worst-case": "worst case"}
    columns = [(entry, attack) for _, entry, attacks in runs for attack in attacks]
    headers = [f"{entry.get('norm', key.split('/')[0])} {attack_names.get(attack, attack)} ({entry['images']} img) %"
               for key, entry, attacks in runs for attack in attacks]
    first = runs[0][1]["results"]
    rows = []
    for defense in first:
        cells = [format_accuracy(first[defense]["clean"]["all"])]
        cells += [format_accuracy(entry["results"].get(defense, {}).get(attack, {}).get("all"))
                  for entry, attack in columns]
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


def convergence_readme_table(r) -> str:
    """The README's headline: per defense, clean accuracy and clean-and-robust accuracy at the largest budget the
    convergence study ran, under the three scores, with the attack named."""
    rows = []
    for tag, by_defense in r["results"].items():
        for defense, result in by_defense.items():
            last, clean, k = result["curve"][-1], result["clean"], result["settings"]["rescore_runs"]
            rows.append([CONVERGENCE_TITLES.get(defense, defense), f"`{tag}`", clean["num_images"],
                         f"{100 * clean['all']:.1f} / {100 * clean['majority']:.1f}",
                         last["gradient_evaluations"],
                         *(f"{100 * last[kind]:.1f}" for kind in SCORE_HEADERS)])
    k = "/".join(sorted({str(res["settings"]["rescore_runs"]) for d in r["results"].values() for res in d.values()}))
    return (markdown_table(["defense", "attack setting", "images", f"clean % (all / majority of {k})",
                            "gradient evaluations / image", f"robust % (all {k})", f"robust % (majority of {k})",
                            "robust % (one run)"], rows) + "\n\n"
            "Linf 0.3 on the first held-out MNIST test images; exact-gradient APGD through the whole defense (see "
            "each row's setting in [benchmarks/RESULTS.md](benchmarks/RESULTS.md), section 0); an image counts as "
            "robust only if it is classified correctly both clean and attacked. These are upper bounds on few "
            "images (CPU), not converged numbers: read the shortfalls in RESULTS.md before quoting them.")


def update_readme(loaded, readme: Path = README) -> None:
    r = loaded.get("attack_convergence")
    table_text = convergence_readme_table(r) if r else readme_table(loaded["robustness_table"])
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write_text(readme, f"{head}{README_START}\n{table_text}\n{README_END}{tail}")
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
    sections = (("campaign", campaign), ("attack_convergence", convergence), ("purification_throughput", throughput),
                ("attack_memory", memory), ("steps_vs_robustness", steps), ("robustness_table", table),
                ("gradient_throughput", gradient_throughput), ("quickstart_time", quickstart),
                ("attack_comparison", attack_comparison), ("guidance_weight", guidance_weight))
    loaded = {name: _load(args.results_dir, name) for name, _ in sections}
    loaded["first_success_time"] = _load(args.results_dir, "first_success_time")
    for name, render in sections:
        r = loaded[name]
        if name == "quickstart_time":
            parts += quickstart(r, loaded["first_success_time"])
        elif r and stale_reason(name, r):
            parts += withdrawn(name, stale_reason(name, r))
        else:
            parts += render(r) if r else [f"## {SECTION_TITLES.get(name, name)}", "",
                                          f"Not measured yet (`python benchmarks/{name}.py`).", ""]
    extra = Path(__file__).resolve().parent / "NOTES.md"
    if extra.is_file():
        parts += [extra.read_text()]
    atomic_write_text(args.output, "\n".join(parts))
    print(f"wrote {args.output}")
    if args.readme.is_file() and (loaded["attack_convergence"] or loaded["robustness_table"]):
        update_readme(loaded, args.readme)


if __name__ == "__main__":
    main()
