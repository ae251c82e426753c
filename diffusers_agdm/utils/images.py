"""The one place an image's pixel values become [0, 1] floats: scaled by the pixel *type* (8-bit / 255, 16-bit /
65535, floating point as given, booleans 0/1), never by the image's own maximum. The data loader, `pipe(PIL image)`,
`agdm purify` and the demo all read images through `image_to_unit_range`."""

import numpy as np


def image_to_unit_range(item, where: str = "an image") -> np.ndarray:
    """A PIL image or an array as float32 in [0, 1], (H, W) or (H, W, C), scaled by its *type*: 8-bit / 255, 16-bit
    / 65535, floating point as is, never by the image's own maximum (a dark image must stay dark). Raises a
    `ValueError` naming `where` for a value outside the type's range or an unsupported type."""
    sixteen_bit = False
    if hasattr(item, "mode") and hasattr(item, "convert"):  # a PIL image
        if item.mode == "1":
            item = item.convert("L")
        elif item.mode == "P":
            item = item.convert("RGBA" if "transparency" in item.info else "RGB")
        elif item.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):  # colour spaces other than RGB (e.g. CMYK JPEGs)
            item = item.convert("RGB")
        elif item.mode in ("La", "RGBa"):  # premultiplied alpha
            item = item.convert("LA" if item.mode == "La" else "RGBA")
        sixteen_bit = item.mode.startswith("I;16") or item.mode == "I"  # PIL opens 16-bit PNGs as I;16 or I
    array = np.asarray(item)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16 or (sixteen_bit and np.issubdtype(array.dtype, np.integer)):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"{where} is a 16-bit image with values in [{lo}, {hi}], outside [0, 65535].")
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{where} contains NaN or inf values.")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"{where} is a floating-point image with values in [{array.min():.3g}, "
                             f"{array.max():.3g}]; floating-point images must lie in [0, 1].")
        return array
    raise ValueError(f"{where} has pixel type {array.dtype}; 8-bit, 16-bit or floating-point images in [0, 1] are "
                     "supported.")
