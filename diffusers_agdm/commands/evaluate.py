"""`agdm evaluate`: clean and robust accuracy of the four defenses, with sanity checks, JSON, markdown and plots.

    agdm evaluate --pipeline path/or/hub-id --dataset_name mnist --split test --num_images 64 --eps 0.3 \\
        --attacks pgd,bpda --output_dir outputs/eval

Under `accelerate launch --multi_gpu --num_processes N -m diffusers_agdm.cli evaluate ...` (`--multi_gpu` on CPUs too:
without it a machine with no GPU gets one process) the images are split between the processes and the result equals
a one-process run with the same seeds.
"""

import argparse
import shlex
import sys

from . import (
    EXIT_OK,
    EXIT_SANITY_FAILED,
    BaseAgdmCLICommand,
    add_num_threads_argument,
    add_pipeline_argument,
    check_pipeline_source,
    load_pipeline,
    set_num_threads,
)


def _split_list(values, cast, option: str) -> tuple:
    """`--x a,b c` -> (a, b, c): lists may be given with commas, spaces or both."""
    items = [item for value in (values or []) for item in str(value).split(",") if item.strip()]
    try:
        return tuple(cast(item.strip()) for item in items)
    except ValueError as err:
        raise ValueError(f"{option}: cannot read {values!r} ({err}).") from err


class EvaluateCommand(BaseAgdmCLICommand):
    name = "evaluate"
    help = "clean and robust accuracy of the four defenses, with sanity checks, JSON, markdown, plots"

    @classmethod
    def register_subcommand(cls, subparsers):
        from ..attacks import LOSSES
        from ..evaluation.config import ATTACKS, CONVERGENCE_AXES, EvaluationConfig
        from ..evaluation.defenses import DEFENSES

        defaults = EvaluationConfig()
        parser = subparsers.add_parser(
            cls.name, help=cls.help,
            description="Robust accuracy of the undefended classifier, unguided purification (DiffPure-style), "
                        "pixel guidance (GDMP-style) and latent guidance (AGDM) on the same images, seeds and "
                        "budgets. Writes results.json, results.md, robust_accuracy_vs_eps.png and examples_grid.png "
                        "to --output_dir and exits with status 1 when a sanity check fails (unless "
                        "--allow_failed_sanity). Several processes, on CPUs or GPUs: accelerate launch --multi_gpu "
                        "--num_processes N -m diffusers_agdm.cli evaluate ... (the same numbers as one process).",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        data = parser.add_argument_group("pipeline and data")
        add_pipeline_argument(data)
        data.add_argument("--dataset_name", default="mnist",
                          help="a built-in (mnist, fashion-mnist, foolbox-mnist, foolbox-fashion-mnist, "
                               "foolbox-cifar10) or a Hub dataset id")
        data.add_argument("--dataset_config_name", default=None, help="the Hub dataset's configuration, if it has "
                          "several")
        data.add_argument("--data_dir", default=None,
                          help="an image folder (class = sub-folder, split = top folder) instead of --dataset_name")
        data.add_argument("--image_column", default="image", help="the Hub dataset's image column")
        data.add_argument("--label_column", default="label", help="the Hub dataset's label column")
        data.add_argument("--split", default="test", help="the split to evaluate (the embedded default was tuned "
                          "on 'validation' and never saw 'test')")
        data.add_argument("--start_index", type=int, default=0, help="first image of the split to evaluate")
        data.add_argument("--num_images", type=int, default=64, help="images to evaluate (0: the whole split)")

        threat = parser.add_argument_group("threat model and attacks")
        threat.add_argument("--norm", default=defaults.norm, choices=("Linf", "L2"), help="the threat model's norm")
        threat.add_argument("--eps", type=float, default=defaults.eps, help="in [0, 1] pixel units (MNIST: Linf 0.3, "
                            "L2 2.0)")
        threat.add_argument("--eps_grid", nargs="*", default=[], help="more eps values for the accuracy-vs-eps plot")
        threat.add_argument("--attacks", nargs="+", default=list(defaults.attacks),
                            help=f"comma-separated, from {', '.join(ATTACKS)}")
        threat.add_argument("--defenses", nargs="+", default=list(defaults.defenses),
                            help=f"comma-separated, from {', '.join(DEFENSES)}")
        threat.add_argument("--steps", type=int, default=defaults.steps,
                            help="iterations of each attack run (apgd, apgd-guidance, pgd, bpda, surrogate)")
        threat.add_argument("--restarts", type=int, default=defaults.restarts, help="untargeted APGD runs per image")
        threat.add_argument("--targeted_restarts", type=int, default=defaults.targeted_restarts,
                            help="APGD runs targeted at the next most likely classes (APGD-T)")
        threat.add_argument("--eot_samples", type=int, default=defaults.eot_samples,
                            help="defense runs averaged per gradient (EOT)")
        threat.add_argument("--eot_batch", type=int, default=defaults.eot_batch,
                            help="EOT draws per model call (default: all at once)")
        threat.add_argument("--loss", default=defaults.loss, choices=LOSSES, help="the loss the attacks ascend")
        threat.add_argument("--step_size", type=float, default=None,
                            help="PGD's fixed step (default: 2.5 * eps / steps; APGD adapts its own)")
        threat.add_argument("--random_start", action=argparse.BooleanOptionalAction, default=defaults.random_start,
                            help="start PGD at a random point of the eps-ball (--no-random_start: at the clean image)")
        threat.add_argument("--guidance_weight", type=float, default=defaults.guidance_weight,
                            help="weight of the guidance-target term of apgd-guidance")
        threat.add_argument("--surrogate_steps", type=int, default=None,
                            help="reverse steps of the surrogate process (default: half the defense's)")
        threat.add_argument("--autoattack_steps", type=int, default=defaults.autoattack_steps,
                            help="AutoAttack's APGD iterations")
        threat.add_argument("--autoattack_eot_iter", type=int, default=defaults.autoattack_eot_iter,
                            help="EOT samples per gradient in AutoAttack's 'rand' version")
        threat.add_argument("--autoattack_square_queries", type=int, default=defaults.autoattack_square_queries,
                            help="queries of AutoAttack's Square attack")
        threat.add_argument("--rescore_runs", type=int, default=defaults.rescore_runs,
                            help="K: fresh defense runs each image is scored over (all K / majority of K)")
        threat.add_argument("--seeds", nargs="+", default=[str(s) for s in defaults.seeds],
                            help="one evaluation per seed; mean and std over seeds")
        threat.add_argument("--seed", type=int, default=None, help="shorthand for --seeds SEED")
        threat.add_argument("--batch_size", type=int, default=defaults.batch_size,
                            help="images per chunk of work (results depend on it, not on the number of processes)")

        purification = parser.add_argument_group("purification (default: the pipeline's config)")
        purification.add_argument("--strength", type=float, default=None, help="t* as a fraction of the schedule")
        purification.add_argument("--num_inference_steps", type=int, default=None, help="reverse steps from t* to 0")
        purification.add_argument("--guidance_scale", type=float, default=None, help="latent (AGDM) guidance scale")
        purification.add_argument("--pixel_guidance_scale", type=float, default=None,
                                  help="pixel (GDMP-style) guidance scale")
        purification.add_argument("--feature_weight", type=float, default=None,
                                  help="weight of the feature-distance term of latent guidance")
        purification.add_argument("--class_guidance", action=argparse.BooleanOptionalAction, default=None,
                                  help="add the guidance network's class term to latent guidance")
        purification.add_argument("--guidance_target", default=None, choices=("diffused", "input"),
                                  help="what the guidance compares each step with: the diffused input at that step "
                                       "or the input itself")

        sanity = parser.add_argument_group("sanity checks")
        sanity.add_argument("--sanity_images", type=int, default=defaults.sanity_images,
                            help="images for the costly checks (convergence, huge eps); 0 skips them")
        sanity.add_argument("--convergence_checks", nargs="*", default=list(defaults.convergence_checks),
                            help=f"budgets doubled to test that the attack converged, from "
                                 f"{', '.join(CONVERGENCE_AXES)} (none: skip)")
        sanity.add_argument("--convergence_tolerance", type=float, default=defaults.convergence_tolerance,
                            help="how far robust accuracy may fall when a budget doubles before the report says "
                                 "'attack not converged'")
        sanity.add_argument("--huge_eps", type=float, default=defaults.huge_eps,
                            help="the Linf eps at which every defense must fall to chance")
        sanity.add_argument("--gradient_check", action=argparse.BooleanOptionalAction, default=defaults.gradient_check,
                            help="compare each defense's gradient with finite differences")
        sanity.add_argument("--allow_failed_sanity", action=argparse.BooleanOptionalAction,
                            default=defaults.allow_failed_sanity,
                            help="exit 0 even when a sanity check fails (the report still says FAILED)")

        output = parser.add_argument_group("output and machine")
        output.add_argument("--output_dir", default="outputs/evaluation",
                            help="folder for results.json, results.md and the plots")
        output.add_argument("--num_examples", type=int, default=defaults.num_examples,
                            help="images shown in examples_grid.png")
        output.add_argument("--progress_bar", action=argparse.BooleanOptionalAction,
                            default=defaults.show_progress_bar, help="show a progress bar")
        output.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=False,
                            help="run on the CPU even when a GPU is present")
        add_num_threads_argument(output)
        parser.set_defaults(func=cls)
        return parser

    def run(self) -> int:
        from ..data import load_labelled_images
        from ..evaluation.runner import SanityCheckError, evaluate, partial_state
        from ..utils.paths import check_output_dir

        args = self.args
        config = config_from_args(args)
        config.validate()  # bad flags fail before anything is loaded
        if args.num_images < 0 or args.start_index < 0:
            raise ValueError("--num_images and --start_index must be >= 0.")
        check_pipeline_source(args.pipeline)
        check_output_dir(args.output_dir)
        set_num_threads(args.num_threads)
        state = partial_state(cpu=args.cpu)
        try:
            data = load_labelled_images(args.dataset_name if args.data_dir is None else None, args.split,
                                        dataset_config_name=args.dataset_config_name, data_dir=args.data_dir,
                                        image_column=args.image_column, label_column=args.label_column)
            data = data.subset(args.start_index, args.num_images or None)
            if len(data) == 0:
                raise ValueError(f"No images to evaluate: the split has none from --start_index {args.start_index}.")
            pipeline = load_pipeline(args.pipeline)
            evaluate(pipeline, data, config, output_dir=args.output_dir,
                     pipeline_name=args.pipeline or "embedded default", command="agdm " + shlex.join(self.argv))
        except SanityCheckError as err:
            if state.is_main_process:
                print(f"\nagdm evaluate: FAILED: {err}", file=sys.stderr)
            return EXIT_SANITY_FAILED
        finally:
            if state.use_distributed:
                state.wait_for_everyone()
                state.destroy_process_group()
        return EXIT_OK


def config_from_args(args):
    """The [`EvaluationConfig`] an `agdm evaluate` command line describes: the one place flags become settings."""
    from ..evaluation.config import EvaluationConfig

    seeds = (args.seed,) if args.seed is not None else _split_list(args.seeds, int, "--seeds")
    return EvaluationConfig(
        attacks=_split_list(args.attacks, str, "--attacks"), defenses=_split_list(args.defenses, str, "--defenses"),
        norm=args.norm, eps=args.eps, eps_grid=_split_list(args.eps_grid, float, "--eps_grid"),
        steps=args.steps, restarts=args.restarts, targeted_restarts=args.targeted_restarts,
        eot_samples=args.eot_samples, eot_batch=args.eot_batch, loss=args.loss, step_size=args.step_size,
        random_start=args.random_start, guidance_weight=args.guidance_weight, surrogate_steps=args.surrogate_steps,
        autoattack_steps=args.autoattack_steps, autoattack_eot_iter=args.autoattack_eot_iter,
        autoattack_square_queries=args.autoattack_square_queries, rescore_runs=args.rescore_runs, seeds=seeds,
        batch_size=args.batch_size, strength=args.strength, num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale, pixel_guidance_scale=args.pixel_guidance_scale,
        feature_weight=args.feature_weight, class_guidance=args.class_guidance, guidance_target=args.guidance_target,
        sanity_images=args.sanity_images,
        convergence_checks=_split_list(args.convergence_checks, str, "--convergence_checks"),
        convergence_tolerance=args.convergence_tolerance, huge_eps=args.huge_eps, gradient_check=args.gradient_check,
        num_examples=args.num_examples, allow_failed_sanity=args.allow_failed_sanity,
        show_progress_bar=args.progress_bar)
