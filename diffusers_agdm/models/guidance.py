"""The auxiliary guidance network of AGDM: a small time-conditioned classifier whose features steer purification."""

from dataclasses import dataclass

import torch

# The diffusers loader resolves component classes by looking up `ModelMixin` in the component's module,
# so these names must be importable from here (Diffusers 0.42's `_get_library_or_raise` / `load_sub_model`).
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class GuidanceModelOutput(BaseOutput):
    """
    Output of [`GuidanceModel`].

    Args:
        features (`torch.Tensor` of shape `(batch_size, feature_dim)`):
            The latent representation h_phi(x_t, t) used by the latent-distance guidance term.
        logits (`torch.Tensor` of shape `(batch_size, num_classes)`):
            The class logits f_phi(x_t, t) used by the class-conditional guidance term.
    """

    features: torch.Tensor
    logits: torch.Tensor


class _TimeConditionedBlock(nn.Module):
    """Conv block with a timestep-embedding shift; `stride=2` halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.time_proj = nn.Linear(temb_channels, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = h + self.time_proj(temb)[:, :, None, None]
        h = self.norm2(self.conv2(h))
        return self.act(h + self.skip(x))


class GuidanceModel(ModelMixin, ConfigMixin):
    r"""
    The guidance network phi of AGDM (arXiv 2403.16067): an encoder conditioned on the diffusion timestep that
    returns latent features h_phi(x_t, t) and class logits f_phi(x_t, t). It is trained adversarially (TRADES on
    diffused inputs) while the diffusion model stays frozen; its gradients steer the reverse process.

    Args:
        in_channels (`int`, defaults to 3): Channels of the images it sees (the UNet's `in_channels`).
        sample_size (`int`, defaults to 32): Height and width of the images it sees (the UNet's `sample_size`).
        num_classes (`int`, defaults to 10): Number of classes of the head f_phi.
        block_out_channels (`tuple[int]`, defaults to `(32, 64, 128)`):
            Width of each block; its length is the depth. Every block after the first halves the resolution.
        feature_dim (`int`, defaults to 128): Size of the latent features h_phi.
        num_train_timesteps (`int`, defaults to 1000): Length of the diffusion schedule the timesteps come from.
        norm_num_groups (`int`, defaults to 8): Groups of every GroupNorm (must divide every block width).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_agdm import GuidanceModel

    >>> phi = GuidanceModel(in_channels=1, sample_size=28, num_classes=10, block_out_channels=(16, 32))
    >>> out = phi(torch.randn(4, 1, 28, 28), timestep=torch.tensor([0, 10, 100, 300]))
    >>> out.features.shape, out.logits.shape
    (torch.Size([4, 128]), torch.Size([4, 10]))
    ```
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        sample_size: int = 32,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        feature_dim: int = 128,
        num_train_timesteps: int = 1000,
        norm_num_groups: int = 8,
    ):
        super().__init__()
        if len(block_out_channels) < 1:
            raise ValueError("`block_out_channels` needs at least one block.")
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(f"every entry of `block_out_channels` {block_out_channels} must be divisible by "
                             f"`norm_num_groups` ({norm_num_groups}).")
        temb_channels = 4 * block_out_channels[0]
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb_channels)
        self.blocks = nn.ModuleList()
        channels = in_channels
        for i, out_channels in enumerate(block_out_channels):
            stride = 1 if i == 0 else 2
            self.blocks.append(_TimeConditionedBlock(channels, out_channels, temb_channels, norm_num_groups, stride))
            channels = out_channels
        self.to_features = nn.Linear(channels, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.gradient_checkpointing = False

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, return_dict: bool = True
    ) -> GuidanceModelOutput | tuple[torch.Tensor, torch.Tensor]:
        r"""
        Args:
            sample (`torch.Tensor` of shape `(batch, in_channels, sample_size, sample_size)`):
                A noisy image x_t in the diffusion model's space ([-1, 1] at t = 0).
            timestep (`torch.Tensor` or `int`): The diffusion step t of `sample`, one per image or one for all.
            return_dict (`bool`, defaults to `True`): Return a [`GuidanceModelOutput`] instead of a tuple.
        """
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1)
        if timestep.numel() == 1:
            timestep = timestep.expand(sample.shape[0])
        temb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))

        h = sample
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h = self._gradient_checkpointing_func(block, h, temb)
            else:
                h = block(h, temb)
        features = self.to_features(h.mean(dim=(2, 3)))
        logits = self.head(features)
        if not return_dict:
            return features, logits
        return GuidanceModelOutput(features=features, logits=logits)
