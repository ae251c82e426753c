"""
The `agdm` command line: the entry point only. Each subcommand lives in its own module of
`diffusers_agdm.commands` (as Diffusers' own `diffusers/commands/` does); without `--pipeline`, each works on the
embedded default MNIST pipeline.

    agdm evaluate --num_images 16 --output_dir outputs/quickstart
    accelerate launch --multi_gpu --num_processes 2 -m diffusers_agdm.cli evaluate ...

Only the command that runs gets its full parser: the others are listed by name and one-line help, so `agdm --help`
and `agdm --version` import neither torch nor Diffusers.
"""

import argparse
import importlib
import sys

from . import __version__
from .commands import COMMANDS
from .exits import (  # noqa: F401  (the exit codes, importable from here too)
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SANITY_FAILED,
    EXIT_UNEXPECTED,
    Interrupted,
    exit_status,
)


def command_class(name: str):
    module_name, class_name = COMMANDS[name].split(":")
    return getattr(importlib.import_module(f".commands.{module_name}", __package__), class_name)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def installed(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return f"agdm (diffusers-agdm) {__version__}; diffusers {installed('diffusers')}, torch {installed('torch')}"


def build_parser(full: str | tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The `agdm` parser. `full` names the commands that get their complete parser (default: all); the others are
    registered with their name and help only, which is all `agdm --help` shows."""
    full = tuple(COMMANDS) if full is None else (full,) if isinstance(full, str) else full
    parser = argparse.ArgumentParser(prog="agdm", description="diffusers-agdm: adversarial purification with "
                                     "Adversarial Guided Diffusion Models.")
    parser.add_argument("--version", action="version", version=_version(), help="print the versions and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        cls = command_class(name)
        if name in full:
            cls.register_subcommand(subparsers)
        else:
            subparsers.add_parser(name, help=cls.help)
    for sub in subparsers.choices.values():
        sub.allow_abbrev = False  # an old or mistyped flag (--output, --dataset) is an error, never a guess
    return parser


def command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the subcommand `name` inside the `agdm` parser."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[name]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `agdm` console script; returns the exit status of the contract in `exits.py` (0 ok, 1 a
    sanity check failed, 2 bad input or environment, 3 a bug, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(full=chosen if chosen in COMMANDS else ())
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's usage, not the top-level one (argparse would print `agdm [-h] ...`)
        command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    command = args.func(args, argv)
    try:
        return command.run()
    except Exception as err:  # noqa: BLE001 -- anticipated: one line, exit 2; a bug: its traceback, exit 3
        return exit_status(err, f"agdm {args.command}")
    except KeyboardInterrupt as err:
        if not isinstance(err, Interrupted) and args.command == "evaluate" and getattr(args, "output_dir", None):
            err = Interrupted(f"every finished unit in {args.output_dir}/progress; the same command resumes there")
        return exit_status(err, f"agdm {args.command}")


if __name__ == "__main__":
    sys.exit(main())
