"""
The defenses an evaluation compares, all built from one pipeline and all attacked through the same code: the
undefended classifier, the adversarial-training baseline (the pipeline's TRADES-trained guidance network used as the
classifier), unguided, pixel-guided and latent-guided purification, and latent purification classified by the robust
network. [`defense_specs`] is the one place that decides which purification settings each defense uses.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import guidance_target_logits
from ..settings import PurificationSettings
from ..settings_table import scale_option
from .config import (  # noqa: E402,F401
    DEFENSES,  # noqa: F401  (the names live with the config, which loads without torch)
    LATENT_ROBUST,
    ROBUST_CLASSIFIER,
)

DEFENSE_TITLES = {
    "undefended": "undefended classifier",
    ROBUST_CLASSIFIER: "robust classifier (the guidance network, adversarial training)",
    "none": "unguided purification (DiffPure-style)",
    "pixel": "pixel guidance (GDMP-style)",
    "latent": "latent guidance (AGDM)",
    LATENT_ROBUST: "latent guidance, then the robust classifier",
}
DEFENSE_SHORT_TITLES = {"undefended": "undefended", ROBUST_CLASSIFIER: "robust classifier",
                        "none": "unguided (DiffPure)", "pixel": "pixel (GDMP)", "latent": "latent (AGDM)",
                        LATENT_ROBUST: "latent + robust"}
# Which guidance each purifying defense runs (the others do not purify); `defense_specs` turns it into settings.
GUIDANCE_OF = {"none": "none", "pixel": "pixel", "latent": "latent", LATENT_ROBUST: "latent"}
ROBUSTLY_CLASSIFIED = (ROBUST_CLASSIFIER, LATENT_ROBUST)


def robust_logits(pipeline, images: torch.Tensor) -> torch.Tensor:
    """The guidance network's class logits on [0, 1] `images` at t = 0, by the very call latent guidance computes
    y_hat with ([`guidance_target_logits`]): the adversarial-training baseline's prediction."""
    return guidance_target_logits(pipeline, images)


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


class RobustClassifier(nn.Module):
    """
    The pipeline's guidance network used directly as the classifier at t = 0 (the adversarial-training baseline),
    deterministic, with the interface of `pipe.defended_classifier()` (`purify` is the identity, `reseed` does
    nothing); with `purifier`, the images are purified by it first (latent purification, then the robust network).

    Example:

    ```py
    >>> model = RobustClassifier(pipe)  # doctest: +SKIP
    >>> logits = model(images)  # the guidance network's logits at t = 0  # doctest: +SKIP
    ```
    """

    def __init__(self, pipeline, purifier: nn.Module | None = None):
        super().__init__()
        if pipeline.guidance is None:
            raise ValueError("The robust-classifier defenses use the pipeline's guidance network, and it has none.")
        self.guidance = pipeline.guidance  # a submodule: torchattacks finds the device; apgd-guidance its y_hat
        self.purifier = purifier
        self._pipeline = pipeline

    def reseed(self, seed: int | None) -> None:
        if self.purifier is not None:
            self.purifier.reseed(seed)

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.purifier is None else self.purifier.purify(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return robust_logits(self._pipeline, self.purify(images))


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
        return self.settings is not None

    def classifier(self, pipeline):
        """The callable ([0, 1] images to logits) that classifies this defense's purified images."""
        if self.name in ROBUSTLY_CLASSIFIED:
            return lambda images: robust_logits(pipeline, images)
        return pipeline.classifier_logits

    def build(self, pipeline, seed: int | None, num_inference_steps: int | None = None,
              gradient_checkpointing: bool = True) -> nn.Module:
        """The defense as an `nn.Module` ([0, 1] images to logits) drawing its purification noise from `seed`;
        `num_inference_steps` replaces the defense's own (the surrogate reverse process)."""
        purifier = None
        if self.purifies:
            settings = self.settings
            if num_inference_steps is not None:
                settings = settings.replace(num_inference_steps=num_inference_steps)
            purifier = pipeline.defended_classifier(seed=seed, gradient_checkpointing=gradient_checkpointing,
                                                    settings=settings)
        if self.name in ROBUSTLY_CLASSIFIED:
            return RobustClassifier(pipeline, purifier)
        return purifier if purifier is not None else UndefendedClassifier(pipeline)

    def describe(self, pipeline) -> dict:
        """Every setting of the defense, with the effective t* (the first timestep of the reverse process). The
        scale is stored under the name the API takes it by: `guidance_scale` (latent) or `pixel_guidance_scale`."""
        info = {"title": DEFENSE_TITLES[self.name],
                "classifier": "guidance network at t = 0" if self.name in ROBUSTLY_CLASSIFIED else "classifier"}
        if not self.purifies:
            return info
        resolved, guidance = self.settings, self.settings.guidance
        info.update(
            guidance=guidance.mode,
            **{scale_option(guidance.mode): float(guidance.scale)},
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
    `"latent"` and `"latent+robust-classifier"` are `guidance="latent"` at `guidance_scale` (default: the
    pipeline's); `"undefended"` and `"robust-classifier"` do not purify. This is the one place that decides which
    defense uses which purification settings: the evaluation, the demo, tuning and the benchmarks call it. Raises a
    `ValueError` for an unknown name or a setting the pipeline rejects.

    Example:

    ```py
    >>> spec = defense_specs(pipe, ("pixel",), pixel_guidance_scale=3.0)[0]  # doctest: +SKIP
    >>> model = spec.build(pipe, seed=0)  # the defense as an nn.Module  # doctest: +SKIP
    ```
    """
    unknown = [name for name in names if name not in DEFENSES]
    if unknown or not names:
        raise ValueError(f"Unknown defenses {unknown}; choose from {DEFENSES}." if unknown else "No defense given.")
    shared = {"strength": strength, "num_inference_steps": num_inference_steps, "feature_weight": feature_weight}
    per_guidance = {
        "none": {"guidance": "none", "guidance_scale": 0.0},  # unguided whatever the pipeline's scale
        "pixel": {"guidance": "pixel", "pixel_guidance_scale": pixel_guidance_scale},
        "latent": {"guidance": "latent", "guidance_scale": guidance_scale, "class_guidance": class_guidance,
                   "guidance_target": guidance_target},
    }
    specs = []
    for name in dict.fromkeys(names):  # keeps the order, drops repeats
        extra = per_guidance.get(GUIDANCE_OF.get(name))  # None: the defense does not purify
        if extra is None:
            specs.append(DefenseSpec(name))
            continue
        kwargs = {k: v for k, v in {**shared, **extra}.items() if v is not None}
        specs.append(DefenseSpec(name, pipeline.resolve_settings(**kwargs)))  # raises naming a bad setting
    return specs
