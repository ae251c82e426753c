"""diffusers-agdm: adversarial purification with Adversarial Guided Diffusion Models (AGDM) for Hugging Face Diffusers."""

__version__ = "0.1.0"

# `ModelMixin` must be an attribute of this package: Diffusers' loader checks a component's class against the
# base classes it finds on the component's library, which is this package once it is registered below.
from diffusers import ConfigMixin, ModelMixin  # noqa: F401

from ._registration import register_with_diffusers
from .guided_step import GuidanceSettings, GuidedReverseStep
from .hub import make_model_card, push_folder_to_hub
from .models import GuidanceModel, GuidanceModelOutput, ImageClassifierOutput, SmallImageClassifier
from .pipelines import AdversarialGuidedPurificationPipeline, AdversarialPurificationPipelineOutput, PurifiedClassifier

register_with_diffusers([AdversarialGuidedPurificationPipeline])

__all__ = [
    "AdversarialGuidedPurificationPipeline",
    "AdversarialPurificationPipelineOutput",
    "GuidanceModel",
    "GuidanceModelOutput",
    "GuidanceSettings",
    "GuidedReverseStep",
    "ImageClassifierOutput",
    "PurifiedClassifier",
    "SmallImageClassifier",
    "make_model_card",
    "push_folder_to_hub",
]
