"""Data augmentation for the small-data classifier (MNIST-sized sets overfit without it)."""

import math

import torch
import torch.nn.functional as F


def random_affine(images: torch.Tensor, max_shift: float = 2.0, max_rotation: float = 10.0,
                  max_scale: float = 0.1) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels, rotate it by up to `max_rotation` degrees and scale it by up to
    `max_scale`, drawing from the global RNG (restored exactly on resume). Zero padding, bilinear sampling."""
    n, _, h, w = images.shape
    if n == 0 or (max_shift == 0 and max_rotation == 0 and max_scale == 0):
        return images
    device = images.device
    angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(max_rotation)
    scale = 1 + (torch.rand(n, device=device) * 2 - 1) * max_scale
    shift = (torch.rand(n, 2, device=device) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1),
                         torch.stack([sin, cos, shift[:, 1] * 2 / h], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
