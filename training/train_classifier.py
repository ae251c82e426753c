#!/usr/bin/env python
"""Train the small downstream classifier (`SmallImageClassifier`, standard training) that purification protects.

    accelerate launch training/train_classifier.py --dataset_name mnist --output_dir runs/classifier-mnist
"""

import time

import torch
import torch.nn.functional as F

from diffusers_agdm import SmallImageClassifier
from diffusers_agdm.training_utils import (
    add_data_args,
    add_hub_args,
    add_training_args,
    build_accelerator,
    dataset_label,
    load_training_data,
    parse_training_args,
    train_loop,
)
from diffusers_agdm.training_utils.argtypes import comma_list, finite, int_at_least
from diffusers_agdm.training_utils.augment import random_affine
from diffusers_agdm.training_utils.output import save_and_push
from diffusers_agdm.utils.flags import ArgumentParser


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    add_training_args(parser, batch_size=64, max_train_steps=1000, learning_rate=1e-3, use_ema=False,
                      checkpointing_steps=500)
    add_data_args(parser, eval_samples=500)
    add_hub_args(parser)
    g = parser.add_argument_group("model")
    g.add_argument("--block_out_channels", type=comma_list(int_at_least(1)), default=(32, 64),
                   help="Widths of the convolution blocks, comma-separated (e.g. 32,64).")
    g.add_argument("--hidden_dim", type=int_at_least(1), default=128, help="Width of the hidden layer before the "
                   "logits.")
    a = parser.add_argument_group("augmentation")
    a.add_argument("--augment_shift", type=finite(0), default=2.0, help="Random shift in pixels (0: off).")
    a.add_argument("--augment_rotation", type=finite(0, 180), default=10.0,
                   help="Random rotation in degrees (0: off).")
    a.add_argument("--augment_scale", type=finite(0, 1), default=0.1,
                   help="Random scaling, as a fraction (0: off).")
    return parse_training_args(parser, argv, __file__, check=_check_args)


def _check_args(args):
    if args.augment_scale >= 1:
        raise ValueError(f"--augment_scale must be < 1 (a fraction of the image size), got {args.augment_scale}.")


def accuracy(model, data, batch_size: int = 500) -> float:
    with torch.no_grad():
        correct = sum((model(data.images[i:i + batch_size].to(model.device)).logits.argmax(1).cpu()
                       == data.labels[i:i + batch_size]).sum().item() for i in range(0, len(data), batch_size))
    return correct / len(data)


def main(argv=None):
    args = parse_args(argv)
    accelerator = build_accelerator(args)
    train_data, monitor = load_training_data(args, what="the classifier")
    num_classes = train_data.num_classes
    classifier = SmallImageClassifier(
        in_channels=train_data.images.shape[1], sample_size=train_data.images.shape[2], num_classes=num_classes,
        block_out_channels=args.block_out_channels, hidden_dim=args.hidden_dim,
        labels=train_data.class_names or None)

    def loss_fn(model, images, labels):
        images = random_affine(images, args.augment_shift, args.augment_rotation, args.augment_scale)
        logits = model(images).logits
        return F.cross_entropy(logits, labels), {"train_accuracy": (logits.argmax(1) == labels).float().mean().item()}

    eval_fn = (lambda model: {"accuracy": accuracy(model, monitor)}) if monitor is not None else None
    start = time.time()
    result = train_loop(accelerator, args, classifier, train_data, loss_fn, model_name="classifier",
                        project_name="train_classifier", eval_fn=eval_fn)
    save_and_push(accelerator, args, result.model, result, time.time() - start, dataset=dataset_label(args),
                  description="The downstream classifier (standard training, not robust on its own): the model an "
                              "AGDM purification pipeline protects. Inputs are images in [0, 1].")


if __name__ == "__main__":
    import sys

    from diffusers_agdm.exits import run_main

    sys.exit(run_main(main, "train_classifier.py"))  # 0 done, 2 bad input or environment, 3 a bug, 130 interrupted
