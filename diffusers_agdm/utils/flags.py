"""Command-line flags shared by `agdm` and the training scripts: one help format (each default shown once, as the
user types it) and flags generated from a dataclass's fields. Standard library only, so `--help` never loads torch."""

import argparse
import dataclasses
import types
import typing


def show_default(value) -> str:
    """A default as a user would type it: `0`, not `['0']`; `apgd apgd-guidance`, not a tuple."""
    if isinstance(value, (list, tuple)):
        return " ".join(show_default(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps a description's line breaks and appends each flag's default once: not when the help already says
    what the default is, nor for a default of None or False (an unset option or an off switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("(default" in text or default is None or default is False or default is argparse.SUPPRESS
                or not action.option_strings or default in ((), [])):
            return text
        return f"{text} (default: {show_default(default).replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` with [`HelpFormatter`] and no abbreviations (an old or mistyped flag is an
    error, never a guess)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def split_list(values, cast, option: str) -> tuple:
    """`--x a,b c` -> (a, b, c): lists may be given with commas, spaces or both."""
    items = [item for value in (values or []) for item in str(value).split(",") if item.strip()]
    try:
        return tuple(cast(item.strip()) for item in items)
    except ValueError as err:
        raise ValueError(f"{option}: cannot read {values!r} ({err}).") from err


def _base_type(annotation):
    """(scalar type, is a tuple, may be None) of a field annotation such as `int`, `float | None`,
    `tuple[str, ...]`."""
    optional = False
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        optional = type(None) in args
        annotation = next(a for a in args if a is not type(None))
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        return args[0], True, optional
    return annotation, False, optional


def add_dataclass_arguments(parser, cls, *, skip=(), groups: dict | None = None) -> None:
    """
    Add one flag per field of the dataclass `cls` (except `skip`, and fields whose metadata says `"skip": True`)
    from the field's type, default and `metadata`: `help` (required), and optionally `flag` (the flag's name, and
    where it parses to, if not the field's), `aliases`, `choices`, `nargs` (of a tuple: `+` unless given), `group` (a
    key of `groups`, the argument groups to add it to) and `metavar`. Tuples take several values, with commas or
    spaces; booleans get `--x/--no-x`. [`dataclass_from_args`] reads them back.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if field.name in skip or meta.get("skip"):
            continue
        if "help" not in meta:
            raise ValueError(f"{cls.__name__}.{field.name} has no help in its metadata.")
        target = (groups or {}).get(meta.get("group"), parser)
        kind, is_tuple, _ = _base_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        flag = meta.get("flag", field.name)
        names = [f"--{flag}", *(f"--{a}" for a in meta.get("aliases", ()))]
        kwargs = {"dest": flag, "help": meta["help"], "default": default}
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif is_tuple:
            kwargs.update(nargs=meta.get("nargs", "+"), type=str, default=[show_default(v) for v in default])
        else:
            kwargs.update(type=kind, choices=meta.get("choices"))
        target.add_argument(*names, **kwargs)


def dataclass_from_args(cls, args: argparse.Namespace, *, skip=(), **values):
    """The `cls` instance a command line describes: the flag of every field added by [`add_dataclass_arguments`]
    (tuples split on commas and cast to their item type); `values` given explicitly win."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = field.metadata.get("flag", field.name)
        if field.name in skip or field.name in values or not hasattr(args, flag):
            continue
        value = getattr(args, flag)
        kind, is_tuple, _ = _base_type(hints[field.name])
        if is_tuple and value is not None:
            value = split_list(value, kind, f"--{flag}")
        values[field.name] = value
    return cls(**values)


__all__ = ["ArgumentParser", "HelpFormatter", "add_dataclass_arguments", "dataclass_from_args", "show_default",
           "split_list"]
