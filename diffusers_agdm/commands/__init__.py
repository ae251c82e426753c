"""The `agdm` subcommands, one module each, shaped like Diffusers' own `diffusers/commands/`: a command class
registers its parser with `register_subcommand` and does its work in `run`.

Module-level imports here and in every command module are the standard library and the package's torch-free
modules only (the settings table, `utils.flags`): `agdm --help`, `agdm --version` and `agdm <command> --help` must
not pay for torch (benchmarks/help_time.py measures it). Each command imports what it needs inside `run`
(`evaluate` reads `EvaluationConfig`'s fields, which load without torch, inside `register_subcommand`).
"""

import argparse
from abc import ABC, abstractmethod

from ..exits import EXIT_BAD_INPUT, EXIT_OK, EXIT_SANITY_FAILED  # noqa: F401  (the contract's home: exits.py)

# The `_class_name` a pipeline folder of ours records (a string: naming the class would import torch).
PIPELINE_CLASS_NAME = "AdversarialGuidedPurificationPipeline"

# name -> "module:class", imported only for the command that runs (and for the one-line help of the others).
COMMANDS = {
    "evaluate": "evaluate:EvaluateCommand",
    "purify": "purify:PurifyCommand",
    "info": "info:InfoCommand",
    "push": "push:PushCommand",
    "demo": "demo:DemoCommand",
}


class BaseAgdmCLICommand(ABC):
    """One `agdm` subcommand. `register_subcommand` adds its parser (with `func` set to the class) and `run`
    returns the exit status."""

    name: str
    help: str

    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args = args
        self.argv = argv

    @classmethod
    @abstractmethod
    def register_subcommand(cls, subparsers) -> argparse.ArgumentParser:
        raise NotImplementedError

    @abstractmethod
    def run(self) -> int:
        raise NotImplementedError


def add_pipeline_argument(parser) -> None:
    # The training scripts' name first; `--pipeline` stays as the short alias.
    parser.add_argument("--pretrained_model_name_or_path", "--pipeline", dest="pipeline", metavar="PIPELINE",
                        default=None, help="pipeline folder or Hub id (default: the embedded MNIST pipeline)")


def add_num_threads_argument(parser) -> None:
    parser.add_argument("--num_threads", type=int, default=None,
                        help="CPU threads for torch (default: $OMP_NUM_THREADS if set, else the cores left idle by "
                             "other work when the command starts, shared among accelerate's processes; at least 1)")


def set_num_threads(requested: int | None) -> int:
    """Give torch as many threads as there are idle cores. Torch's default (every core) oversubscribes a small,
    busy machine: threads spinning for a core another job holds made a 3-minute evaluation take 45 on 2 cores."""
    import os

    import torch

    if requested is not None and requested < 1:
        raise ValueError(f"--num_threads must be >= 1, got {requested}.")
    if requested is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        requested = int(os.environ["OMP_NUM_THREADS"])
    if requested is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
        processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
        requested = max(1, (cores - min(busy, cores - 1)) // max(processes, 1))
        # Only ever fewer than torch's own default (or than what the caller already chose, as the tests do).
        requested = min(requested, torch.get_num_threads())
    torch.set_num_threads(requested)
    return requested


def check_pipeline_source(name_or_path: str | None) -> None:
    """A `--pipeline` must be a folder of our pipeline or a Hub id; say so before Diffusers' longer messages."""
    from ..utils.paths import check_model_source

    if name_or_path is not None:
        check_model_source("--pipeline", name_or_path, class_name=PIPELINE_CLASS_NAME)


def load_pipeline(name_or_path: str | None):
    """The one place a command loads a pipeline: checked first, and any loading failure (offline Hub, not one of
    our pipelines, ...) becomes a one-line `ValueError` naming the source."""
    from ..default_pipeline import load_pipeline as load

    check_pipeline_source(name_or_path)
    source = name_or_path or "the embedded default"
    try:
        pipe = load(name_or_path)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"cannot load a purification pipeline from {source}: {err}") from err
    if getattr(pipe, "guidance", None) is None:  # a Hub repo of another pipeline class loads without one
        raise ValueError(f"cannot load a purification pipeline from {source}: it has no guidance network.")
    return pipe
