"""A CIFAR-style ResNet classifier as a Diffusers component, so a real CIFAR-10 classifier can sit in a pipeline."""

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (ModelMixin must be visible here for the loader)
from diffusers.configuration_utils import register_to_config
from torch import nn

from .classifier import ImageClassifierOutput


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(ModelMixin, ConfigMixin):
    r"""
    The ResNet of the CIFAR literature (3x3 stem, four stages of basic blocks, global 4x4 pooling) on images in
    [0, 1], with optional input normalisation. `num_blocks=(2, 2, 2, 2)` is ResNet-18. Its parameter names match the
    common CIFAR ResNet code, so such checkpoints load with `load_state_dict`.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm.models.resnet import CifarResNet

    >>> CifarResNet(num_blocks=(1, 1, 1, 1))(torch.rand(2, 3, 32, 32)).logits.shape
    torch.Size([2, 10])
    ```
    """

    @register_to_config
    def __init__(self, num_blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3,
                 sample_size: int = 32, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 labels: list[str] | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        planes_in, stages = 64, []
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(count):
                blocks.append(_BasicBlock(planes_in, planes, stride=2 if (i > 0 and j == 0) else 1))
                planes_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True):
        x = pixel_values
        if self.config.mean is not None:
            mean = torch.tensor(self.config.mean, device=x.device, dtype=x.dtype).reshape(1, -1, 1, 1)
            std = torch.tensor(self.config.std, device=x.device, dtype=x.dtype).reshape(1, -1, 1, 1)
            x = (x - mean) / std
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        logits = self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
        return ImageClassifierOutput(logits=logits) if return_dict else (logits,)


def load_pyautoattack_resnet18() -> CifarResNet:
    """The standard (non-robust) CIFAR-10 ResNet-18 that the `pyautoattack` wheel ships, read with
    `weights_only=True`, as a `CifarResNet` on [0, 1] images."""
    try:
        import pyautoattack  # noqa: F401
        root = Path(pyautoattack.__file__).parent
    except ImportError:
        import importlib.util

        spec = importlib.util.find_spec("pyautoattack")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError("The pyautoattack wheel is not installed: pip install pyautoattack==0.2.0") from None
        root = Path(list(spec.submodule_search_locations)[0])
    path = root / "examples" / "model_test.pt"
    if not path.is_file():
        raise ValueError(f"{path} is missing; install pyautoattack==0.2.0.")
    from ..data.datasets import CIFAR10_LABELS

    model = CifarResNet(num_blocks=(2, 2, 2, 2), num_classes=10, labels=CIFAR10_LABELS)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
