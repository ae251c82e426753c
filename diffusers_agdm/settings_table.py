"""The purification options, written once: each one's name, type, untuned default, bounds and help.

This table builds everything that names a purification option: the validation of [`GuidanceSettings`] and
[`PurificationSettings`], the pipeline constructor's defaults (`UNTUNED_DEFAULTS`), and the flags of `agdm purify`,
`agdm evaluate` and the training scripts (`add_purification_arguments`). Adding an option is one row here plus the
step that uses it. Standard library only: `agdm <command> --help` builds its flags from here without torch.
"""

import argparse
from dataclasses import dataclass

from .utils.validation import check_finite, check_int

GUIDANCE_MODES = ("latent", "pixel", "none")
GUIDANCE_TARGETS = ("diffused", "input")


@dataclass(frozen=True)
class PurificationOption:
    """
    One purification option.

    Args:
        name: The keyword of `pipe(...)`, `pipe.resolve_settings(...)` and the command-line flag (`--name`).
        type: `float`, `int`, `bool` or `str`.
        default: The untuned default a new pipeline is built with (a trained pipeline saves its own in its config).
        help: One line for `--help` and the docstrings.
        choices: The allowed values of a `str` option.
        minimum, maximum, inclusive_min: Bounds of a number (`minimum` inclusive unless `inclusive_min=False`).
        config_key: The pipeline config's key, where it differs from `name` (`guidance` -> `guidance_mode`).
    """

    name: str
    type: type
    default: object
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    inclusive_min: bool = True
    config_key: str | None = None

    @property
    def key(self) -> str:
        return self.config_key or self.name

    def check(self, value, name: str | None = None):
        """`value` validated and normalised (a float, an int, a bool or one of the choices); otherwise a
        `ValueError` naming the option (or `name`)."""
        name = name or self.name
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False, got {value!r}.")
            return value
        if self.type is int:
            return check_int(name, value, minimum=self.minimum)
        if self.type is float:
            return check_finite(name, value, self.minimum, self.maximum, self.inclusive_min)
        if value not in self.choices:
            raise ValueError(f"Unknown {name} {value!r}; choose one of {self.choices}.")
        return value


PURIFICATION_OPTIONS = (
    PurificationOption("strength", float, 0.2, "t* as a fraction of the training schedule, in (0, 1]", minimum=0,
                       maximum=1, inclusive_min=False),
    PurificationOption("num_inference_steps", int, 10, "reverse steps from t* to 0", minimum=1),
    PurificationOption("guidance_scale", float, 30.0, "the latent (AGDM) guidance scale (0: unguided)", minimum=0),
    PurificationOption("guidance", str, "latent", "latent (AGDM), pixel (GDMP-style) or none (DiffPure-style)",
                       choices=GUIDANCE_MODES, config_key="guidance_mode"),
    PurificationOption("pixel_guidance_scale", float, 1.0, "the pixel (GDMP-style) guidance scale, for --guidance "
                       "pixel", minimum=0),
    PurificationOption("feature_weight", float, 1.0, "weight of the feature-distance term of latent guidance",
                       minimum=0),
    PurificationOption("class_guidance", bool, True, "add the guidance network's class term to latent guidance"),
    PurificationOption("guidance_target", str, "diffused", "what each step is compared with: the input diffused "
                       "to t (diffused) or the input itself (input)", choices=GUIDANCE_TARGETS),
    PurificationOption("eta", float, 0.0, "DDIM's eta (0: deterministic reverse steps); ignored by DDPM", minimum=0),
)
OPTIONS = {option.name: option for option in PURIFICATION_OPTIONS}
# The defaults of a pipeline built without tuning, keyed as its config (`model_index.json`) stores them. A trained
# and tuned pipeline (the embedded default) carries its own values; read them from `pipe.config`.
UNTUNED_DEFAULTS = {option.key: option.default for option in PURIFICATION_OPTIONS}


def check_option(name: str, value, label: str | None = None):
    """Validate `value` for the option `name` (a key of `OPTIONS`); `label` names it in the error instead."""
    return OPTIONS[name].check(value, label)


def scale_option(mode: str) -> str:
    """The option that holds the guidance scale of `mode`: `pixel_guidance_scale` for pixel guidance, else
    `guidance_scale`."""
    return "pixel_guidance_scale" if mode == "pixel" else "guidance_scale"


def _flag_type(option: PurificationOption):
    def parse(text: str):
        try:
            value = option.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if option.type is int else 'a number'}, got "
                                             f"{text!r}.") from None
        try:
            return option.check(value, "value")
        except ValueError as err:  # argparse already names the flag
            raise argparse.ArgumentTypeError(str(err).replace("`value` ", "")) from None

    parse.__name__ = option.type.__name__
    return parse


def add_purification_arguments(parser, names=None, *, defaults: dict | None = None,
                               default_help: str = "the pipeline's") -> None:
    """
    Add `--<name>` for each option in `names` (default: all) to `parser` (or an argument group), typed, bounded and
    described by the table. Without an entry in `defaults` a flag defaults to None, shown as `default_help`, which
    means "the pipeline's config"; a value there is the flag's own default.
    """
    defaults = defaults or {}
    for name in names or OPTIONS:
        option = OPTIONS[name]
        default = defaults.get(name)
        shown = f"{default:g}" if isinstance(default, float) else default
        help_text = f"{option.help} (default: {default_help if default is None else shown})"
        if option.type is bool:
            parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif option.type is str:
            parser.add_argument(f"--{name}", default=default, choices=option.choices, help=help_text)
        else:
            parser.add_argument(f"--{name}", type=_flag_type(option), default=default, help=help_text)


def purification_overrides(args: argparse.Namespace, names=None) -> dict:
    """The options given on a command line (flags left at None are the pipeline's), as keyword arguments of
    `pipe(...)` and `pipe.resolve_settings(...)`."""
    return {name: getattr(args, name) for name in names or OPTIONS
            if getattr(args, name, None) is not None}


__all__ = ["GUIDANCE_MODES", "GUIDANCE_TARGETS", "OPTIONS", "PURIFICATION_OPTIONS", "PurificationOption",
           "UNTUNED_DEFAULTS", "add_purification_arguments", "check_option", "purification_overrides",
           "scale_option"]
