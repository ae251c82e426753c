"""The robustness table: the undefended classifier, the adversarial-training baseline (the pipeline's guidance
network used as the classifier), unguided purification (DiffPure-style), pixel guidance (GDMP-style), AGDM latent
guidance and latent guidance classified by the robust network, under exact-gradient APGD-EOT (margin loss, with the
guidance-target attack as its own row), the per-image worst case over those attacks, AutoAttack-rand and (on the two
deterministic classifiers) AutoAttack-standard, Linf 0.3 and L2 2.0, on the held-out MNIST test split, with every
sanity check. Every image is scored over K fresh defense runs and counts as robust only if it is clean-correct too
("all K", "majority of K", one run); one seed shows its 95% interval, several seeds mean ± std. Long on CPU: run it
in the background, on two processes:

    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no benchmarks/robustness_table.py

Each threat model is one `evaluate` run of --attacks (same images, seeds and budgets for every defense), one of
AutoAttack-rand on the first --autoattack_images images and one of AutoAttack-standard on the undefended and the
robust classifier (deterministic, so the standard version applies) on the same images; each full report
(results.json, results.md, plots) goes to <output_dir>/<norm>[-autoattack-rand|-autoattack-standard]/, the combined
numbers to <results_dir>/robustness_table.json, and each main run's image grid to
<results_dir>/robustness_examples_<norm>.png. `evaluate` saves every finished unit of work under its output folder,
so rerunning the same command resumes an interrupted run and recomputes nothing that is done (`--no-resume`
recomputes everything).
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, load, markdown_table, write_results  # noqa: E402
from diffusers_agdm.attacks import LOSSES  # noqa: E402
from diffusers_agdm.data import load_labelled_images  # noqa: E402
from diffusers_agdm.evaluation import (  # noqa: E402
    ATTACK_SPECS,
    ATTACKS,
    CONVERGENCE_AXES,
    SCORES,
    WORST_CASE,
    EvaluationConfig,
    SanityCheckError,
    evaluate,
)
from diffusers_agdm.evaluation.report import format_accuracy  # noqa: E402
from diffusers_agdm.evaluation.runner import partial_state  # noqa: E402

THREATS = {"Linf": 0.3, "L2": 2.0}
# AutoAttack 'standard' is for deterministic models: the undefended and the adversarially trained classifier.
DETERMINISTIC = ("undefended", "robust-classifier")
DEFAULTS = EvaluationConfig()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None, help="pipeline folder or Hub id (default: the embedded default)")
    parser.add_argument("--norms", nargs="+", default=list(THREATS), choices=list(THREATS))
    parser.add_argument("--num_images", type=int, nargs="+", default=[512, 256],
                        help="images attacked by --attacks, one value per --norms entry (or one for all)")
    parser.add_argument("--attacks", nargs="+", default=["apgd", "apgd-guidance"],
                        choices=[a for a in ATTACKS if ATTACK_SPECS[a].family != "autoattack"],
                        help="the exact-gradient attacks of the main run (apgd-guidance: latent guidance only)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one evaluation per seed (one seed: the tables show its 95%% interval)")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps)
    parser.add_argument("--restarts", type=int, default=DEFAULTS.restarts)
    parser.add_argument("--targeted_restarts", type=int, default=DEFAULTS.targeted_restarts)
    parser.add_argument("--eot_samples", type=int, default=DEFAULTS.eot_samples)
    parser.add_argument("--loss", default=DEFAULTS.loss, choices=LOSSES)
    parser.add_argument("--rescore_runs", type=int, default=DEFAULTS.rescore_runs, help="K")
    parser.add_argument("--autoattack_images", type=int, default=16,
                        help="AutoAttack-rand runs on the first N images only (0: skip); per image it costs several "
                             "times the APGD run (APGD-CE and APGD-DLR, steps x eot_iter gradients each)")
    parser.add_argument("--autoattack_steps", type=int, default=DEFAULTS.autoattack_steps)
    parser.add_argument("--autoattack_eot_iter", type=int, default=DEFAULTS.autoattack_eot_iter)
    parser.add_argument("--sanity_images", type=int, nargs="+", default=[DEFAULTS.sanity_images],
                        help="images of the costly sanity checks (convergence, huge eps) in each main run, one value "
                             "per --norms entry (or one for all)")
    parser.add_argument("--convergence_checks", nargs="*", default=list(DEFAULTS.convergence_checks),
                        choices=CONVERGENCE_AXES, help="budgets doubled to test convergence")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse the finished units of an earlier run of the same settings in --output_dir")
    parser.add_argument("--output_dir", default="outputs/robustness_table", help="the full reports and progress")
    parser.add_argument("--results_dir", default=str(RESULTS_DIR),
                        help="where robustness_table.json and the example grids go")
    args = parser.parse_args(argv)
    args.per_norm = {}
    for name in ("num_images", "sanity_images"):
        values = getattr(args, name)
        if len(values) not in (1, len(args.norms)):
            parser.error(f"--{name} takes one value or one per norm ({len(args.norms)}), got {len(values)}")
        args.per_norm[name] = dict(zip(args.norms, values * len(args.norms) if len(values) == 1 else values))
    try:  # every setting checked before the pipeline and the data are loaded
        if args.autoattack_images < 0 or any(n < 1 for n in args.num_images):
            raise ValueError(f"--num_images must be >= 1 and --autoattack_images >= 0, got {args.num_images} and "
                             f"{args.autoattack_images}.")
        for norm, attacks, _, sanity in planned_runs(args):
            run_config(args, norm, attacks, sanity)
    except ValueError as err:
        parser.error(str(err))
    return args


def planned_runs(args) -> list[tuple[str, tuple[str, ...], int, int]]:
    """(norm, attacks, images, sanity images) of every `evaluate` run, in order."""
    runs = []
    for norm in args.norms:
        runs.append((norm, tuple(args.attacks), args.per_norm["num_images"][norm],
                     args.per_norm["sanity_images"][norm]))
        if args.autoattack_images:
            runs.append((norm, ("autoattack-rand",), args.autoattack_images, 0))
            runs.append((norm, ("autoattack-standard",), args.autoattack_images, 0))
    return runs


def run_config(args, norm: str, attacks: tuple[str, ...], sanity_images: int) -> EvaluationConfig:
    """The `agdm evaluate` settings of one run. AutoAttack's budget only where it runs, so the main run's settings
    equal `agdm evaluate`'s with the same flags."""
    autoattack = ATTACK_SPECS[attacks[0]].family == "autoattack"
    budget = ({"autoattack_steps": args.autoattack_steps, "autoattack_eot_iter": args.autoattack_eot_iter}
              if autoattack else {})
    if attacks == ("autoattack-standard",):
        budget["defenses"] = DETERMINISTIC
    return DEFAULTS.replace(
        attacks=attacks, norm=norm, eps=THREATS[norm], steps=args.steps, restarts=args.restarts,
        targeted_restarts=args.targeted_restarts, eot_samples=args.eot_samples, loss=args.loss,
        rescore_runs=args.rescore_runs, seeds=tuple(args.seeds), batch_size=args.batch_size,
        sanity_images=sanity_images, convergence_checks=tuple(args.convergence_checks),
        gradient_check=not autoattack, allow_failed_sanity=True, **budget)


def run_folder(args, norm: str, attacks: tuple[str, ...]) -> Path:
    suffix = f"-{attacks[0]}" if ATTACK_SPECS[attacks[0]].family == "autoattack" else ""
    return Path(args.output_dir) / f"{norm.lower()}{suffix}"


def table_rows(norm: str, images: int, report: dict) -> list[list]:
    """One row per (defense, attack), and per defense the worst case over its attacks: clean and clean-and-robust
    accuracy under the three scores, formatted by the evaluation's own formatter (one seed: its 95% interval); an
    attack that does not apply to a defense is left out."""
    rows = []
    for defense, by_attack in report["results"].items():
        for attack in list(report["settings"]["attacks"]) + [WORST_CASE]:
            if by_attack.get(attack) is None:
                continue
            rows.append([norm, attack, images, defense, format_accuracy(by_attack["clean"]["all"]),
                         *(format_accuracy(by_attack[attack].get(kind)) for kind in SCORES)])
    return rows


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    pipe = load(args.pipeline)
    data = load_labelled_images("mnist", "test")
    numbers, rows = {}, []
    for norm, attacks, images, sanity in planned_runs(args):
        config = run_config(args, norm, attacks, sanity)
        subset = data.subset(0, images)
        out = run_folder(args, norm, attacks)
        try:  # a rerun with the same output folder resumes: finished units are read back, not recomputed
            result = evaluate(pipe, subset, config, output_dir=out, resume=args.resume,
                              pipeline_name=args.pipeline or "embedded default")
        except SanityCheckError as err:  # allow_failed_sanity keeps going; recorded below either way
            result = err.result
        report = result.report
        numbers[f"{norm}/{'+'.join(attacks)}"] = {
            "report": str(out / "results.json"), "norm": norm, "eps": THREATS[norm], "attacks": list(attacks),
            "results": report["results"], "attack": report["settings"]["attack"],
            "rescore_runs": report["settings"]["rescore_runs"], "robust_rule": report["settings"]["robust_rule"],
            "seeds": report["settings"]["seeds"], "sanity": report["sanity_checks"],
            "sanity_passed": report["sanity_passed"], "images": len(subset),
            "wall_time_s": report["run"]["wall_time_s"], "command": report["run"]["command"],
            # Compute seconds of every unit, also those a resumed run read back from an earlier process.
            "compute_s": sum(sum(by_job.values()) for by_job in report["run"]["seconds_per_job"].values())}
        rows += table_rows(norm, len(subset), report)
    if partial_state().is_main_process:
        results_dir = Path(args.results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        for norm in args.norms:  # one picture per threat model beside the committed numbers, for the README
            grid = run_folder(args, norm, tuple(args.attacks)) / "examples_grid.png"
            if grid.is_file():
                shutil.copyfile(grid, results_dir / f"robustness_examples_{norm.lower()}.png")
        k = args.rescore_runs
        print("\n" + markdown_table(["norm", "attack", "images", "defense", f"clean % (all {k})",
                                     f"robust % (all {k})", f"robust % (majority of {k})", "robust % (one run)"],
                                    rows))
        settings = {k: v for k, v in vars(args).items() if k != "per_norm"}
        write_results("robustness_table", {**settings, "pixel_guidance_scale": pipe.config.pixel_guidance_scale},
                      numbers, started, results_dir=results_dir)


if __name__ == "__main__":
    main()
