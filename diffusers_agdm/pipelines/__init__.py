from .defended_classifier import PurifiedClassifier
from .pipeline_adversarial_guided_purification import (
    AdversarialGuidedPurificationPipeline,
    AdversarialPurificationPipelineOutput,
)

__all__ = ["AdversarialGuidedPurificationPipeline", "AdversarialPurificationPipelineOutput", "PurifiedClassifier"]
