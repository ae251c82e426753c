"""The embedded default: a small trained MNIST purification pipeline that ships inside the package."""

from pathlib import Path

DEFAULT_PIPELINE_NAME = "agdm-mnist"
# The first image of the official MNIST test set (a 7, as the foolbox wheel ships it): never seen in training, and
# the input of `agdm purify --sample`.
SAMPLE_IMAGE_NAME = "digit_7.png"


def default_pipeline_path() -> Path:
    """The folder of the embedded default pipeline (`DiffusionPipeline.from_pretrained` loads it)."""
    path = Path(__file__).parent / "pretrained" / DEFAULT_PIPELINE_NAME
    if not (path / "model_index.json").is_file():
        raise ValueError(f"The embedded default pipeline is missing from {path}; reinstall diffusers-agdm.")
    return path


def sample_image_path() -> Path:
    """A real held-out MNIST test digit (a 7, 28x28 grey PNG) that ships inside the package: `agdm purify --sample`
    purifies it, and it is an input to try anything on without a dataset.

    Example:

    ```py
    >>> from diffusers_agdm import sample_image_path
    >>> sample_image_path().name
    'digit_7.png'
    ```
    """
    path = Path(__file__).parent / "assets" / SAMPLE_IMAGE_NAME
    if not path.is_file():
        raise ValueError(f"The sample digit is missing from {path}; reinstall diffusers-agdm.")
    return path


def load_pipeline(name_or_path: str | None = None, **kwargs):
    """Load a purification pipeline: a folder or Hub id, or the embedded default when `name_or_path` is None.

    Example:

    ```py
    >>> from diffusers_agdm import load_pipeline
    >>> pipe = load_pipeline()  # the embedded MNIST default, no download
    >>> type(pipe).__name__
    'AdversarialGuidedPurificationPipeline'
    ```
    """
    from .loading import verify_weight_hashes
    from .pipelines import AdversarialGuidedPurificationPipeline

    source = default_pipeline_path() if name_or_path is None else name_or_path
    if Path(source).is_dir():
        verify_weight_hashes(source)  # the default's weights.sha256.json (and any folder that has one)
    return AdversarialGuidedPurificationPipeline.from_pretrained(source, **kwargs)
