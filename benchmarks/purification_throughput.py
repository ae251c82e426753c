"""Purification throughput: images per second for unguided, latent-guided and pixel-guided purification at the same
t*, steps and batch size, and the guided / unguided time ratio (target: at most `TARGET_RATIO`, 1.15x). All modes run
in one process, interleaved over repeats, so the ratio compares like with like.

    python benchmarks/purification_throughput.py            # the embedded default
    python benchmarks/purification_throughput.py --pipeline path/or/hub-id --batch_size 64 --repeats 5

The same is measured on google/ddpm-cifar10-32's UNet (random weights) with a CIFAR-size guidance network: the
guidance network costs the same whatever the UNet, so the ratio depends on how big the diffusion model is.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, markdown_table, write_results  # noqa: E402

MODES = ("none", "latent", "pixel")
TARGET_RATIO = 1.15  # latent-guided / unguided purification time (was 1.25 before the gradient-cost issue)


def cifar10_scale_pipeline():
    """google/ddpm-cifar10-32's UNet (random weights: only its cost matters here) with a CIFAR-size guidance network
    of the default width, as the README's CIFAR-10 recipe trains it; t*, steps and scales of the MNIST default."""
    from diffusers import DDIMScheduler, UNet2DModel

    from diffusers_agdm import AdversarialGuidedPurificationPipeline, GuidanceModel, default_pipeline_path
    from diffusers_agdm.models.public_configs import DDPM_CIFAR10_SCHEDULER, DDPM_CIFAR10_UNET, init_kwargs

    # The embedded default's own purification settings, read from its config (not copied here by hand).
    config = json.loads((default_pipeline_path() / "model_index.json").read_text())
    torch.manual_seed(0)
    pipe = AdversarialGuidedPurificationPipeline(
        unet=UNet2DModel(**init_kwargs(DDPM_CIFAR10_UNET)),
        scheduler=DDIMScheduler.from_config(init_kwargs(DDPM_CIFAR10_SCHEDULER)),
        guidance=GuidanceModel(in_channels=3, sample_size=32, num_classes=10),
        **{key: config[key] for key in ("strength", "num_inference_steps", "guidance_scale", "pixel_guidance_scale")})
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda") if torch.cuda.is_available() else pipe


def measure(pipe, batch_size: int, repeats: int, seed: int) -> dict:
    """Seconds per batch of each guidance mode, interleaved over repeats so that all see the same machine load."""
    cfg = pipe.unet.config
    size = pipe.sample_size
    images = torch.rand(batch_size, cfg.in_channels, size, size,
                        generator=torch.Generator().manual_seed(seed)).to(pipe.device)
    # Each mode at the pipeline's own tuned scale (`resolve_settings` fills it in: `guidance_scale` is latent-only).
    settings = {mode: pipe.resolve_settings(guidance=mode) for mode in MODES}

    def run(mode):
        with torch.no_grad():
            start = time.perf_counter()
            pipe.purify(images, settings=settings[mode], generator=torch.Generator().manual_seed(seed))
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter() - start

    for mode in MODES:  # warm-up
        run(mode)
    times = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            times[mode].append(run(mode))
    median = {mode: statistics.median(t) for mode, t in times.items()}
    modes = {mode: {"median_s_per_batch": median[mode], "images_per_s": batch_size / median[mode],
                    "ratio_to_unguided": median[mode] / median["none"], "all_s": times[mode]} for mode in MODES}
    params = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "guidance")}
    return {"batch_size": batch_size, "repeats": repeats, "strength": pipe.config.strength,
            "first_timestep": pipe.resolve_settings().first_timestep,
            "num_inference_steps": pipe.config.num_inference_steps, "guidance_scale": pipe.config.guidance_scale,
            "pixel_guidance_scale": pipe.config.pixel_guidance_scale, "parameters": params, "modes": modes}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cifar10_scale", action=argparse.BooleanOptionalAction, default=True,
                        help="also time google/ddpm-cifar10-32's UNet (random weights) with a CIFAR guidance network")
    parser.add_argument("--cifar10_batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.time()
    targets = [(args.pipeline or "embedded default", lambda: load(args.pipeline), args.batch_size)]
    if args.cifar10_scale:
        targets.append(("google/ddpm-cifar10-32 UNet (random weights) + CIFAR guidance", cifar10_scale_pipeline,
                        args.cifar10_batch_size))
    numbers = {}
    for name, build, batch_size in targets:
        pipe = build()
        numbers[name] = result = measure(pipe, batch_size, args.repeats, args.seed)
        rows = [[mode, f"{v['images_per_s']:.2f}", f"{v['median_s_per_batch']:.3f}", f"{v['ratio_to_unguided']:.2f}x"]
                for mode, v in result["modes"].items()]
        ratio = result["modes"]["latent"]["ratio_to_unguided"]
        print(f"\n{name}: UNet {result['parameters']['unet'] / 1e6:.2f}M, guidance "
              f"{result['parameters']['guidance'] / 1e6:.2f}M parameters; t* = {result['strength']}, "
              f"{result['num_inference_steps']} steps, batch {batch_size}, median of {args.repeats}\n")
        print(markdown_table(["guidance", "images/s", "s/batch", "time vs unguided"], rows))
        print(f"\nlatent-guided / unguided = {ratio:.2f}x (target <= {TARGET_RATIO:.2f}x: "
              f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    settings = {"pipeline": args.pipeline or "embedded default", "batch_size": args.batch_size,
                "repeats": args.repeats, "cifar10_scale": args.cifar10_scale,
                "cifar10_batch_size": args.cifar10_batch_size, "seed": args.seed}
    write_results("purification_throughput", settings, numbers, started)


if __name__ == "__main__":
    main()
