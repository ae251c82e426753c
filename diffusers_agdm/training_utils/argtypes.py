"""Argparse types and path checks for the training scripts, built on the shared validators, so that a bad value is
refused at parse time (one line, exit 2) instead of after a model is loaded or a training loop has run."""

import argparse
import os
from pathlib import Path

from ..utils.paths import check_model_source  # noqa: F401  (the training scripts import it from here)
from ..utils.schedule import purification_timesteps, start_timestep
from ..utils.validation import check_finite, check_int


def _type_error(err: ValueError) -> argparse.ArgumentTypeError:
    # argparse prefixes "argument --flag: "; the validator's "`value` " would only repeat it.
    return argparse.ArgumentTypeError(str(err).replace("`value` ", ""))


def int_at_least(minimum: int = 1):
    """An argparse type: an integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}.") from None
        try:
            return check_int("value", value, minimum)
        except ValueError as err:
            raise _type_error(err) from None

    parse.__name__ = f"integer >= {minimum}"
    return parse


def finite(minimum: float | None = None, maximum: float | None = None, inclusive_min: bool = True):
    """An argparse type: a finite float within the bounds (`minimum` inclusive unless `inclusive_min=False`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}.") from None
        try:
            return check_finite("value", value, minimum, maximum, inclusive_min)
        except ValueError as err:
            raise _type_error(err) from None

    parse.__name__ = "finite number"
    return parse


def comma_list(item=str, *, min_items: int = 1):
    """An argparse type: a comma-separated list ("32,64,128") parsed item by item with `item` (another argparse type,
    or `str`), returned as a tuple. One place for every comma list of the training scripts."""

    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",")]
        if any(p == "" for p in parts) or len(parts) < min_items:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of at least {min_items} item(s) without "
                                             f"empty entries, got {text!r}.")
        values = []
        for part in parts:
            try:
                values.append(item(part))
            except argparse.ArgumentTypeError as err:
                raise argparse.ArgumentTypeError(f"item {part!r} of {text!r}: {err}") from None
            except ValueError:
                raise argparse.ArgumentTypeError(f"item {part!r} of {text!r} is not a valid "
                                                 f"{getattr(item, '__name__', 'value')}.") from None
        return tuple(values)

    parse.__name__ = "comma-separated list"
    return parse


def check_existing_dir(flag: str, path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{flag} {path}: no such folder.")
    if not path.is_dir():
        raise ValueError(f"{flag} {path}: not a folder.")


def check_group_norm(widths: tuple[int, ...], groups: int, flag: str = "--block_out_channels") -> None:
    """GroupNorm needs every block width divisible by the number of groups."""
    bad = [w for w in widths if w % groups]
    if bad:
        raise ValueError(f"{flag} {','.join(map(str, widths))}: {bad} not divisible by --norm_num_groups {groups}.")


def check_steps_fit(strength: float, num_inference_steps: int, num_train_timesteps: int) -> None:
    """The rule of [`~diffusers_agdm.utils.schedule.purification_timesteps`] (the reverse process starts at t* =
    round(strength x T), at most T - 1, and takes at most t* + 1 distinct steps down to 0), worded with the flags."""
    try:
        purification_timesteps(strength, num_inference_steps, num_train_timesteps)
    except ValueError:
        start = start_timestep(strength, num_train_timesteps)
        raise ValueError(f"--num_inference_steps {num_inference_steps} is more than the {start + 1} timesteps from "
                         f"t* = {start} (--strength {strength} of {num_train_timesteps}) down to 0; lower it or raise "
                         "--strength.") from None
