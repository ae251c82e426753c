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


def _flatten_alpha(array: np.ndarray) -> np.ndarray:
    """(H, W, C) with an alpha channel (LA, RGBA) -> the colour channels, composited over a background of the
    opposite brightness to the ink (the opaque pixels), so a digit drawn on a transparent canvas keeps its contrast
    whatever its colour."""
    colour, alpha = array[..., :-1], array[..., -1:]
    if alpha.min() >= 1:
        return colour
    ink = float((colour.mean(-1, keepdims=True) * alpha).sum() / max(float(alpha.sum()), 1e-8))
    background = 1.0 if ink < 0.5 else 0.0
    return colour * alpha + background * (1 - alpha)


def to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """A [0, 1] (H, W) or (H, W, C) array as (H, W, `channels`): alpha composited away, colour to grey by luminance
    (ITU-R 601, as PIL's "L") for one-channel models, grey repeated for three-channel ones."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"An image must be grey, grey+alpha, RGB or RGBA, got an array of shape {array.shape}.")
    if array.shape[-1] in (2, 4):
        array = _flatten_alpha(array)
    if array.shape[-1] == channels:
        return array
    if channels == 1:
        return (array @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    if channels == 3 and array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    raise ValueError(f"Cannot turn a {array.shape[-1]}-channel image into {channels} channels.")


def pil_images_to_tensor(images, channels: int) -> torch.Tensor:
    """PIL images (already checked for size) as a (B, `channels`, H, W) [0, 1] batch, each scaled by its pixel type
    (`image_to_unit_range`: 16-bit / 65535, float as given), never by PIL's 8-bit conversion."""
    from ..utils.images import image_to_unit_range

    images = images if isinstance(images, (list, tuple)) else [images]
    arrays = [to_channels(image_to_unit_range(image, where=f"image {i}"), channels) for i, image in enumerate(images)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# MNIST's digits sit, light on black, in a 20x20 box centred in the 28x28 frame.
DIGIT_BOX_FRACTION = 20 / 28


def prepare_user_image(image, size: int, channels: int, *, light_on_dark: bool | None = None,
                       where: str = "the image") -> tuple[torch.Tensor, list[str]]:
    """
    Any image a user has (a PIL image of any mode, including 16-bit "I;16"/"I", float "F", RGBA/LA/P, or a numpy
    array) as a `(channels, size, size)` [0, 1] tensor for a pipeline, with the list of what was done to it.

    Pixel values are scaled by their type (`image_to_unit_range`); alpha is composited away; colour becomes grey for
    one-channel models. For light-on-dark models (default: one-channel ones, as MNIST), a light background (median
    of the border above 0.5) is inverted, and an image of another size has its digit cropped to its ink and centred
    in MNIST's 20/28 box. Otherwise an image of another size is padded to a square with its border colour (keeping
    the aspect) and resized. An image already `size` x `size` in the right polarity is left as it is.

    Example:

    ```py
    >>> from PIL import Image
    >>> from diffusers_agdm.pipelines.inputs import prepare_user_image
    >>> paper = Image.new("L", (280, 280), 255)  # a dark digit on white paper: a black bar
    >>> paper.paste(0, (130, 40, 150, 240))
    >>> tensor, notes = prepare_user_image(paper, 28, 1)
    >>> tuple(tensor.shape)
    (1, 28, 28)
    >>> ", ".join(notes)
    'inverted (dark digit on light background), resized 280x280 -> 28x28 (digit centred in a 20x20 box)'
    ```
    """
    from PIL import Image

    from ..utils.images import image_to_unit_range

    array = to_channels(image_to_unit_range(image, where=where), channels)
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"{where} is empty ({width}x{height}).")
    light_on_dark = channels == 1 if light_on_dark is None else light_on_dark
    notes = []
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]]).mean(-1)
    if light_on_dark and np.median(border) > 0.5:
        array, border = 1 - array, 1 - border
        notes.append("inverted (dark digit on light background)")
    if (height, width) != (size, size):
        if light_on_dark:
            ink = array.max(-1) > np.median(border) + 0.1
            if ink.any():  # crop to the digit, as MNIST's digits were
                rows, cols = np.nonzero(ink)
                array = array[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            box = max(1, round(size * DIGIT_BOX_FRACTION))
        else:
            box = size
        side = max(array.shape[:2])
        fill = np.median(border) if light_on_dark else border.mean()
        square = np.full((side, side, channels), fill, np.float32)
        top, left = (side - array.shape[0]) // 2, (side - array.shape[1]) // 2
        square[top:top + array.shape[0], left:left + array.shape[1]] = array
        resized = np.stack([np.asarray(Image.fromarray(square[..., c]).resize((box, box), Image.LANCZOS))
                            for c in range(channels)], -1)
        array = np.full((size, size, channels), fill, np.float32)
        offset = (size - box) // 2
        array[offset:offset + box, offset:offset + box] = resized
        detail = f" (digit centred in a {box}x{box} box)" if light_on_dark else \
            (" (padded to a square)" if height != width else "")
        notes.append(f"resized {width}x{height} -> {size}x{size}{detail}")
    tensor = torch.from_numpy(np.clip(array, 0, 1)).permute(2, 0, 1).contiguous()
    return tensor, notes
