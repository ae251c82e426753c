"""The forward diffusion process, written once (purification's start, the guidance reference x'_t, TRADES): `diffuse`
for samples in the UNet's [-1, 1] space, `diffuse01` for [0, 1] images."""

import torch


def diffuse(x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, t) -> torch.Tensor:
    """
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise: `x0` (in the UNet's [-1, 1] space) diffused to timestep `t`.

    Args:
        x0 (`torch.Tensor` of shape `(B, ...)`): Clean samples.
        noise (`torch.Tensor`, same shape): The Gaussian noise eps.
        alphas_cumprod (`torch.Tensor` of shape `(T,)`): abar of every training timestep (`scheduler.alphas_cumprod`).
        t (`int` or `torch.Tensor`): One timestep for the whole batch, or one per sample.

    Computed in `x0`'s dtype, as Diffusers' `add_noise` does; differentiable in `x0` and `noise`.
    """
    index = torch.as_tensor(t, device=x0.device).long().reshape(-1)
    abar = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[index].reshape(-1, *([1] * (x0.ndim - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def diffuse01(images01: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, t) -> torch.Tensor:
    """[`diffuse`] for [0, 1] images (the attacker's space), mapped to [-1, 1] first."""
    return diffuse(images01 * 2 - 1, noise, alphas_cumprod, t)
