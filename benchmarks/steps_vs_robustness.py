"""Steps against robustness: UNet evaluations per purified image against clean and robust accuracy (exact-gradient
PGD-EOT), for the full DDPM chain from t* and for strided DDIM at the same t*, with AGDM latent guidance; and the
fewest DDIM steps whose robust accuracy stays within 1 point of the full schedule's.

    python benchmarks/steps_vs_robustness.py                    # the embedded default
    python benchmarks/steps_vs_robustness.py --ddim_steps 2 5 10 20 --num_images 64 --clean_images 400 --pgd_steps 10
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, markdown_table, write_results  # noqa: E402

from diffusers_agdm.data import load_labelled_images  # noqa: E402
from diffusers_agdm.evaluation import EvaluationConfig, evaluate  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--ddim_steps", type=int, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--full_ddpm", action=argparse.BooleanOptionalAction, default=True,
                        help="also the full DDPM chain (t* x num_train_timesteps steps; the costly reference)")
    parser.add_argument("--num_images", type=int, default=8,
                        help="images attacked (the full chain costs ~15 CPU-seconds per image per PGD step)")
    parser.add_argument("--clean_images", type=int, default=64, help="images for clean accuracy")
    parser.add_argument("--norm", default="Linf")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--pgd_steps", type=int, default=5)
    parser.add_argument("--eot_samples", type=int, default=1)
    parser.add_argument("--rescore_runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args(argv)
    started = time.time()
    pipe = load(args.pipeline)
    strength = pipe.config.strength
    full_steps = int(round(strength * pipe.scheduler.config.num_train_timesteps))
    data = load_labelled_images("mnist", "test")
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    configs = [("DDIM", ddim, s) for s in args.ddim_steps]
    if args.full_ddpm:
        configs.append(("DDPM (full chain)", ddpm, full_steps))
    results = []
    for name, scheduler, steps in configs:
        pipe.scheduler = scheduler
        began = time.time()
        clean = _clean(pipe, data.subset(0, args.clean_images), steps, args.seed)
        config = EvaluationConfig(attacks=("pgd",), defenses=("latent",), norm=args.norm, eps=args.eps,
                                  pgd_steps=args.pgd_steps, eot_samples=args.eot_samples,
                                  rescore_runs=args.rescore_runs, seeds=(args.seed,), batch_size=args.batch_size,
                                  num_inference_steps=steps, sanity_images=0, gradient_check=False, num_examples=0,
                                  allow_failed_sanity=True, show_progress_bar=False)
        report = evaluate(pipe, data.subset(0, args.num_images), config).report
        robust = report["results"]["latent"]["pgd"]
        first_timestep = int(pipe.get_timesteps(strength, steps)[0])
        row = {"scheduler": name, "steps": steps, "unet_evaluations_per_image": steps, "first_timestep": first_timestep,
               "clean_accuracy": clean, "robust_all": robust["all"]["mean"],
               "robust_majority": robust["majority"]["mean"], "seconds": time.time() - began}
        results.append(row)
        print(f"{name:18s} {steps:4d} steps  clean {100 * clean:5.1f}%  robust {100 * row['robust_all']:5.1f}% "
              f"(all {args.rescore_runs}), {100 * row['robust_majority']:5.1f}% (majority)  {row['seconds']:.0f} s",
              flush=True)
    reference = next((r for r in results if r["scheduler"].startswith("DDPM")), None)
    fewest = None
    if reference is not None:
        close = [r for r in results if r["scheduler"] == "DDIM"
                 and r["robust_all"] >= reference["robust_all"] - 0.01]
        fewest = min(close, key=lambda r: r["steps"])["steps"] if close else None
    print("\n" + markdown_table(
        ["scheduler", "UNet evaluations / image", "clean %", "robust % (all K)", "robust % (majority)", "seconds"],
        [[r["scheduler"], r["steps"], f"{100 * r['clean_accuracy']:.1f}", f"{100 * r['robust_all']:.1f}",
          f"{100 * r['robust_majority']:.1f}", f"{r['seconds']:.0f}"] for r in results]))
    if reference is not None:
        print(f"\nfewest DDIM steps within 1 point of the full DDPM chain's robust accuracy: {fewest}")
    write_results("steps_vs_robustness", {**vars(args), "strength": strength, "guidance": "latent",
                                          "guidance_scale": pipe.config.guidance_scale},
                  {"rows": results, "fewest_ddim_steps_within_1_point": fewest}, started)


def _clean(pipe, data, steps, seed, batch_size=100) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = data.images[start:start + batch_size].to(pipe.device)
            purified = pipe.purify(x, num_inference_steps=steps, guidance="latent",
                                   generator=torch.Generator().manual_seed(seed + start))
            correct += (pipe.classifier_logits(purified).argmax(-1).cpu() == data.labels[start:start + batch_size]).sum()
    return float(correct) / len(data)


if __name__ == "__main__":
    main()
