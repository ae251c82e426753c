"""Training data: a labelled split, checked against the model before any step runs, minus the monitoring images."""

import argparse

from ..data import LabelledImages, check_images_fit, load_labelled_images
from .args import check_data_args


def load_training_data(args: argparse.Namespace, *, channels: int | None = None, size: int | None = None,
                       num_classes: int | None = None,
                       what: str = "the UNet") -> tuple[LabelledImages, LabelledImages | None]:
    """Return (train, monitor): the training images and the `--eval_samples` images held back from the end of the
    training split to measure progress. Raises `ValueError` naming the problem (missing column, image size or
    channels that do not fit the model, labels outside its classes, a held-out split) before training starts."""
    check_data_args(args)  # again, for callers that build `args` without parse_training_args
    data = load_labelled_images(args.dataset_name, args.split, dataset_config_name=args.dataset_config_name,
                                data_dir=args.train_data_dir, image_column=args.image_column,
                                label_column=args.label_column, cache_dir=args.cache_dir)
    if channels is None or size is None:  # the model will be built to fit the data: it only has to be square
        if len(data) and data.images.shape[2] != data.images.shape[3]:
            raise ValueError(f"{data.name} has {data.images.shape[2]}x{data.images.shape[3]} images; a square size "
                             "is needed.")
        channels, size = data.images.shape[1], data.images.shape[2]
    check_images_fit(data, channels, size, num_classes, what=what)
    monitor = None
    if args.eval_samples:
        if args.eval_samples >= len(data):
            raise ValueError(f"--eval_samples {args.eval_samples} leaves no training images out of {len(data)}.")
        monitor = data.subset(len(data) - args.eval_samples)
        data = data.subset(0, len(data) - args.eval_samples)
    if args.max_train_samples is not None:
        if args.max_train_samples > len(data):
            raise ValueError(f"--max_train_samples {args.max_train_samples} is more than the {len(data)} training "
                             f"images of {data.name}.")
        data = data.subset(0, args.max_train_samples)
    return data, monitor
