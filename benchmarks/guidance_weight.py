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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_units import (  # noqa: E402
    SCORES,
    AttackBench,
    add_common_arguments,
    check_common_arguments,
    clean_and_robust,
    image_runs_robust,
    load_units,
    run_units,
)

from common import RESULTS_DIR, markdown_table, write_results  # noqa: E402

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
        # Units saved before they named their pipeline were all measured on the embedded default.
        if unit["end"] == end and unit.get("pipeline") == (None if args.pipeline is None else str(args.pipeline)):
            return {"weight": 0.0, "start": start, "end": end, "labels": unit["labels"],
                    "clean_correct": unit["clean_correct"], "correct": unit["default"]["correct"],
                    **{k: unit["default"][k] for k in ("gradient_evaluations", "forward_evaluations", "attack_cpu_s")},
                    "from": str(path.relative_to(args.comparison_dir))}
    return None


def run_unit(bench: AttackBench, weight: float, start: int) -> dict:
    end, images, labels = bench.batch(start)
    if weight == 0 and bench.args.comparison_dir is not None:
        reused = comparison_unit(bench, start, end)
        if reused is not None:
            return reused
    config = dataclasses.replace(bench.config, guidance_weight=weight)
    attack = "apgd-guidance" if weight > 0 else "apgd"
    adversarial, cost = bench.default_attack("latent", attack, images, labels, start, config=config)
    return {"weight": weight, "start": start, "end": end, "labels": labels.tolist(),
            "clean_correct": bench.score("latent", images, labels, start),
            "correct": bench.score("latent", adversarial, labels, start), **cost}


def summarize(by_weight: dict) -> dict:
    out, worst = {}, None
    for weight, units in by_weight.items():
        robust = {s: [] for s in SCORES}
        for unit in units:
            per_image = clean_and_robust(unit["clean_correct"], unit["correct"])
            for score in SCORES:
                robust[score] += per_image[score]
        n = len(robust["all"])
        image_runs = [v for u in units for v in image_runs_robust(u["clean_correct"], u["correct"])]
        out[weight] = {score: sum(v) / n for score, v in robust.items()} | {
            "per_run_mean": sum(image_runs) / len(image_runs), "num_images": n,
            "mean_gradient_evaluations": sum(sum(u["gradient_evaluations"]) for u in units) / n,
            "attack_cpu_s": round(sum(u["attack_cpu_s"] for u in units), 1)}
        # Units of every weight share their images and scoring draws: robust only if no weight broke the image.
        worst = robust if worst is None else {s: [a and b for a, b in zip(worst[s], robust[s])] for s in SCORES}
    if out:
        # The strongest weight leaves the fewest images robust by majority (then all K, one run, the per-run mean).
        out["strongest"] = min(out, key=lambda k: (out[k]["majority"], out[k]["all"], out[k]["single"],
                                                   out[k]["per_run_mean"]))
    if worst is not None:
        out["worst case over weights"] = {s: sum(v) / len(v) for s, v in worst.items()} | {"num_images": len(
            worst["all"])}
    return out


def markdown_lines(summary: dict) -> list[str]:
    """The sweep as a table (clean-and-robust %, lower = stronger attack) and the strongest weight."""
    rows = [[key, *(f"{100 * s[score]:.1f}" for score in SCORES),
             f"{100 * s['per_run_mean']:.1f}" if "per_run_mean" in s else "-",
             f"{s['mean_gradient_evaluations']:.0f}" if "mean_gradient_evaluations" in s else "-",
             f"{s['attack_cpu_s']:.0f}" if "attack_cpu_s" in s else "-", str(s["num_images"])]
            for key, s in summary.items() if key != "strongest"]
    lines = [markdown_table(["guidance weight", "all K", "majority", "one run", "one run, mean of K",
                             "gradient evals / image", "attack CPU-s", "images"], rows)]
    if "worst case over weights" in summary:
        lines += ["", "The worst case over weights counts an image robust only if every weight left it correct on the "
                      "same scoring runs: a minimum over those draws, biased towards the attacker (the evaluation's "
                      "`worst-case` row picks one example per image on separate selection runs instead)."]
    if "strongest" in summary:
        lines += ["", f"Strongest weight (fewest images robust by majority, then all K, one run): "
                      f"**{summary['strongest']}**."]
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
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if any(not w >= 0 for w in args.weights):
        parser.error("--weights must be >= 0")
    if args.results_dir.exists() and not args.results_dir.is_dir():
        parser.error(f"--results_dir {args.results_dir} is not a folder")
    started = time.time()
    bench = AttackBench(args)
    work = args.work_dir / settings_name(bench)
    weights = {weight_key(w): w for w in dict.fromkeys(args.weights)}
    print(f"{bench.budget} gradient evaluations per image at most; units in {work}", flush=True)
    run_units(args, work, list(weights), lambda key, start: run_unit(bench, weights[key], start))
    summary = summarize({key: [u for u in load_units(work, key)
                               if args.start_index <= u["start"] < args.start_index + args.num_images]
                         for key in weights})
    print("\n".join(markdown_lines(summary)))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["effective"] = bench.effective()  # the runs as they ran on purifiers (`long_runs_on_purifiers`)
    write_results("guidance_weight", settings, summary, started, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
