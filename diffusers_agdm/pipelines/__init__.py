from .._registration import register_with_diffusers
from .defended_classifier import PurifiedClassifier
from .pipeline_adversarial_guided_purification import (
    AdversarialGuidedPurificationPipeline,
    AdversarialGuidedPurificationPipelineOutput,
    AdversarialPurificationPipelineOutput,
)

# Diffusers knows our pipeline class as soon as it exists (see `_registration.py`).
register_with_diffusers([AdversarialGuidedPurificationPipeline])

__all__ = [
    "AdversarialGuidedPurificationPipeline",
    "AdversarialGuidedPurificationPipelineOutput",
    "AdversarialPurificationPipelineOutput",
    "PurifiedClassifier",
]
