"""Tiny components for fast tests (built in the tests, never downloaded)."""

import hashlib
import os
import shutil
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from diffusers_agdm import AdversarialGuidedPurificationPipeline, GuidanceModel, SmallImageClassifier

SIZE, CHANNELS, CLASSES = 8, 1, 4


def dummy_unet(prediction_type_channels: int = CHANNELS, size: int = SIZE) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=prediction_type_channels, out_channels=prediction_type_channels,
                       block_out_channels=(4, 8), norm_num_groups=4, layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def dummy_guidance(num_classes: int = CLASSES, channels: int = CHANNELS, size: int = SIZE) -> GuidanceModel:
    torch.manual_seed(1)
    return GuidanceModel(in_channels=channels, sample_size=size, num_classes=num_classes, block_out_channels=(4, 8),
                         feature_dim=8, norm_num_groups=4)


def dummy_classifier(num_classes: int = CLASSES, channels: int = CHANNELS, size: int = SIZE) -> SmallImageClassifier:
    torch.manual_seed(2)
    return SmallImageClassifier(in_channels=channels, sample_size=size, num_classes=num_classes,
                                block_out_channels=(4,), hidden_dim=8)


def dummy_scheduler(kind: str = "ddim", prediction_type: str = "epsilon", clip_sample: bool = True):
    cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[kind]
    return cls(num_train_timesteps=100, prediction_type=prediction_type, clip_sample=clip_sample)


def dummy_pipeline(kind: str = "ddim", prediction_type: str = "epsilon", clip_sample: bool = True,
                   with_classifier: bool = True, **config) -> AdversarialGuidedPurificationPipeline:
    config = {"strength": 0.3, "num_inference_steps": 3, "guidance_scale": 5.0, **config}
    pipe = AdversarialGuidedPurificationPipeline(
        unet=dummy_unet(), scheduler=dummy_scheduler(kind, prediction_type, clip_sample), guidance=dummy_guidance(),
        classifier=dummy_classifier() if with_classifier else None, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_diffusion_source(path) -> Path:
    """A tiny diffusion pipeline (UNet + DDIM, no guidance, no classifier) saved to `path`: what the guidance
    training script builds on."""
    pipe = dummy_pipeline(with_classifier=False)
    AdversarialGuidedPurificationPipeline(unet=pipe.unet, scheduler=pipe.scheduler, guidance=None,
                                          strength=0.3, num_inference_steps=3).save_pretrained(path)
    return Path(path)


def dummy_images(batch: int = 2, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(batch, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def put_in_hub_cache(folder, repo_id: str, cache_dir) -> str:
    """Lay `folder` out as the Hub cache would after a download of `repo_id` (refs/main -> snapshots/<sha>)."""
    digest = hashlib.sha1(repo_id.encode() + str(sorted(os.listdir(folder))).encode()).hexdigest()
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / digest
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(folder, snapshot)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(digest)
    return digest


def repo_files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)).replace(os.sep, "/") for p in Path(folder).rglob("*") if p.is_file())
