"""
Which weight of the guidance-target term lowers latent guidance most? `apgd-guidance`, exactly as `agdm evaluate`
runs it (its budget, seeds, targeted runs aimed at one class in both terms, the term normalised to the end-to-end
gradient: see `diffusers_agdm.attacks.objective`), at each `--weights` value on the same held-out images of the
embedded default's latent defense; weight 0 is plain `apgd`. Each weight is scored on the same K fresh defense runs,
clean-and-robust (all K / majority / one run), so the weights are compared image by image; the per-image worst case
over all weights is reported too.

Units of `--chunk` images are saved as they finish under `--work_dir/<settings>/` (rerun the same command to
resume); the CPU time left is printed after each; the summary goes to `results/guidance_weight.json`.

    OMP_NUM_THREADS=1 python benchmarks/guidance_weight.py --num_images 32                 # the full run
    OMP_NUM_THREADS=1 python benchmarks/guidance_weight.py --num_images 2 --steps 2 --targeted_restarts 1
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_units import (  # noqa: E402
    SCORES,
    SELECTION,
    AttackBench,
    add_common_arguments,
    check_common_arguments,
    clean_and_robust,
    examples_path,
    image_runs_robust,
    load_examples,
    load_units,
    run_units,
    save_examples,
    unit_path,
)

from common import RESULTS_DIR, markdown_table, write_results  # noqa: E402
from diffusers_agdm.evaluation.aggregation import ImageRecord, choose_worst  # noqa: E402

WORK_DIR = RESULTS_DIR / "guidance_weight"
COMPARISON_DIR = RESULTS_DIR / "attack_comparison"


def weight_key(weight: float) -> str:
    return f"w{weight:g}"


def settings_name(bench: AttackBench) -> str:
    return f"{bench.shape_name()}-k{bench.args.rescore_runs}-seed{bench.args.seed}"


def comparison_unit(bench: AttackBench, start: int, end: int) -> dict | None:
    """Weight 0 is plain `apgd`: the very job (seeds, code, budget, scoring draws) attack_comparison.py runs as its
    "default" on latent guidance. Its saved unit for these images, if there is one, as a unit of this sweep."""
    args = bench.args
    pattern = f"{bench.shape_name()}-plain_eot*-k{args.rescore_runs}-seed{args.seed}/latent-{start:05d}.json"
    for path in sorted(args.comparison_dir.glob(pattern)) if args.comparison_dir.is_dir() else []:
        unit = json.loads(path.read_text())
        # Units saved before they named their pipeline were all measured on the embedded default; units saved
        # before they kept selection records cannot enter the worst case (recomputed here instead).
        if (unit["end"] == end and unit.get("pipeline") == (None if args.pipeline is None else str(args.pipeline))
                and complete(unit["default"], bench.config.selection_runs)):
            return {"weight": 0.0, "start": start, "end": end, "labels": unit["labels"],
                    "clean_correct": unit["clean_correct"],
                    **{k: unit["default"][k] for k in ("correct", *SELECTION, "selection_runs", "gradient_evaluations",
                                                       "forward_evaluations", "attack_cpu_s")},
                    "from": str(path.relative_to(args.comparison_dir))}
    return None


def run_unit(bench: AttackBench, work: Path, weight: float, start: int) -> dict:
    end, images, labels = bench.batch(start)
    saved = unit_path(work, weight_key(weight), start)
    if saved.exists() and examples_path(work, weight_key(weight), start).exists():
        # Only the selection records are missing or on another number of runs: judge the kept images again.
        return json.loads(saved.read_text()) | bench.select(
            "latent", load_examples(work, weight_key(weight), start).to(bench.device), labels, start)
    if weight == 0 and bench.args.comparison_dir is not None and not bench.args.keep_examples:
        reused = comparison_unit(bench, start, end)
        if reused is not None:
            return reused
    config = dataclasses.replace(bench.config, guidance_weight=weight)
    attack = "apgd-guidance" if weight > 0 else "apgd"
    adversarial, cost = bench.default_attack("latent", attack, images, labels, start, config=config)
    unit = {"weight": weight, "start": start, "end": end, "labels": labels.tolist(),
            "clean_correct": bench.score("latent", images, labels, start),
            "correct": bench.score("latent", adversarial, labels, start),
            **bench.select("latent", adversarial, labels, start), **cost}
    if saved.exists():
        # Recomputed (for records or examples it lacked): it must be the same work, to the last scoring run.
        old = json.loads(saved.read_text())
        same_selection = SELECTION if old.get("selection_runs") == unit["selection_runs"] else ()
        if any(old.get(key, unit[key]) != unit[key] for key in ("labels", "clean_correct", "correct",
                                                                *same_selection)):
            raise SystemExit(f"{saved}: recomputing it gave other results; not replacing it")
    if bench.args.keep_examples:
        save_examples(work, weight_key(weight), start, adversarial)
    return unit


def complete(unit: dict, selection_runs: int | None = None) -> bool:
    """A unit can enter the worst case only with its selection records, on `selection_runs` runs when given (units
    without them are recomputed: same seeds, same adversarial images)."""
    return all(key in unit for key in SELECTION) and selection_runs in (None, unit.get("selection_runs"))


def has_examples(work: Path, unit: dict) -> bool:
    return examples_path(work, weight_key(unit["weight"]), unit["start"]).exists()


def selection_study(bench: AttackBench, work: Path, by_weight: dict, runs: list[int]) -> dict:
    """The `worst-case` row beside `apgd` per weight, chosen on `runs` selection runs instead of the evaluation's
    `selection_runs`: does choosing on more draws make the row stronger? Re-judges the kept adversarial images
    (no attack is rerun); the first `selection_runs` draws are the evaluation's own."""
    plain_key = weight_key(0.0)
    keys = [k for k, units in by_weight.items()
            if units and all(has_examples(work, u) for u in units) and k != plain_key]
    if not keys or not by_weight.get(plain_key) or not all(has_examples(work, u) for u in by_weight[plain_key]):
        return {}

    def rejudged(key, n):
        out = []
        for unit in by_weight[key]:
            labels = torch.tensor(unit["labels"], device=bench.device)
            adversarial = load_examples(work, key, unit["start"]).to(bench.device)
            out.append(unit | bench.select("latent", adversarial, labels, unit["start"], runs=n))
        return out

    study = {}
    for n in runs:
        plain = rejudged(plain_key, n)
        study[str(n)] = {}
        for key in keys:
            study[str(n)][key] = worst_case_with_plain(plain, rejudged(key, n))
    return study


def worst_case_with_plain(plain: list[dict], guided: list[dict]) -> dict:
    """`agdm evaluate`'s `worst-case` row over `apgd` (weight 0) and `apgd-guidance` at one weight: per image, the
    example misclassified on more selection runs (`aggregation.choose_worst`, ties to `apgd`), scored on the K
    scoring runs it shares with every weight. Per image, the chosen unit's scoring record."""
    clean, chosen = [], []
    for a, b in zip(plain, guided):
        if (a["start"], a["end"]) != (b["start"], b["end"]):
            raise SystemExit("the weights' units cover different images")
        if a.get("selection_runs") != b.get("selection_runs"):
            raise SystemExit(f"units of [{a['start']}, {a['end']}) were judged on different numbers of selection runs")
        for i in range(a["end"] - a["start"]):
            records = [ImageRecord(correct_runs=0, run0_correct=False, prediction=-1,
                                   selection_wrong=u["selection_wrong"][i], selection_loss=u["selection_loss"][i],
                                   attack=key) for key, u in (("plain", a), ("guided", b))]
            pick = a if choose_worst(records).attack == "plain" else b
            clean.append([run[i] for run in a["clean_correct"]])
            chosen.append([run[i] for run in pick["correct"]])
    # Back to (K, n) matrices, the layout the scoring helpers read.
    scored = score_units([{"clean_correct": list(map(list, zip(*clean))), "correct": list(map(list, zip(*chosen)))}])
    scored.pop("robust")
    return scored


def score_units(units: list[dict]) -> dict:
    """Clean-and-robust fractions (all K / majority / one run / one run as the mean over K) over `units`."""
    robust = {s: [] for s in SCORES}
    for unit in units:
        per_image = clean_and_robust(unit["clean_correct"], unit["correct"])
        for score in SCORES:
            robust[score] += per_image[score]
    n = len(robust["all"])
    image_runs = [v for u in units for v in image_runs_robust(u["clean_correct"], u["correct"])]
    return {score: sum(v) / n for score, v in robust.items()} | {
        "per_run_mean": sum(image_runs) / len(image_runs), "num_images": n, "robust": robust}


def summarize(by_weight: dict) -> dict:
    out, worst = {}, None
    for weight, units in by_weight.items():
        scored = score_units(units)
        robust = scored.pop("robust")
        out[weight] = scored | {
            "mean_gradient_evaluations": sum(sum(u["gradient_evaluations"]) for u in units) / scored["num_images"],
            "attack_cpu_s": round(sum(u["attack_cpu_s"] for u in units), 1)}
        # Units of every weight share their images and scoring draws: robust only if no weight broke the image.
        worst = robust if worst is None else {s: [a and b for a, b in zip(worst[s], robust[s])] for s in SCORES}
    plain = by_weight.get(weight_key(0.0))
    if plain and all(complete(u) for u in plain):
        for weight, units in by_weight.items():
            if weight != weight_key(0.0) and units and all(complete(u) for u in units):
                out[weight]["worst_case_with_apgd"] = worst_case_with_plain(plain, units)
    if out:
        # The strongest weight leaves the fewest images robust by majority (then all K, one run, the per-run mean).
        out["strongest"] = min(out, key=lambda k: rank(out[k]))
        combined = [k for k in out if k != "strongest" and "worst_case_with_apgd" in out[k]]
        if combined:
            # The weight to make the default: the lowest `worst-case` row beside `apgd` (what `agdm evaluate` reports).
            out["strongest_worst_case"] = min(combined, key=lambda k: rank(out[k]["worst_case_with_apgd"]))
    if worst is not None:
        out["worst case over weights"] = {s: sum(v) / len(v) for s, v in worst.items()} | {"num_images": len(
            worst["all"])}
    return out


def rank(scores: dict) -> tuple:
    """Lower = stronger attack: majority first, then all K, one run and the per-run mean."""
    return scores["majority"], scores["all"], scores["single"], scores.get("per_run_mean", 0.0)


def markdown_lines(summary: dict) -> list[str]:
    """The sweep as a table (clean-and-robust %, lower = stronger attack), the worst case beside `apgd` per weight
    and the strongest weight."""
    def cells(s):
        return [*(f"{100 * s[score]:.1f}" for score in SCORES),
                f"{100 * s['per_run_mean']:.1f}" if "per_run_mean" in s else "-"]

    weights = [key for key in summary if key not in ("strongest", "strongest_worst_case", "selection_study")]
    rows = [[key, *cells(s), f"{s['mean_gradient_evaluations']:.0f}" if "mean_gradient_evaluations" in s else "-",
             f"{s['attack_cpu_s']:.0f}" if "attack_cpu_s" in s else "-", str(s["num_images"])]
            for key, s in ((k, summary[k]) for k in weights)]
    lines = [markdown_table(["guidance weight", "all K", "majority", "one run", "one run, mean of K",
                             "gradient evals / image", "attack CPU-s", "images"], rows)]
    if "worst case over weights" in summary:
        lines += ["", "The worst case over weights counts an image robust only if every weight left it correct on the "
                      "same scoring runs: a minimum over those draws, biased towards the attacker (the evaluation's "
                      "`worst-case` row picks one example per image on separate selection runs instead)."]
    combined = [[f"apgd + apgd-guidance {key}", *cells(summary[key]["worst_case_with_apgd"]),
                 str(summary[key]["worst_case_with_apgd"]["num_images"])]
                for key in weights if "worst_case_with_apgd" in summary[key]]
    if combined:
        lines += ["", "The `worst-case` row `agdm evaluate` reports with `--attacks apgd apgd-guidance`, per weight: "
                      "per image, the example misclassified on more of the selection runs (fresh draws, apart from "
                      "the scoring runs), then scored:", "",
                  markdown_table(["worst case over", "all K", "majority", "one run", "one run, mean of K", "images"],
                                 combined)]
    study = summary.get("selection_study") or {}
    if study:
        rows = [[f"apgd + apgd-guidance {key}", n, *cells(row), str(row["num_images"])]
                for n, per_weight in study.items() for key, row in per_weight.items()]
        lines += ["", "The same `worst-case` rows chosen on more selection runs (the kept adversarial images judged "
                      "again; the first runs are the evaluation's own):", "",
                  markdown_table(["worst case over", "selection runs", "all K", "majority", "one run",
                                  "one run, mean of K", "images"], rows)]
    if "strongest" in summary:
        lines += ["", f"Strongest weight alone (fewest images robust by majority, then all K, one run): "
                      f"**{summary['strongest']}**."]
    if "strongest_worst_case" in summary:
        lines += [f"Strongest weight beside `apgd` (lowest `worst-case` row, same order): "
                  f"**{summary['strongest_worst_case']}**."]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, WORK_DIR)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--comparison_dir", type=Path, default=COMPARISON_DIR,
                        help="attack_comparison.py's units: weight 0's are read from there when saved (the same job)")
    parser.add_argument("--no_reuse", dest="comparison_dir", action="store_const", const=None,
                        help="compute weight 0 here even if attack_comparison.py saved it")
    parser.add_argument("--keep_examples", action="store_true",
                        help="keep each unit's adversarial images (safetensors beside it; units without them are "
                             "recomputed and checked to be the same work)")
    parser.add_argument("--selection_study", type=int, nargs="*", default=[],
                        help="also choose the worst case on these numbers of selection runs (kept examples only)")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if any(not w >= 0 for w in args.weights):
        parser.error("--weights must be >= 0")
    if any(n < 1 for n in args.selection_study):
        parser.error("--selection_study must be >= 1")
    if args.results_dir.exists() and not args.results_dir.is_dir():
        parser.error(f"--results_dir {args.results_dir} is not a folder")
    started = time.time()
    bench = AttackBench(args)
    work = args.work_dir / settings_name(bench)
    weights = {weight_key(w): w for w in dict.fromkeys(args.weights)}
    print(f"{bench.budget} gradient evaluations per image at most; units in {work}", flush=True)
    run_units(args, work, list(weights), lambda key, start: run_unit(bench, work, weights[key], start),
              complete=lambda unit: complete(unit, args.selection_runs) and (not args.keep_examples
                                                                            or has_examples(work, unit)))
    by_weight = {key: [u for u in load_units(work, key)
                       if args.start_index <= u["start"] < args.start_index + args.num_images] for key in weights}
    summary = summarize(by_weight)
    if args.selection_study:
        summary["selection_study"] = selection_study(bench, work, by_weight, args.selection_study)
    print("\n".join(markdown_lines(summary)))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["effective"] = bench.effective()  # the runs as they ran on purifiers (`long_runs_on_purifiers`)
    write_results("guidance_weight", settings, summary, started, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
