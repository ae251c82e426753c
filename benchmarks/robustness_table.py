"""The robustness table: the undefended classifier, unguided purification (DiffPure-style), pixel guidance
(GDMP-style) and AGDM latent guidance under exact-gradient PGD-EOT and AutoAttack-rand, Linf 0.3 and L2 2.0, on
the held-out MNIST test split, over several seeds, with every sanity check. Long on CPU: run it in the background,
on two processes:

    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no benchmarks/robustness_table.py

Each (threat model, attack) is one `evaluate` run (same images, seeds and budgets for the four defenses); its full
report (results.json, results.md, plots) goes to outputs/robustness_table/<norm>-<attack>/, the combined numbers
to benchmarks/results/robustness_table.json, and each PGD run's image grid to
benchmarks/results/robustness_examples_<norm>.png. A run whose results.json already holds exactly the same
settings, data and defenses is read back instead of recomputed (`--no-reuse` recomputes everything): the Linf
PGD run is the embedded default's card evaluation, made with the `agdm evaluate` command its card records.
"""

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, load, markdown_table, write_results  # noqa: E402

from diffusers_agdm.data import load_labelled_images  # noqa: E402
from diffusers_agdm.evaluation import EvaluationConfig, SanityCheckError, evaluate  # noqa: E402
from diffusers_agdm.evaluation.runner import config_defense_specs, partial_state  # noqa: E402

THREATS = {"Linf": 0.3, "L2": 2.0}
# Presentation-only settings: a stored report that differs only in these still holds the same numbers.
_PRESENTATION = ("show_progress_bar", "allow_failed_sanity", "num_examples")


def _comparable(settings: dict) -> dict:
    """An EvaluationConfig as results.json stores it, without its presentation-only settings."""
    return {k: v for k, v in json.loads(json.dumps(settings)).items() if k not in _PRESENTATION}


def _defenses(pipe, config: EvaluationConfig) -> dict:
    """Each defense's settings resolved against the pipeline, as `evaluate` records them in results.json."""
    return json.loads(json.dumps({spec.name: spec.describe(pipe) for spec in config_defense_specs(pipe, config)}))


def _stored_report(path: Path, config: EvaluationConfig, num_images: int, defenses: dict) -> dict | None:
    """The report at `path` if it was computed with these settings on these images by these defenses, else None."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    stored, wanted = _comparable(report["settings"]["config"]), _comparable(asdict(config))
    differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if report["data"]["num_images"] != num_images:
        differ.append(f"num_images ({report['data']['num_images']} != {num_images})")
    if report["defenses"] != defenses:
        differ.append("the defenses' settings")
    if differ:
        print(f"{path}: recomputing, its settings differ in {', '.join(differ)}")
        return None
    print(f"{path}: same settings, reusing its numbers")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--norms", nargs="+", default=list(THREATS), choices=list(THREATS))
    parser.add_argument("--num_images", type=int, nargs="+", default=[512, 256],
                        help="images attacked by PGD, one value per --norms entry (or one for all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--pgd_steps", type=int, default=10)
    parser.add_argument("--eot_samples", type=int, default=1)
    parser.add_argument("--rescore_runs", type=int, default=3)
    parser.add_argument("--autoattack_images", type=int, default=16,
                        help="AutoAttack-rand runs on the first N images only (0: skip); per image it costs several "
                             "times the PGD run (APGD-CE and APGD-DLR, steps x eot_iter gradients each)")
    parser.add_argument("--autoattack_steps", type=int, default=10)
    parser.add_argument("--autoattack_eot_iter", type=int, default=1)
    parser.add_argument("--sanity_images", type=int, nargs="+", default=[8, 4],
                        help="images of the costly sanity checks in each PGD run, one value per --norms entry (or one "
                             "for all)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                        help="read back a run whose results.json has exactly these settings")
    parser.add_argument("--output_dir", default="outputs/robustness_table")
    args = parser.parse_args(argv)
    per_norm = {}
    for name in ("num_images", "sanity_images"):
        values = getattr(args, name)
        if len(values) not in (1, len(args.norms)):
            parser.error(f"--{name} takes one value or one per norm ({len(args.norms)}), got {len(values)}")
        per_norm[name] = dict(zip(args.norms, values * len(args.norms) if len(values) == 1 else values))
    started = time.time()
    pipe = load(args.pipeline)
    data = load_labelled_images("mnist", "test")
    numbers, rows = {}, []
    for norm in args.norms:
        runs = [("pgd", data.subset(0, per_norm["num_images"][norm]), per_norm["sanity_images"][norm])]
        if args.autoattack_images:
            runs.append(("autoattack-rand", data.subset(0, args.autoattack_images), 0))
        for attack, subset, sanity in runs:
            # AutoAttack's budget only where it runs, so the PGD run's settings equal `agdm evaluate`'s defaults.
            budget = ({"autoattack_steps": args.autoattack_steps, "autoattack_eot_iter": args.autoattack_eot_iter}
                      if attack.startswith("autoattack") else {})
            config = EvaluationConfig(
                attacks=(attack,), norm=norm, eps=THREATS[norm], pgd_steps=args.pgd_steps,
                eot_samples=args.eot_samples, rescore_runs=args.rescore_runs, seeds=tuple(args.seeds),
                batch_size=args.batch_size, sanity_images=sanity, gradient_check=attack == "pgd",
                allow_failed_sanity=True, **budget)
            out = Path(args.output_dir) / f"{norm.lower()}-{attack}"
            report = (_stored_report(out / "results.json", config, len(subset), _defenses(pipe, config))
                      if args.reuse else None)
            if report is None:
                try:
                    result = evaluate(pipe, subset, config, output_dir=out,
                                      pipeline_name=args.pipeline or "embedded default")
                except SanityCheckError as err:  # allow_failed_sanity keeps going; recorded below either way
                    result = err.result
                report = result.report
            numbers[f"{norm}/{attack}"] = {"report": str(out / "results.json"), "results": report["results"],
                                           "sanity": report["sanity_checks"], "sanity_passed": report["sanity_passed"],
                                           "images": len(subset), "wall_time_s": report["run"]["wall_time_s"],
                                           "command": report["run"]["command"]}
            for defense, by_attack in report["results"].items():
                clean, robust = by_attack["clean"], by_attack[attack]
                rows.append([norm, attack, len(subset), defense,
                             f"{100 * clean['all']['mean']:.1f} ± {100 * clean['all']['std']:.1f}",
                             f"{100 * robust['all']['mean']:.1f} ± {100 * robust['all']['std']:.1f}",
                             f"{100 * robust['majority']['mean']:.1f} ± {100 * robust['majority']['std']:.1f}"])
    if partial_state().is_main_process:
        for norm in args.norms:  # one picture per threat model beside the committed numbers, for the README
            grid = Path(args.output_dir) / f"{norm.lower()}-pgd" / "examples_grid.png"
            if grid.is_file():
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(grid, RESULTS_DIR / f"robustness_examples_{norm.lower()}.png")
        print("\n" + markdown_table(["norm", "attack", "images", "defense", "clean % (all K)", "robust % (all K)",
                                     "robust % (majority of K)"], rows))
        write_results("robustness_table", {**vars(args), "pixel_guidance_scale": pipe.config.pixel_guidance_scale},
                      numbers, started)


if __name__ == "__main__":
    main()
