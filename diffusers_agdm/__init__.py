"""diffusers-agdm: adversarial purification with Adversarial Guided Diffusion Models (AGDM) for Hugging Face Diffusers.

The public names below load on first use (as Diffusers' own package does), so `import diffusers_agdm` and the
`agdm` command's `--help` do not pay for torch. Importing this package still makes `DiffusionPipeline.from_pretrained`
understand our pipelines: the registration runs as soon as Diffusers is imported (see `_registration.py`).
"""

from ._registration import register_when_diffusers_loads
from .utils.lazy import lazy_names

__version__ = "0.1.0"

_LAZY = {
    # `ModelMixin` must be an attribute of this package: Diffusers' loader checks a component's class against the
    # base classes it finds on the component's library, which is this package once it is registered.
    "ConfigMixin": "diffusers",
    "ModelMixin": "diffusers",
    "GuidanceSettings": ".guided_step",
    "GuidedReverseStep": ".guided_step",
    "make_model_card": ".hub",
    "push_folder_to_hub": ".hub",
    "GuidanceModel": ".models",
    "GuidanceModelOutput": ".models",
    "ImageClassifierOutput": ".models",
    "SmallImageClassifier": ".models",
    "CifarResNet": ".models.resnet",
    "load_pyautoattack_resnet18": ".models.resnet",
    "AdversarialGuidedPurificationPipeline": ".pipelines",
    "AdversarialGuidedPurificationPipelineOutput": ".pipelines",
    "AdversarialPurificationPipelineOutput": ".pipelines",
    "PurifiedClassifier": ".pipelines",
    "default_pipeline_path": ".default_pipeline",
    "load_pipeline": ".default_pipeline",
    "sample_image_path": ".default_pipeline",
    "PurificationSettings": ".settings",
}


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)


register_when_diffusers_loads()

__all__ = [name for name in _LAZY if name not in ("ConfigMixin", "ModelMixin")]
