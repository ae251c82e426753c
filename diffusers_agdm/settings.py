"""The purification settings, resolved once into one frozen object that every layer carries as is.

`pipe.resolve_settings(...)` builds a [`PurificationSettings`] from the call's arguments and the pipeline's config;
`pipe.purify(images, settings=...)`, `pipe.defended_classifier(settings=...)` and the evaluation use it without
resolving again. Its reverse-process timesteps are computed here, from the schedule's length alone, so describing a
defense never touches a scheduler.
"""

import dataclasses
from dataclasses import dataclass, field

from .guided_step import GuidanceSettings
from .settings_table import check_option, scale_option
from .utils.schedule import purification_timesteps
from .utils.validation import check_int


@dataclass(frozen=True)
class PurificationSettings:
    """
    Everything that defines one purification defense, resolved and validated once.

    Build it with [`AdversarialGuidedPurificationPipeline.resolve_settings`]; pass it to `purify(settings=...)` or
    `defended_classifier(settings=...)`, which use it as is.

    Args:
        strength (`float`): t* as a fraction of the training schedule, in (0, 1].
        num_inference_steps (`int`): Reverse steps from t* to 0.
        guidance ([`GuidanceSettings`]): How each reverse step is steered (mode, scale, feature weight, class term,
            reference target).
        num_train_timesteps (`int`, defaults to 1000): The length T of the diffusion model's training schedule.
        fixed_stride (`bool`, defaults to `False`): Whether the scheduler moves by one fixed stride per step (DDIM);
            see [`~diffusers_agdm.utils.schedule.purification_timesteps`].
        eta (`float`, defaults to 0.0): DDIM's eta (0 = deterministic reverse steps); ignored by DDPM.
        timesteps (`tuple[int, ...]`, *optional*): The reverse-process timesteps, highest first. Computed from the
            fields above; if given, it must equal that.
    """

    strength: float
    num_inference_steps: int
    guidance: GuidanceSettings
    num_train_timesteps: int = 1000
    fixed_stride: bool = False
    eta: float = 0.0
    timesteps: tuple[int, ...] | None = field(default=None)

    def __post_init__(self):
        def set_field(name, value):  # a frozen dataclass normalises its own fields this way
            object.__setattr__(self, name, value)

        set_field("strength", check_option("strength", self.strength))
        set_field("num_inference_steps", check_option("num_inference_steps", self.num_inference_steps))
        set_field("num_train_timesteps", check_int("num_train_timesteps", self.num_train_timesteps))
        set_field("eta", check_option("eta", self.eta))
        set_field("fixed_stride", bool(self.fixed_stride))
        if isinstance(self.guidance, dict):
            set_field("guidance", GuidanceSettings(**self.guidance))
        if not isinstance(self.guidance, GuidanceSettings):  # (a GuidanceSettings validated itself when built)
            raise ValueError(f"`guidance` must be a GuidanceSettings, got {type(self.guidance).__name__}.")
        expected = purification_timesteps(self.strength, self.num_inference_steps, self.num_train_timesteps,
                                          self.fixed_stride)
        if self.timesteps is not None and tuple(int(t) for t in self.timesteps) != expected:
            raise ValueError(f"`timesteps` {tuple(self.timesteps)} do not match strength={self.strength:g} and "
                             f"num_inference_steps={self.num_inference_steps}, which give {expected}.")
        set_field("timesteps", expected)

    @property
    def first_timestep(self) -> int:
        """The effective t*: the timestep the input is diffused to and the reverse process starts from."""
        return self.timesteps[0]

    def replace(self, **overrides) -> "PurificationSettings":
        """A validated copy with some fields replaced (`strength=0.2`, `guidance=...`); the timesteps follow."""
        if "timesteps" not in overrides:
            overrides["timesteps"] = None
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        """JSON-ready: every field, the guidance settings as a dict, and `first_timestep`."""
        return {
            "strength": self.strength,
            "num_inference_steps": self.num_inference_steps,
            "first_timestep": self.first_timestep,
            "timesteps": list(self.timesteps),
            "num_train_timesteps": self.num_train_timesteps,
            "fixed_stride": self.fixed_stride,
            "eta": self.eta,
            "guidance": dataclasses.asdict(self.guidance),
        }

    def as_overrides(self) -> dict:
        """The keyword arguments of `pipe.resolve_settings` (and `purify`) that give these settings back."""
        guidance = self.guidance
        overrides = {"strength": self.strength, "num_inference_steps": self.num_inference_steps,
                     "guidance": guidance.mode, "feature_weight": guidance.feature_weight,
                     "class_guidance": guidance.class_guidance, "guidance_target": guidance.target, "eta": self.eta}
        if guidance.mode != "none":
            overrides[scale_option(guidance.mode)] = guidance.scale
        return overrides

    @classmethod
    def from_dict(cls, data: dict) -> "PurificationSettings":
        """The inverse of `to_dict`."""
        data = {k: v for k, v in data.items() if k != "first_timestep"}
        return cls(**data)


__all__ = ["PurificationSettings"]
