"""The robustness table: the undefended classifier, unguided purification (DiffPure-style), pixel guidance
(GDMP-style) and AGDM latent guidance under exact-gradient PGD-EOT and AutoAttack-rand, Linf 0.3 and L2 2.0, on
the held-out MNIST test split, over several seeds, with every sanity check. Long on CPU: run it in the background.

    python benchmarks/robustness_table.py                       # the embedded default, the settings in RESULTS.md
    python benchmarks/robustness_table.py --num_images 256 --seeds 0 1 --autoattack_images 64

Each threat model is one `evaluate` run (same images, seeds, budgets for the four defenses); its full report
(results.json, results.md, plots) goes to outputs/robustness_table/<norm>/, and the combined numbers to
benchmarks/results/robustness_table.json.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, markdown_table, write_results  # noqa: E402

from diffusers_agdm.data import load_labelled_images  # noqa: E402
from diffusers_agdm.evaluation import EvaluationConfig, SanityCheckError, evaluate  # noqa: E402

THREATS = {"Linf": 0.3, "L2": 2.0}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--norms", nargs="+", default=list(THREATS), choices=list(THREATS))
    parser.add_argument("--num_images", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--pgd_steps", type=int, default=20)
    parser.add_argument("--eot_samples", type=int, default=2)
    parser.add_argument("--rescore_runs", type=int, default=3)
    parser.add_argument("--autoattack_images", type=int, default=64,
                        help="AutoAttack-rand runs on the first N images only (0: skip); it costs ~100x PGD")
    parser.add_argument("--autoattack_steps", type=int, default=20)
    parser.add_argument("--autoattack_eot_iter", type=int, default=4)
    parser.add_argument("--sanity_images", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--output_dir", default="outputs/robustness_table")
    args = parser.parse_args(argv)
    started = time.time()
    pipe = load(args.pipeline)
    data = load_labelled_images("mnist", "test")
    numbers, rows = {}, []
    for norm in args.norms:
        runs = [("pgd", data.subset(0, args.num_images), args.sanity_images)]
        if args.autoattack_images:
            runs.append(("autoattack-rand", data.subset(0, args.autoattack_images), 0))
        for attack, subset, sanity in runs:
            config = EvaluationConfig(
                attacks=(attack,), norm=norm, eps=THREATS[norm], pgd_steps=args.pgd_steps,
                eot_samples=args.eot_samples, rescore_runs=args.rescore_runs, seeds=tuple(args.seeds),
                batch_size=args.batch_size, sanity_images=sanity,
                gradient_check=attack == "pgd", autoattack_steps=args.autoattack_steps,
                autoattack_eot_iter=args.autoattack_eot_iter, allow_failed_sanity=True)
            out = Path(args.output_dir) / f"{norm.lower()}-{attack}"
            try:
                result = evaluate(pipe, subset, config, output_dir=out,
                                  pipeline_name=args.pipeline or "embedded default")
            except SanityCheckError as err:  # allow_failed_sanity keeps going; recorded below either way
                result = err.result
            report = result.report
            numbers[f"{norm}/{attack}"] = {"report": str(out / "results.json"), "results": report["results"],
                                           "sanity": [c.to_dict() for c in result.sanity_checks],
                                           "images": len(subset)}
            for defense, by_attack in report["results"].items():
                clean, robust = by_attack["clean"], by_attack[attack]
                rows.append([norm, attack, len(subset), defense,
                             f"{100 * clean['all']['mean']:.1f} ± {100 * clean['all']['std']:.1f}",
                             f"{100 * robust['all']['mean']:.1f} ± {100 * robust['all']['std']:.1f}",
                             f"{100 * robust['majority']['mean']:.1f} ± {100 * robust['majority']['std']:.1f}"])
    print("\n" + markdown_table(["norm", "attack", "images", "defense", "clean % (all K)", "robust % (all K)",
                                 "robust % (majority of K)"], rows))
    write_results("robustness_table", {**vars(args), "pixel_guidance_scale": pipe.config.pixel_guidance_scale},
                  numbers, started)


if __name__ == "__main__":
    main()
