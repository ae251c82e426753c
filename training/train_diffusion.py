#!/usr/bin/env python
"""Train a small DDPM `UNet2DModel` on a labelled image dataset (labels unused): the diffusion model of the
embedded default. The result is a pipeline folder (UNet + scheduler, no guidance yet) that
`train_guidance.py --pretrained_model_name_or_path` builds on.

    accelerate launch training/train_diffusion.py --dataset_name mnist --output_dir runs/ddpm-mnist
"""

import argparse
import time

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from diffusers_agdm import AdversarialGuidedPurificationPipeline
from diffusers_agdm.settings_table import UNTUNED_DEFAULTS, add_purification_arguments
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
from diffusers_agdm.training_utils.argtypes import check_group_norm, check_steps_fit, comma_list, int_at_least
from diffusers_agdm.training_utils.output import save_and_push
from diffusers_agdm.utils.flags import ArgumentParser


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    add_training_args(parser, batch_size=64, max_train_steps=2000, learning_rate=1e-3)
    add_data_args(parser)
    add_hub_args(parser)
    g = parser.add_argument_group("model")
    g.add_argument("--block_out_channels", type=comma_list(int_at_least(1)), default=(32, 64, 64),
                   help="Widths of the UNet's blocks, comma-separated (e.g. 32,64,64).")
    g.add_argument("--layers_per_block", type=int_at_least(1), default=1, help="ResNet layers in each UNet block.")
    g.add_argument("--norm_num_groups", type=int_at_least(1), default=8, help="Must divide every block width.")
    g.add_argument("--attention", action=argparse.BooleanOptionalAction, default=True,
                   help="Self-attention at the lowest resolution.")
    g.add_argument("--num_train_timesteps", type=int_at_least(2), default=1000,
                   help="Length T of the diffusion schedule.")
    g.add_argument("--beta_schedule", type=str, default="linear",
                   choices=["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"],
                   help="The noise schedule's beta curve (Diffusers' `beta_schedule`).")
    g.add_argument("--prediction_type", type=str, default="epsilon", choices=["epsilon", "v_prediction"],
                   help="What the UNet learns to predict.")
    g.add_argument("--inference_scheduler", type=str, default="ddim", choices=["ddim", "ddpm"],
                   help="The scheduler the saved pipeline purifies with.")
    p = parser.add_argument_group("purification defaults saved with the pipeline")
    add_purification_arguments(p, ("strength", "num_inference_steps"), defaults=UNTUNED_DEFAULTS)
    return parse_training_args(parser, argv, __file__, check=_check_args)


def _check_args(args):
    check_group_norm(args.block_out_channels, args.norm_num_groups)
    check_steps_fit(args.strength, args.num_inference_steps, args.num_train_timesteps)


def build_unet(args, channels: int, size: int) -> UNet2DModel:
    widths = args.block_out_channels
    down = ["DownBlock2D"] * len(widths)
    up = ["UpBlock2D"] * len(widths)
    if args.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=widths,
                       layers_per_block=args.layers_per_block, norm_num_groups=args.norm_num_groups,
                       down_block_types=tuple(down), up_block_types=tuple(up))


def main(argv=None):
    args = parse_args(argv)
    accelerator = build_accelerator(args)
    train_data, _ = load_training_data(args, what="the UNet")
    unet = build_unet(args, train_data.images.shape[1], train_data.images.shape[2])
    noise_scheduler = DDPMScheduler(num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule,
                                    prediction_type=args.prediction_type)

    def loss_fn(model, images, labels):
        x0 = images * 2 - 1
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, args.num_train_timesteps, (x0.shape[0],), device=x0.device)
        x_t = noise_scheduler.add_noise(x0, noise, timesteps)
        target = noise if args.prediction_type == "epsilon" else noise_scheduler.get_velocity(x0, noise, timesteps)
        return F.mse_loss(model(x_t, timesteps).sample, target), {}

    _pipeline(args, unet, noise_scheduler).resolve_settings()  # the saved defaults, checked before training
    preview = train_data.images[:8]

    def purified_grid(model):  # the first training images and their unguided purification at t* = 0.3
        pipe = _pipeline(args, model, noise_scheduler)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            out = pipe.purify(preview.to(accelerator.device), strength=0.3, num_inference_steps=10,
                              guidance="none", generator=torch.Generator().manual_seed(0))
        return torch.cat([preview.to(out.device), out])

    start = time.time()
    result = train_loop(accelerator, args, unet, train_data, loss_fn, model_name="unet",
                        project_name="train_diffusion", image_fn=purified_grid)
    pipe = _pipeline(args, result.model, noise_scheduler)
    save_and_push(accelerator, args, pipe, result, time.time() - start, dataset=dataset_label(args),
                  description="The diffusion model only (no guidance network yet): train one on it with "
                              "`training/train_guidance.py`. Unguided purification (`guidance='none'`) works as is.")


def _pipeline(args, unet, noise_scheduler):
    scheduler_cls = DDIMScheduler if args.inference_scheduler == "ddim" else DDPMScheduler
    return AdversarialGuidedPurificationPipeline(
        unet=unet, scheduler=scheduler_cls.from_config(noise_scheduler.config), guidance=None,
        strength=args.strength, num_inference_steps=args.num_inference_steps, guidance_mode="none",
        guidance_scale=0.0)


if __name__ == "__main__":
    import sys

    from diffusers_agdm.exits import run_main

    sys.exit(run_main(main, "train_diffusion.py"))  # 0 done, 2 bad input or environment, 3 a bug, 130 interrupted
