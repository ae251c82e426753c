"""Loading what a user names: a pipeline folder or Hub id, a diffusion model to build on, a classifier."""

import json
import os
from pathlib import Path

from .utils.io import file_sha256

# A pipeline folder may list its weight files' SHA-256 here (the embedded default does); our loaders check them, so a
# flipped byte is an error naming the file rather than a silently worse model.
WEIGHT_HASHES = "weights.sha256.json"


def write_weight_hashes(folder) -> Path:
    """Record the SHA-256 of every `*.safetensors` under `folder` in `<folder>/weights.sha256.json`."""
    from .utils.io import atomic_write_json

    folder = Path(folder)
    hashes = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*.safetensors"))}
    return atomic_write_json(folder / WEIGHT_HASHES, hashes)


def verify_weight_hashes(folder) -> None:
    """Raise a `ValueError` naming the file when a weight file of `folder` differs from the hash its
    `weights.sha256.json` records (or is missing); a folder without that file is left as it is."""
    folder = Path(folder)
    listing = folder / WEIGHT_HASHES
    if not listing.is_file():
        return
    try:
        hashes = json.loads(listing.read_text())
        items = list(hashes.items())
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{listing}: unreadable ({err}); reinstall diffusers-agdm or restore the folder.") from None
    for name, expected in items:
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{file}: missing (listed in {listing}); reinstall diffusers-agdm or restore the folder.")
        if file_sha256(file) != expected:
            raise ValueError(f"{file}: its content differs from the SHA-256 recorded in {listing} (a damaged or "
                             "altered file); reinstall diffusers-agdm or restore the folder.")


def _local_json(name_or_path, filename: str, subfolder: str | None = None) -> dict | None:
    path = Path(name_or_path, subfolder or "", filename)
    return json.loads(path.read_text()) if path.is_file() else None


def check_component_folders(folder, given=()) -> None:
    """
    Raise a `ValueError` naming the component when `folder`'s model_index.json lists it but its subfolder is missing
    (Diffusers would name only the pipeline's root). Components in `given` (passed to `from_pretrained`) are not
    loaded from the folder and need none. A folder without model_index.json is left to the loader.
    """
    index = _local_json(folder, "model_index.json")
    if index is None:
        return
    for name, entry in index.items():
        if name.startswith("_") or name in given or not isinstance(entry, list) or len(entry) != 2:
            continue
        if entry[0] is not None and not Path(folder, name).is_dir():
            raise ValueError(f"{folder} lists `{name}` ({entry[1]}) in model_index.json but has no `{name}/` folder; "
                             f"restore it, or pass `{name}=...` (or `{name}=None` if it is optional) to "
                             "`from_pretrained`.")


def load_diffusion_source(name_or_path: str, **kwargs):
    """The UNet, scheduler and (if any) classifier of a diffusion pipeline folder or Hub id: one of ours, or any
    Diffusers pipeline with `unet` and `scheduler` (such as `DDPMPipeline`, e.g. google/ddpm-cifar10-32)."""
    from diffusers import DiffusionPipeline

    import diffusers_agdm  # noqa: F401  (registers our pipeline class)

    if os.path.isdir(name_or_path):
        check_component_folders(name_or_path, given=kwargs)
        verify_weight_hashes(name_or_path)
    pipe = DiffusionPipeline.from_pretrained(name_or_path, **kwargs)
    for required in ("unet", "scheduler"):
        if getattr(pipe, required, None) is None:
            raise ValueError(f"{name_or_path} has no {required}; a diffusion pipeline with a UNet and a scheduler "
                             "is needed.")
    return pipe


def load_classifier(name_or_path: str | os.PathLike, **kwargs):
    """A classifier from a folder or Hub id: our `SmallImageClassifier` (also the `classifier/` of one of our
    pipelines) or a `transformers` image-classification model."""
    from .models import SmallImageClassifier

    subfolder = None
    if _local_json(name_or_path, "model_index.json") is not None:
        subfolder = "classifier"
    config = _local_json(name_or_path, "config.json", subfolder)
    if config is not None and config.get("_class_name") == SmallImageClassifier.__name__:
        return SmallImageClassifier.from_pretrained(name_or_path, subfolder=subfolder, **kwargs)
    if config is not None and "architectures" not in config and "model_type" not in config:
        raise ValueError(f"{name_or_path} holds a {config.get('_class_name', 'model')} config, not a classifier.")
    try:
        return SmallImageClassifier.from_pretrained(name_or_path, subfolder=subfolder, **kwargs)
    except (OSError, EnvironmentError, ValueError):
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs)
