from .defended_classifier import PurifiedClassifier
from .pipeline_adversarial_guided_purification import (
    AdversarialGuidedPurificationPipeline,
    AdversarialGuidedPurificationPipelineOutput,
    AdversarialPurificationPipelineOutput,
)

__all__ = [
    "AdversarialGuidedPurificationPipeline",
    "AdversarialGuidedPurificationPipelineOutput",
    "AdversarialPurificationPipelineOutput",
    "PurifiedClassifier",
]
