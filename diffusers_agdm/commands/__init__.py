"""The `agdm` subcommands, one module each, shaped like Diffusers' own `diffusers/commands/`: a command class
registers its parser with `register_subcommand` and does its work in `run`.

Module-level imports here and in every command module are the standard library only: `agdm --help` and
`agdm --version` must not pay for torch. Each command imports what it needs inside `run` (and `evaluate` inside
`register_subcommand`, for its defaults).
"""

import argparse
from abc import ABC, abstractmethod

EXIT_OK, EXIT_SANITY_FAILED, EXIT_BAD_INPUT = 0, 1, 2

# name -> "module:class", imported only for the command that runs (and for the one-line help of the others).
COMMANDS = {
    "evaluate": "evaluate:EvaluateCommand",
    "purify": "purify:PurifyCommand",
    "info": "info:InfoCommand",
    "push": "push:PushCommand",
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
    parser.add_argument("--pipeline", default=None,
                        help="pipeline folder or Hub id (default: the embedded MNIST pipeline)")
