"""diffusers-agdm: adversarial purification with Adversarial Guided Diffusion Models (AGDM) for Hugging Face Diffusers."""

__version__ = "0.1.0"

# `ModelMixin` must be an attribute of this package: Diffusers' loader checks a component's class against the
# base classes it finds on the component's library, which is this package once it is registered below.
from diffusers import ConfigMixin, ModelMixin  # noqa: F401

from ._registration import register_with_diffusers
from .guided_step import GuidanceSettings, GuidedReverseStep
from .hub import make_model_card, push_folder_to_hub
from .models import GuidanceModel, GuidanceModelOutput, ImageClassifierOutput, SmallImageClassifier
from .models.resnet import CifarResNet, load_pyautoattack_resnet18
from .pipelines import (
    AdversarialGuidedPurificationPipeline,
    AdversarialGuidedPurificationPipelineOutput,
    AdversarialPurificationPipelineOutput,
    PurifiedClassifier,
)
from .pretrained import default_pipeline_path, load_pipeline
from .settings import PurificationSettings

register_with_diffusers([AdversarialGuidedPurificationPipeline])

__all__ = [
    "AdversarialGuidedPurificationPipeline",
    "AdversarialGuidedPurificationPipelineOutput",
    "AdversarialPurificationPipelineOutput",
    "CifarResNet",
    "GuidanceModel",
    "GuidanceModelOutput",
    "GuidanceSettings",
    "GuidedReverseStep",
    "ImageClassifierOutput",
    "PurificationSettings",
    "PurifiedClassifier",
    "SmallImageClassifier",
    "default_pipeline_path",
    "load_pipeline",
    "load_pyautoattack_resnet18",
    "make_model_card",
    "push_folder_to_hub",
]
