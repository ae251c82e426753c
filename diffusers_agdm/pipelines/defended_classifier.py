"""The whole defense (purification then classification) as a plain `nn.Module` that attack libraries accept."""

import torch
from torch import nn

from ..settings import PurificationSettings


class PurifiedClassifier(nn.Module):
    """
    Maps [0, 1] images to the downstream classifier's logits through the entire stochastic defense. Every forward
    draws fresh purification noise from the module's own generator, as the deployed defense would, so EOT attacks
    average over the real randomness; `reseed(seed)` restarts that stream. Built by
    [`AdversarialGuidedPurificationPipeline.defended_classifier`].

    Its [`PurificationSettings`] are resolved once, when it is built (from `overrides` against the pipeline's
    config, or `settings` as given), and held in `self.settings`; no forward resolves them again.
    """

    def __init__(self, pipeline, seed: int | None = 0, gradient_checkpointing: bool = True,
                 settings: PurificationSettings | None = None, **overrides):
        super().__init__()
        if settings is None:
            settings = pipeline.resolve_settings(**overrides)
        elif overrides:
            raise ValueError(f"Pass either `settings` or overrides ({', '.join(sorted(overrides))}), not both.")
        pipeline.check_settings(settings)
        # Registered as submodules so `.parameters()`, `.eval()` and `.to()` reach them (torchattacks reads the
        # device from the first parameter).
        self.unet = pipeline.unet
        self.guidance = pipeline.guidance
        self.classifier = pipeline.classifier
        self._pipeline = pipeline
        self.settings = settings
        self.gradient_checkpointing = gradient_checkpointing
        self.generator = torch.Generator(device="cpu")
        self.reseed(seed)

    @property
    def purify_kwargs(self) -> dict:
        """The settings as `purify` keyword arguments (what `pipe.purify(images, **kwargs)` would resolve to them)."""
        return self.settings.as_overrides()

    def reseed(self, seed: int | None) -> None:
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        return self._pipeline.purify(images, settings=self.settings, generator=self.generator,
                                     gradient_checkpointing=self.gradient_checkpointing)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._pipeline.classifier_logits(self.purify(images))
