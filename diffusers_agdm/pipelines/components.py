"""Checking the pipeline's components as they are set (class, shapes, class counts, finite weights), and reading a
classifier's output: the parts of the pipeline that do not depend on a call."""

import torch
from diffusers import UNet2DModel
from torch import nn

from ..models.guidance import GuidanceModel
from ..utils.models import sample_size
from ..utils.schedule import check_scheduler

COMPONENT_NAMES = ("unet", "scheduler", "guidance", "classifier", "feature_extractor")


def classifier_num_classes(classifier) -> int | None:
    """The number of classes a classifier's config declares (`num_classes` or `num_labels`), or None."""
    config = getattr(classifier, "config", None)
    if config is None:
        return None
    for key in ("num_classes", "num_labels"):
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value is not None:
            return int(value)
    return None


def logits_of(output) -> torch.Tensor:
    """The logits of a classifier's output: a tensor, an output with `.logits`, or a tuple whose first item they
    are."""
    if torch.is_tensor(output):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def check_weights(name: str, module: nn.Module) -> None:
    """Uninitialised (meta) or non-finite weights, caught once when a component is set rather than as NaN images."""
    for param_name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            raise ValueError(f"`{name}` has uninitialised weights ({param_name}): its checkpoint does not match its "
                             f"class {type(module).__name__}.")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"`{name}` has non-finite weights ({param_name}): its weight file is corrupted; "
                             "re-download or re-train it.")


def check_components(components: dict, new: dict) -> None:
    """Raise a `ValueError` naming the problem unless `components` (name -> component, None when not set) fit
    together; the weights of those in `new` (the ones being set) are checked too."""
    unet, scheduler, guidance, classifier = (components.get(k) for k in COMPONENT_NAMES[:4])
    expected = {"unet": UNet2DModel, "guidance": GuidanceModel, "classifier": nn.Module}
    for name, cls in expected.items():
        value = components.get(name)
        if value is not None and not isinstance(value, cls):
            raise ValueError(f"`{name}` must be a {cls.__name__}, got {type(value).__name__}; check the class "
                             f"model_index.json names for `{name}`.")
    if isinstance(classifier, GuidanceModel):
        raise ValueError("`classifier` is a GuidanceModel; the downstream classifier takes [0, 1] images only "
                         "(e.g. a SmallImageClassifier).")
    if scheduler is not None:
        check_scheduler(scheduler)
    if unet is not None and guidance is not None:
        g, size = guidance.config, sample_size(unet)
        if (g.in_channels, g.sample_size) != (unet.config.in_channels, size):
            raise ValueError(f"The guidance model sees {g.in_channels}x{g.sample_size}x{g.sample_size} images "
                             f"but the UNet works on {unet.config.in_channels}x{size}x{size}.")
    if classifier is not None and guidance is not None:
        n_clf, n_guid = classifier_num_classes(classifier), guidance.config.num_classes
        if n_clf is not None and n_clf != n_guid:
            raise ValueError(f"The classifier predicts {n_clf} classes but the guidance model {n_guid}; their "
                             "labels must match.")
    for name, value in new.items():
        if isinstance(value, nn.Module):
            check_weights(name, value)
