"""The four defenses an evaluation compares, all built from one pipeline and all attacked through the same code."""

from dataclasses import dataclass

import torch
from torch import nn

from ..settings import PurificationSettings
from .config import DEFENSES  # noqa: F401  (the names live with the config, which loads without torch)

DEFENSE_TITLES = {
    "undefended": "undefended classifier",
    "none": "unguided purification (DiffPure-style)",
    "pixel": "pixel guidance (GDMP-style)",
    "latent": "latent guidance (AGDM)",
}
DEFENSE_SHORT_TITLES = {"undefended": "undefended", "none": "unguided (DiffPure)", "pixel": "pixel (GDMP)",
                        "latent": "latent (AGDM)"}


class UndefendedClassifier(nn.Module):
    """
    The pipeline's classifier alone, with the interface of `pipe.defended_classifier()` (`purify` is the identity,
    `reseed` does nothing), so the undefended baseline runs through exactly the code the defenses run through.

    Example:

    ```py
    >>> model = UndefendedClassifier(pipe)  # doctest: +SKIP
    >>> logits = model(images)  # doctest: +SKIP
    ```
    """

    def __init__(self, pipeline):
        super().__init__()
        if pipeline.classifier is None:
            raise ValueError("The pipeline has no classifier: there is nothing to evaluate.")
        self.classifier = pipeline.classifier  # a submodule, so torchattacks finds the device
        self._pipeline = pipeline

    def reseed(self, seed: int | None) -> None:
        """Nothing to reseed: the classifier is deterministic."""

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._pipeline.classifier_logits(images)


@dataclass(frozen=True)
class DefenseSpec:
    """
    One defense: a name from `DEFENSES` and its resolved [`PurificationSettings`] (`None` for `"undefended"`).
    Resolved once by [`defense_specs`]; every model built from it uses the settings as they are.
    """

    name: str
    settings: PurificationSettings | None = None

    @property
    def purifies(self) -> bool:
        return self.name != "undefended"

    def build(self, pipeline, seed: int | None, num_inference_steps: int | None = None) -> nn.Module:
        """The defense as an `nn.Module` ([0, 1] images to logits) drawing its purification noise from `seed`;
        `num_inference_steps` replaces the defense's own (the surrogate reverse process)."""
        if not self.purifies:
            return UndefendedClassifier(pipeline)
        settings = self.settings
        if num_inference_steps is not None:
            settings = settings.replace(num_inference_steps=num_inference_steps)
        return pipeline.defended_classifier(seed=seed, gradient_checkpointing=True, settings=settings)

    def describe(self, pipeline) -> dict:
        """Every setting of the defense, with the effective t* (the first timestep of the reverse process)."""
        info = {"title": DEFENSE_TITLES[self.name]}
        if not self.purifies:
            return info
        resolved, guidance = self.settings, self.settings.guidance
        info.update(
            guidance=guidance.mode,
            guidance_scale=float(guidance.scale),
            feature_weight=float(guidance.feature_weight),
            class_guidance=bool(guidance.class_guidance),
            guidance_target=guidance.target,
            strength=float(resolved.strength),
            first_timestep=resolved.first_timestep,
            timesteps=list(resolved.timesteps),
            num_train_timesteps=int(resolved.num_train_timesteps),
            num_inference_steps=int(resolved.num_inference_steps),
            scheduler=type(pipeline.scheduler).__name__,
            eta=float(resolved.eta),
        )
        return info


def defense_specs(
    pipeline,
    names=DEFENSES,
    *,
    strength: float | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    pixel_guidance_scale: float | None = None,
    feature_weight: float | None = None,
    class_guidance: bool | None = None,
    guidance_target: str | None = None,
) -> list[DefenseSpec]:
    """
    The defenses `names` on one pipeline, sharing t* and the number of reverse steps (the pipeline's config unless
    given): `"none"` is `guidance="none"`, `"pixel"` is `guidance="pixel"` at `pixel_guidance_scale` (default: the
    pipeline's `pixel_guidance_scale`, its own tuned value; a pixel distance needs another scale than the latent one),
    `"latent"` is `guidance="latent"` at `guidance_scale` (default: the pipeline's). Raises a `ValueError` for an
    unknown name or a setting the pipeline rejects.
    """
    unknown = [name for name in names if name not in DEFENSES]
    if unknown or not names:
        raise ValueError(f"Unknown defenses {unknown}; choose from {DEFENSES}." if unknown else "No defense given.")
    shared = {"strength": strength, "num_inference_steps": num_inference_steps, "feature_weight": feature_weight}
    per_defense = {
        "undefended": None,
        "none": {"guidance": "none", "guidance_scale": 0.0},  # unguided whatever the pipeline's scale
        "pixel": {"guidance": "pixel", "pixel_guidance_scale": pixel_guidance_scale},
        "latent": {"guidance": "latent", "guidance_scale": guidance_scale, "class_guidance": class_guidance,
                   "guidance_target": guidance_target},
    }
    specs = []
    for name in dict.fromkeys(names):  # keeps the order, drops repeats
        extra = per_defense[name]
        if extra is None:
            specs.append(DefenseSpec(name))
            continue
        kwargs = {k: v for k, v in {**shared, **extra}.items() if v is not None}
        specs.append(DefenseSpec(name, pipeline.resolve_settings(**kwargs)))  # raises naming a bad setting
    return specs
