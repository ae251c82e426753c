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
from dataclasses import fields

from ..settings_table import add_purification_arguments
from ..utils.flags import HelpFormatter, add_dataclass_arguments, dataclass_from_args
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


class EvaluateCommand(BaseAgdmCLICommand):
    name = "evaluate"
    help = "clean and robust accuracy of the four defenses, with sanity checks, JSON, markdown, plots"

    @classmethod
    def register_subcommand(cls, subparsers):
        from ..evaluation.config import EvaluationConfig

        parser = subparsers.add_parser(
            cls.name, help=cls.help,
            description="Robust accuracy of the undefended classifier, unguided purification (DiffPure-style), "
                        "pixel guidance (GDMP-style) and latent guidance (AGDM) on the same images, seeds and "
                        "budgets. Writes results.json, results.md, robust_accuracy_vs_eps.png and examples_grid.png "
                        "to --output_dir and exits with status 1 when a sanity check fails (unless "
                        "--allow_failed_sanity). Several processes, on CPUs or GPUs: accelerate launch --multi_gpu "
                        "--num_processes N -m diffusers_agdm.cli evaluate ... (the same numbers as one process).",
            formatter_class=HelpFormatter, allow_abbrev=False)
        data = parser.add_argument_group("pipeline and data")
        add_pipeline_argument(data)
        data.add_argument("--dataset_name", default="mnist",
                          help="a built-in (mnist, fashion-mnist, foolbox-mnist, foolbox-fashion-mnist, "
                               "foolbox-cifar10) or a Hub dataset id")
        data.add_argument("--dataset_config_name", default=None, help="the Hub dataset's configuration, if it has "
                          "several")
        data.add_argument("--train_data_dir", "--data_dir", dest="data_dir", default=None,
                          help="an image folder (class = sub-folder, split = top folder) instead of --dataset_name")
        data.add_argument("--image_column", default="image", help="the Hub dataset's image column")
        data.add_argument("--label_column", default="label", help="the Hub dataset's label column")
        data.add_argument("--split", default="test", help="the split to evaluate (the embedded default was tuned "
                          "on 'validation' and never saw 'test')")
        data.add_argument("--start_index", type=int, default=0, help="first image of the split to evaluate")
        data.add_argument("--num_images", type=int, default=64, help="images to evaluate (0: the whole split)")

        # Every EvaluationConfig field is a flag, generated from the field (type, default, metadata["help"]); the
        # purification settings' flags come from the settings table.
        groups = {"threat": parser.add_argument_group("threat model and attacks"),
                  "purification": parser.add_argument_group("purification (default: the pipeline's config)"),
                  "sanity": parser.add_argument_group("sanity checks"),
                  "output": parser.add_argument_group("output and machine")}
        purification = [f.name for f in fields(EvaluationConfig) if f.metadata.get("purification")]
        add_dataclass_arguments(parser, EvaluationConfig, skip=purification, groups=groups)
        add_purification_arguments(groups["purification"], purification)
        output = groups["output"]
        output.add_argument("--output_dir", default="outputs/evaluation",
                            help="folder for results.json, results.md and the plots")
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
    """The [`EvaluationConfig`] an `agdm evaluate` command line describes: every field from its generated flag."""
    from ..evaluation.config import EvaluationConfig

    return dataclass_from_args(EvaluationConfig, args)
