from .classifier import ImageClassifierOutput, SmallImageClassifier
from .guidance import GuidanceModel, GuidanceModelOutput

__all__ = ["GuidanceModel", "GuidanceModelOutput", "SmallImageClassifier", "ImageClassifierOutput"]
