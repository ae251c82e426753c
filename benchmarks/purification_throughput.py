"""Purification throughput: images per second for unguided, latent-guided and pixel-guided purification at the same
t*, steps and batch size, and the guided / unguided time ratio (target: at most 1.25x). All modes run in one
process, interleaved over repeats, so the ratio compares like with like.

    python benchmarks/purification_throughput.py            # the embedded default
    python benchmarks/purification_throughput.py --pipeline path/or/hub-id --batch_size 64 --repeats 5
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, markdown_table, write_results  # noqa: E402

MODES = ("none", "latent", "pixel")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.time()
    pipe = load(args.pipeline)
    cfg = pipe.unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    images = torch.rand(args.batch_size, cfg.in_channels, size, size,
                        generator=torch.Generator().manual_seed(args.seed)).to(pipe.device)
    scale = {"none": 0.0, "latent": pipe.config.guidance_scale, "pixel": pipe.config.guidance_scale}

    def run(mode):
        with torch.no_grad():
            start = time.perf_counter()
            pipe.purify(images, guidance=mode, guidance_scale=scale[mode],
                        generator=torch.Generator().manual_seed(args.seed))
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter() - start

    for mode in MODES:  # warm-up
        run(mode)
    times = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            times[mode].append(run(mode))
    median = {mode: statistics.median(t) for mode, t in times.items()}
    rows, numbers = [], {}
    for mode in MODES:
        ratio = median[mode] / median["none"]
        numbers[mode] = {"median_s_per_batch": median[mode], "images_per_s": args.batch_size / median[mode],
                         "ratio_to_unguided": ratio, "all_s": times[mode]}
        rows.append([mode, f"{args.batch_size / median[mode]:.1f}", f"{median[mode]:.3f}", f"{ratio:.2f}x"])
    print(f"t* = {pipe.config.strength}, {pipe.config.num_inference_steps} steps, batch {args.batch_size}, "
          f"median of {args.repeats}\n")
    print(markdown_table(["guidance", "images/s", "s/batch", "time vs unguided"], rows))
    target = numbers["latent"]["ratio_to_unguided"] <= 1.25
    print(f"\nlatent-guided / unguided = {numbers['latent']['ratio_to_unguided']:.2f}x "
          f"(target <= 1.25x: {'met' if target else 'NOT met'})")
    settings = {"pipeline": args.pipeline or "embedded default", "batch_size": args.batch_size,
                "repeats": args.repeats, "strength": pipe.config.strength,
                "num_inference_steps": pipe.config.num_inference_steps, "guidance_scale": pipe.config.guidance_scale,
                "seed": args.seed}
    write_results("purification_throughput", settings, numbers, started)


if __name__ == "__main__":
    main()
