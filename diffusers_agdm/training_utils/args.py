"""Command-line arguments shared by `training/train_diffusion.py`, `train_classifier.py` and `train_guidance.py`,
named as in Diffusers' own training examples."""

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from diffusers.optimization import SchedulerType

from ..data.datasets import BUILTIN_DATASETS, is_test_split
from ..utils.paths import check_output_dir
from .argtypes import check_existing_dir, finite, int_at_least
from .checkpoints import check_exact_resume, check_same_run, find_checkpoints, resolve_resume

# The built-ins' held-out splits are for evaluation only; no training script may read them, even with
# --allow_test_split (this project's own reported numbers are measured on them).
FORBIDDEN_TRAINING_SPLITS = {"mnist": {"validation", "test", "heldout"}}


def parse_training_args(parser: argparse.ArgumentParser, argv: list[str] | None, script: str,
                        check: Callable[[argparse.Namespace], None] | None = None) -> argparse.Namespace:
    """Parse and check every argument, path and output location (the script's own `check` too) before any model is
    loaded: a problem ends the script with one line and exit status 2. Remember how the script was called so the
    model card can record the command."""
    args = parser.parse_args(argv)
    args.script = Path(script).name  # (a resume checks it is the same script's checkpoint)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_training_args(args)
        if check is not None:
            check(args)
    except ValueError as err:
        parser.error(str(err))
    return args


def check_training_args(args: argparse.Namespace) -> None:
    """The checks every training script shares (raise `ValueError`): where the output goes, the data source, and the
    checkpoint to resume from."""
    check_output_dir(args.output_dir, "--output_dir", create=False)
    check_report_to(args.report_to)
    if hasattr(args, "dataset_name"):
        check_data_args(args)
    previous, _ = find_checkpoints(args.output_dir)
    if previous and not args.resume_from_checkpoint and not getattr(args, "overwrite_output_dir", False):
        raise ValueError(f"--output_dir {args.output_dir} already holds checkpoints of a run ({previous[-1].name}); "
                         "pass --resume_from_checkpoint latest to continue it, --overwrite_output_dir to start over "
                         "(its checkpoints are deleted), or choose another --output_dir.")
    if args.resume_from_checkpoint:
        checkpoint = resolve_resume(args.resume_from_checkpoint, args.output_dir, announce=lambda _: None)
        if checkpoint is not None and not args.allow_inexact_resume:  # (with it, the loop warns when it resumes)
            check_exact_resume(checkpoint, int(os.environ.get("WORLD_SIZE", "1")), allow_inexact=False)
        if checkpoint is not None:
            check_same_run(checkpoint, args)


def check_report_to(report_to: str) -> None:
    """The tracker exists and is installed (accelerate would fail only once the model is built)."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    if report_to not in (*available, "all", "none"):
        raise ValueError(f"--report_to must be one of {', '.join([*available, 'all', 'none'])}, got {report_to!r}.")
    if report_to in available and not available[report_to]():  # ("all" means all installed ones)
        raise ValueError(f"--report_to {report_to}: {report_to} is not installed (pip install {report_to}), or pass "
                         "--report_to none.")


def check_data_args(args: argparse.Namespace) -> None:
    """The data flags of `add_data_args`: one source, only the options that apply to it, and no test split unless
    asked for. Fills `--dataset_name`'s default when no image folder is given."""
    if args.train_data_dir is not None:
        if args.dataset_name is not None:
            raise ValueError(f"Give --dataset_name or --train_data_dir, not both (got {args.dataset_name!r} and "
                             f"{args.train_data_dir!r}).")
        check_existing_dir("--train_data_dir", args.train_data_dir)
    elif args.dataset_name is None:
        args.dataset_name = getattr(args, "default_dataset_name", None)
        if args.dataset_name is None:
            raise ValueError("Give --dataset_name (a built-in or a Hub dataset id) or --train_data_dir.")
    if args.train_data_dir is None and args.dataset_name in BUILTIN_DATASETS:
        given = [flag for flag, value in (("--image_column", args.image_column), ("--label_column", args.label_column),
                                          ("--dataset_config_name", args.dataset_config_name),
                                          ("--cache_dir", args.cache_dir)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to the built-in "
                             f"dataset {args.dataset_name!r} (its columns and files are fixed); leave "
                             f"{'it' if len(given) == 1 else 'them'} out.")
    if args.train_data_dir is not None and (args.dataset_config_name is not None or args.cache_dir is not None):
        raise ValueError("--dataset_config_name and --cache_dir apply to Hub datasets, not to --train_data_dir.")
    held_out = FORBIDDEN_TRAINING_SPLITS.get(args.dataset_name, set()) if args.train_data_dir is None else set()
    if args.split.split("[")[0] in held_out:
        raise ValueError(f"The {args.split!r} split of {args.dataset_name} is held out for evaluation; training "
                         "scripts may only read 'train'.")
    allowed = getattr(args, "allow_test_split", False)
    if is_test_split(args.dataset_name, args.split, args.train_data_dir) and not allowed:
        source = args.train_data_dir or args.dataset_name
        raise ValueError(f"The {args.split!r} split of {source} holds test images; training on them makes every test "
                         "number meaningless. Pass --allow_test_split if that is really what you want.")


def dataset_label(args: argparse.Namespace) -> str:
    return "imagefolder" if args.train_data_dir else args.dataset_name


def add_training_args(parser: argparse.ArgumentParser, *, batch_size: int = 64, max_train_steps: int = 1000,
                      learning_rate: float = 1e-3, use_ema: bool = True, checkpointing_steps: int = 500) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", type=str, required=True, help="Where the result and the checkpoints go.")
    g.add_argument("--seed", type=int_at_least(0), default=0,
                   help="Seed of every random draw; same seed, same result on CPU.")
    g.add_argument("--train_batch_size", type=int_at_least(1), default=batch_size, help="Batch size per process.")
    g.add_argument("--max_train_steps", type=int_at_least(1), default=max_train_steps,
                   help="Optimizer steps in total.")
    g.add_argument("--gradient_accumulation_steps", type=int_at_least(1), default=1,
                   help="Batches whose gradients are summed per optimizer step.")
    g.add_argument("--learning_rate", type=finite(0, inclusive_min=False), default=learning_rate,
                   help="Peak learning rate of AdamW.")
    g.add_argument("--lr_scheduler", type=str, default="cosine", choices=[t.value for t in SchedulerType],
                   help='From diffusers.optimization: "linear", "cosine", "constant", "constant_with_warmup", ...')
    g.add_argument("--lr_warmup_steps", type=int_at_least(0), default=50,
                   help="Steps of linear warm-up before the schedule.")
    g.add_argument("--adam_beta1", type=finite(0, 1), default=0.9, help="AdamW's beta1.")
    g.add_argument("--adam_beta2", type=finite(0, 1), default=0.999, help="AdamW's beta2.")
    g.add_argument("--adam_weight_decay", type=finite(0), default=1e-4, help="AdamW's weight decay.")
    g.add_argument("--adam_epsilon", type=finite(0, inclusive_min=False), default=1e-8, help="AdamW's epsilon.")
    g.add_argument("--max_grad_norm", type=finite(0), default=1.0, help="Gradients are clipped to this norm.")
    g.add_argument("--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"],
                   help="accelerate's mixed precision (GPU only).")
    g.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=use_ema,
                   help="Keep an exponential moving average of the weights; the saved model uses it.")
    g.add_argument("--ema_inv_gamma", type=finite(0, inclusive_min=False), default=1.0,
                   help="inv_gamma of Diffusers' EMAModel warm-up.")
    g.add_argument("--ema_power", type=finite(0, inclusive_min=False), default=3 / 4,
                   help="power of Diffusers' EMAModel warm-up.")
    g.add_argument("--ema_max_decay", type=finite(0, 1), default=0.999, help="Largest EMA decay.")
    g.add_argument("--checkpointing_steps", type=int_at_least(1), default=checkpointing_steps,
                   help="Save the full training state (accelerate `save_state`) every N steps.")
    g.add_argument("--checkpoints_total_limit", type=int_at_least(1), default=2,
                   help="Keep at most this many checkpoints.")
    g.add_argument("--resume_from_checkpoint", type=str, default=None,
                   help='A checkpoint folder, or "latest" for the newest complete one in --output_dir.')
    g.add_argument("--allow_inexact_resume", action="store_true",
                   help="Resume even when a checkpoint's RNG states are missing or unreadable (or the number of "
                        "processes changed); the run then continues with a loud warning that it is no longer exact. "
                        "Without it, that is an error.")
    g.add_argument("--allow_changed_args", action="store_true",
                   help="Resume with settings that change what is trained (learning rate or schedule, seed, batch "
                        "size, loss weights, ...): the new values apply from the checkpoint on and the change is "
                        "recorded in the model card. Without it, such a resume is an error naming the flags.")
    g.add_argument("--overwrite_output_dir", action="store_true",
                   help="Start a new run in an --output_dir that holds checkpoints of an earlier one, deleting them "
                        "(refused otherwise, so that forgetting --resume_from_checkpoint never loses a run).")
    g.add_argument("--stop_after_steps", type=int_at_least(1), default=None,
                   help="End this invocation once the run reaches this step, after saving a checkpoint (for jobs "
                        "with a time limit); continue later with --resume_from_checkpoint latest.")
    g.add_argument("--report_to", type=str, default="tensorboard",
                   help='"tensorboard", "wandb", "all" or "none" (logs go to <output_dir>/logs).')
    g.add_argument("--logging_dir", type=str, default="logs", help="Tracker logs, inside --output_dir.")
    g.add_argument("--log_steps", type=int_at_least(1), default=10, help="Log the loss every N steps.")
    g.add_argument("--eval_steps", type=int_at_least(0), default=200,
                   help="Measure held-out metrics every N steps (0: only at the end).")
    g.add_argument("--image_log_steps", type=int_at_least(0), default=500,
                   help="Log an image grid every N steps (0: never).")
    g.add_argument("--dataloader_num_workers", type=int_at_least(0), default=0,
                   help="Worker processes loading data (0: the main process).")


def add_data_args(parser: argparse.ArgumentParser, *, default_dataset: str | None = "mnist",
                  eval_samples: int = 0) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", type=str, default=None,
                   help=f'A built-in ("mnist", "fashion-mnist", ...) or a Hub dataset id (default: {default_dataset}, '
                        'unless --train_data_dir is given).')
    g.set_defaults(default_dataset_name=default_dataset)
    g.add_argument("--dataset_config_name", type=str, default=None, help="The Hub dataset's configuration.")
    g.add_argument("--train_data_dir", type=str, default=None, help="An image folder (class = sub-folder).")
    g.add_argument("--image_column", type=str, default=None,
                   help='The Hub dataset\'s image column (default "image"); not for built-ins.')
    g.add_argument("--label_column", type=str, default=None,
                   help='The Hub dataset\'s label column (default "label"); not for built-ins.')
    g.add_argument("--split", type=str, default="train", help="The split trained on.")
    g.add_argument("--allow_test_split", action="store_true",
                   help="Allow training on a split that holds test images (a 'test' split, foolbox-*); refused "
                        "otherwise.")
    g.add_argument("--max_train_samples", type=int_at_least(1), default=None,
                   help="Use only the first N training images.")
    g.add_argument("--eval_samples", type=int_at_least(0), default=eval_samples,
                   help="Images set aside from the END of the training split to measure progress on; never trained "
                        "on. (The dataset's own held-out split is never read by a training script.)")
    g.add_argument("--cache_dir", type=str, default=None, help="Where Hub datasets are cached (not for built-ins).")


def add_hub_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("hub")
    g.add_argument("--push_to_hub", action="store_true", help="Upload the result with its model card.")
    g.add_argument("--hub_model_id", type=str, default=None, help="Repo id; defaults to the output folder's name.")
    g.add_argument("--hub_token", type=str, default=None, help="A Hub token (default: the one `hf auth login` saved).")
    g.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repo private.")
