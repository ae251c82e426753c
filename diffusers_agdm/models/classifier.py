"""A small downstream image classifier that saves and loads like every other Diffusers component."""

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (ModelMixin must be visible here for the loader)
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class ImageClassifierOutput(BaseOutput):
    """
    Args:
        logits (`torch.Tensor` of shape `(batch_size, num_classes)`): Class logits.
    """

    logits: torch.Tensor


class SmallImageClassifier(ModelMixin, ConfigMixin):
    r"""
    A plain CNN classifier on images in [0, 1] (normalisation happens inside, so attacks work in pixel space).
    It is the frozen downstream classifier that purification protects.

    Args:
        in_channels (`int`, defaults to 1): Image channels.
        sample_size (`int`, defaults to 28): Image height and width.
        num_classes (`int`, defaults to 10): Number of classes.
        block_out_channels (`tuple[int]`, defaults to `(32, 64)`): Width of each conv stage (each halves the size).
        hidden_dim (`int`, defaults to 128): Width of the fully connected layer.
        mean (`float`, defaults to 0.5), std (`float`, defaults to 0.5): Input normalisation applied inside.
        labels (`list[str]`, *optional*): Class names, index-aligned with the logits.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm import SmallImageClassifier

    >>> clf = SmallImageClassifier(in_channels=1, sample_size=28, num_classes=10)
    >>> clf(torch.rand(2, 1, 28, 28)).logits.shape
    torch.Size([2, 10])
    ```
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        sample_size: int = 28,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (32, 64),
        hidden_dim: int = 128,
        mean: float = 0.5,
        std: float = 0.5,
        labels: list[str] | None = None,
    ):
        super().__init__()
        if labels is not None and len(labels) != num_classes:
            raise ValueError(f"`labels` has {len(labels)} names but `num_classes` is {num_classes}.")
        layers, channels, size = [], in_channels, sample_size
        for out_channels in block_out_channels:
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU(),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels, size = out_channels, size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, hidden_dim), nn.ReLU(),
                                  nn.Linear(hidden_dim, num_classes))

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> ImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch, in_channels, sample_size, sample_size)`): Images in [0, 1].
        """
        logits = self.head(self.features((pixel_values - self.config.mean) / self.config.std))
        if not return_dict:
            return (logits,)
        return ImageClassifierOutput(logits=logits)
