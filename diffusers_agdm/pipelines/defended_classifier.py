"""The whole defense (purification then classification) as a plain `nn.Module` that attack libraries accept."""

import torch
from torch import nn


class PurifiedClassifier(nn.Module):
    """
    Maps [0, 1] images to the downstream classifier's logits through the entire stochastic defense. Every forward
    draws fresh purification noise from the module's own generator, as the deployed defense would, so EOT attacks
    average over the real randomness; `reseed(seed)` restarts that stream. Built by
    [`AdversarialGuidedPurificationPipeline.defended_classifier`].
    """

    def __init__(self, pipeline, seed: int | None = 0, gradient_checkpointing: bool = True, **purify_kwargs):
        super().__init__()
        # Registered as submodules so `.parameters()`, `.eval()` and `.to()` reach them (torchattacks reads the
        # device from the first parameter).
        self.unet = pipeline.unet
        self.guidance = pipeline.guidance
        self.classifier = pipeline.classifier
        self._pipeline = pipeline
        self.gradient_checkpointing = gradient_checkpointing
        self.purify_kwargs = purify_kwargs
        self.generator = torch.Generator(device="cpu")
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        return self._pipeline.purify(images, generator=self.generator,
                                     gradient_checkpointing=self.gradient_checkpointing, **self.purify_kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._pipeline.classifier_logits(self.purify(images))
