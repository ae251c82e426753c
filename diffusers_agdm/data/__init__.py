"""Labelled image datasets for training and evaluation: offline built-ins, Hub datasets and image folders."""

from .datasets import (
    BUILTIN_DATASETS,
    MNIST_HELDOUT_PER_CLASS,
    MNIST_VALIDATION_PER_CLASS,
    LabelledImages,
    check_images_fit,
    load_labelled_images,
)

__all__ = [
    "BUILTIN_DATASETS",
    "MNIST_HELDOUT_PER_CLASS",
    "MNIST_VALIDATION_PER_CLASS",
    "LabelledImages",
    "check_images_fit",
    "load_labelled_images",
]
