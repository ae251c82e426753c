"""Checking the images a pipeline call takes, in every form it accepts, before any work starts."""

import numpy as np
import PIL.Image
import torch


def check_image_input(image, channels: int, size: int) -> int:
    """Validate images in any form a pipeline call takes (a torch.Tensor, numpy array or PIL image, or a list of one
    kind of them) for a UNet on `channels` x `size` x `size` images in [0, 1]; return the batch size."""
    if isinstance(image, (list, tuple)):
        if len(image) == 0:
            raise ValueError("The image batch is empty.")
        kinds = {type(item).__name__ if not isinstance(item, PIL.Image.Image) else "PIL.Image" for item in image}
        if len(kinds) > 1:
            raise ValueError(f"A list of images must hold one kind of image, got a mix of {sorted(kinds)}.")
        return sum(_check_image_item(item, channels, size) for item in image)
    return _check_image_item(image, channels, size)


def _check_image_item(item, channels: int, size: int) -> int:
    if isinstance(item, PIL.Image.Image):
        if item.size != (size, size):
            raise ValueError(f"The UNet expects {size}x{size} images, got {item.size[0]}x{item.size[1]}.")
        return 1
    if isinstance(item, np.ndarray):
        if not np.issubdtype(item.dtype, np.floating):
            raise ValueError(f"numpy images must be floating point in [0, 1], got dtype {item.dtype}.")
        if item.ndim not in (3, 4):
            raise ValueError(f"numpy images must have shape (batch, height, width, channels) or (height, width, "
                             f"channels), got {item.shape}.")
        batch, (height, width, got_channels) = (1 if item.ndim == 3 else item.shape[0]), item.shape[-3:]
        values = torch.from_numpy(np.ascontiguousarray(item))
    elif torch.is_tensor(item):
        if not item.is_floating_point():
            raise ValueError(f"Images must be floating point in [0, 1], got dtype {item.dtype}.")
        if item.ndim not in (3, 4):
            raise ValueError(f"Images must have shape (batch, channels, height, width) or (channels, height, "
                             f"width), got {tuple(item.shape)}.")
        batch, (got_channels, height, width) = (1 if item.ndim == 3 else item.shape[0]), item.shape[-3:]
        values = item
    else:
        raise ValueError(f"Expected a torch.Tensor, numpy array or PIL image (or a list of them), got "
                         f"{type(item).__name__}.")
    if batch == 0:
        raise ValueError("The image batch is empty.")
    if got_channels != channels:
        raise ValueError(f"The UNet expects {channels}-channel images, got {got_channels} channels.")
    if (height, width) != (size, size):
        raise ValueError(f"The UNet expects {size}x{size} images, got {height}x{width}.")
    values = values.detach()
    if not torch.isfinite(values).all():
        raise ValueError("Images contain NaN or inf values.")
    lo, hi = values.min().item(), values.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"Images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}].")
    return batch
