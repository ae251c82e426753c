"""What the three training scripts in `training/` share: arguments, data, the accelerate loop with EMA and
checkpoints, the adversarial (TRADES) loss of the guidance network, model cards and Hub uploads."""

from .args import add_data_args, add_hub_args, add_training_args, dataset_label, parse_training_args
from .data import load_training_data
from .loop import TrainingResult, build_accelerator, train_loop
from .trades import diffuse01, kl_pgd, trades_loss

__all__ = [
    "TrainingResult",
    "add_data_args",
    "add_hub_args",
    "add_training_args",
    "dataset_label",
    "parse_training_args",
    "build_accelerator",
    "diffuse01",
    "kl_pgd",
    "load_training_data",
    "train_loop",
    "trades_loss",
]
