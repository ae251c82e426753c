"""
What one exact gradient costs, against the floor. One image-gradient is one EOT draw of the exact gradient of the
margin loss through the whole defense, for one image: the unit every attack budget counts. For the undefended
classifier and unguided, pixel- and latent-guided purification of the embedded default, in one process and on the
same images, it reports CPU-seconds per image-gradient and that cost as a multiple of one UNet forward (per image),
next to two references: the floor of unguided purification (a UNet forward and backward per reverse step, plus the
classifier's) and the unguided defense itself.

Latent guidance is measured twice: with x_t and x'_t sent through the guidance network in two calls (the current
path: x'_t needs no double backward) and in one batch of 2B (the path before, kept selectable by
`diffusers_agdm.guided_step.batched_guidance_calls`); both give the same gradients up to float rounding
(tests/test_gradients.py). With `--no_checkpointing` each purifying defense is also measured without per-step
gradient checkpointing (memory grows with the reverse steps; the attack's default keeps it on).

    OMP_NUM_THREADS=1 python benchmarks/gradient_throughput.py --num_images 8 --repeats 3 --no_checkpointing
"""

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, load, markdown_table, write_results  # noqa: E402
from diffusers_agdm.attacks import AttackObjective  # noqa: E402
from diffusers_agdm.data import load_labelled_images  # noqa: E402
from diffusers_agdm.guided_step import batched_guidance_calls  # noqa: E402

DEFENSES = ("undefended", "none", "pixel", "latent")


def interleaved_median_cpu_seconds(works: dict, repeats: int) -> dict:
    """Median CPU time of `repeats` calls of each `works[name]()`, after one warm-up call each. The calls are
    interleaved (one of each per round), so a machine that slows down part-way slows every entry alike."""
    for work in works.values():
        work()
    times = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            began = time.process_time()
            work()
            times[name].append(time.process_time() - began)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def unet_works(pipe, images) -> dict:
    """Per batch: one UNet forward (no graph), one forward + backward to its input (the floor's unit), and the
    classifier's forward + backward."""
    t = torch.tensor(pipe.resolve_settings(guidance="none").first_timestep)
    sample = images * 2 - 1

    def unet_forward():
        with torch.no_grad():
            pipe.unet(sample, t)

    def unet_forward_backward():
        x = sample.clone().requires_grad_(True)
        torch.autograd.grad(pipe.unet(x, t).sample.sum(), x)

    def classifier_forward_backward():
        x = images.clone().requires_grad_(True)
        torch.autograd.grad(pipe.classifier_logits(x).sum(), x)

    return {"unet_forward": unet_forward, "unet_forward_backward": unet_forward_backward,
            "classifier_forward_backward": classifier_forward_backward}


def gradient_work(pipe, defense: str, images, labels, seed: int, checkpointing: bool, batched: bool):
    """One exact image-gradient per image (EOT 1, margin loss) through `defense`."""
    if defense == "undefended":
        model = pipe.classifier_logits
    else:
        model = pipe.defended_classifier(seed=seed, guidance=defense, gradient_checkpointing=checkpointing)
    objective = AttackObjective(model, "margin", 1)

    def work():
        with batched_guidance_calls() if batched else contextlib.nullcontext():
            objective(images, labels)

    return work


def measure(pipe, images, labels, repeats: int, seed: int, no_checkpointing: bool) -> dict:
    configs = []
    for defense in DEFENSES:
        checkpointing_options = [True, False] if (no_checkpointing and defense != "undefended") else [True]
        paths = ["two calls", "one batch (before)"] if defense == "latent" else ["n/a"]
        configs += [(defense, path, checkpointing if defense != "undefended" else None)
                    for checkpointing in checkpointing_options for path in paths]
    works = unet_works(pipe, images)
    works.update({config: gradient_work(pipe, config[0], images, labels, seed, bool(config[2]),
                                        config[1] == "one batch (before)") for config in configs})
    n = images.shape[0]
    seconds = {name: value / n for name, value in interleaved_median_cpu_seconds(works, repeats).items()}
    steps = len(pipe.resolve_settings(guidance="none").timesteps)
    units = {"unet_forward_s": seconds["unet_forward"], "unet_forward_backward_s": seconds["unet_forward_backward"],
             "classifier_forward_backward_s": seconds["classifier_forward_backward"], "reverse_steps": steps}
    floor = steps * units["unet_forward_backward_s"] + units["classifier_forward_backward_s"]
    rows = [{"defense": d, "guidance_path": path, "checkpointing": ckpt,
             "seconds_per_image_gradient": seconds[(d, path, ckpt)],
             "unet_forwards": seconds[(d, path, ckpt)] / units["unet_forward_s"]} for d, path, ckpt in configs]
    for row in rows:  # against unguided purification with the same checkpointing (on for the undefended row)
        unguided = seconds[("none", "n/a", row["checkpointing"] is not False)]
        row["vs_unguided"] = row["seconds_per_image_gradient"] / unguided
        row["vs_floor"] = row["seconds_per_image_gradient"] / floor
    return {"units": units, "floor_seconds_per_image": floor, "rows": rows,
            "latent_before_over_after": seconds[("latent", "one batch (before)", True)]
            / seconds[("latent", "two calls", True)]}


def markdown_lines(numbers: dict) -> list[str]:
    """The table of one run's results (also what benchmarks/RESULTS.md shows)."""
    units = numbers["units"]
    lines = [f"One UNet forward: {1000 * units['unet_forward_s']:.2f} ms per image; the floor of unguided "
             f"purification ({units['reverse_steps']} reverse steps x a UNet forward and backward, plus the "
             f"classifier's): "
             f"{numbers['floor_seconds_per_image']:.3f} s = "
             f"{numbers['floor_seconds_per_image'] / units['unet_forward_s']:.1f} UNet forwards."]
    rows = [[r["defense"], r["guidance_path"], {True: "on", False: "off", None: "n/a"}[r["checkpointing"]],
             f"{r['seconds_per_image_gradient']:.3f}", f"{r['unet_forwards']:.1f}", f"{r['vs_unguided']:.2f}x",
             f"{r['vs_floor']:.2f}x"] for r in numbers["rows"]]
    lines.append("")
    lines.append(f"Latent guidance, checkpointed: one batch of 2B (before) / two calls (now) = "
                 f"{numbers['latent_before_over_after']:.2f}x.")
    lines.append("")
    lines.append(markdown_table(["defense", "guidance network calls", "checkpointing", "CPU-s / image-gradient",
                                 "UNet forwards", "/ unguided (same checkpointing)", "/ floor"], rows))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--num_images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_checkpointing", action="store_true",
                        help="also measure each purifying defense without per-step gradient checkpointing")
    parser.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.num_images, args.repeats) < 1:
        parser.error("--num_images and --repeats must be >= 1")
    if args.results_dir.exists() and not args.results_dir.is_dir():
        parser.error(f"--results_dir {args.results_dir} is not a folder")
    started = time.time()
    torch.manual_seed(args.seed)
    pipe = load(args.pipeline)
    for component in (pipe.unet, pipe.guidance, pipe.classifier):
        component.eval().requires_grad_(False)
    data = load_labelled_images("mnist", "test")
    images, labels = data.images[:args.num_images], data.labels[:args.num_images]
    numbers = measure(pipe, images, labels, args.repeats, args.seed, args.no_checkpointing)
    print("\n".join(markdown_lines(numbers)))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_results("gradient_throughput", settings, numbers, started, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
