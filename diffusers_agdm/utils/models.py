"""Reading model configs the same way everywhere."""


def sample_size(model_or_config) -> int:
    """The height (= width) of a model's square images: its config's `sample_size`, an int or an (h, w) pair as
    Diffusers allows. Raises a `ValueError` for non-square sizes, which no part of this package supports."""
    config = getattr(model_or_config, "config", model_or_config)
    size = config["sample_size"] if isinstance(config, dict) else config.sample_size
    if isinstance(size, int):
        return size
    height, width = size
    if height != width:
        raise ValueError(f"Only square images are supported, got sample_size {tuple(size)}.")
    return int(height)
