"""Steps against robustness: UNet evaluations per purified image against clean and robust accuracy (exact-gradient
APGD-EOT, margin loss, by default), for the full DDPM chain from t* (t* + 1 steps, every timestep down to 0) and for
strided DDIM at the same t*, with AGDM latent guidance; and the fewest DDIM steps whose robust accuracy stays within 1
point of the full schedule's. Every image is scored over K fresh defense runs and counts as robust only if it is also
clean-correct, as in `agdm evaluate`. A step count the schedule cannot honour (more than t* + 1) is refused before
any work.

    python benchmarks/steps_vs_robustness.py                    # the embedded default
    python benchmarks/steps_vs_robustness.py --ddim_steps 2 5 10 20 --num_images 64 --clean_images 400 --steps 10
"""

import argparse
import sys
import time
from pathlib import Path

from diffusers import DDIMScheduler, DDPMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, load, markdown_table, write_results  # noqa: E402
from diffusers_agdm.attacks import LOSSES, rescore  # noqa: E402
from diffusers_agdm.data import load_labelled_images  # noqa: E402
from diffusers_agdm.evaluation import EvaluationConfig, evaluate  # noqa: E402
from diffusers_agdm.evaluation.seeds import derive_seed  # noqa: E402
from diffusers_agdm.utils.schedule import start_timestep  # noqa: E402

DEFAULTS = EvaluationConfig()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--ddim_steps", type=int, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--full_ddpm", action=argparse.BooleanOptionalAction, default=True,
                        help="also the full DDPM chain (t* + 1 steps, every timestep from t* down to 0; the costly "
                             "reference)")
    parser.add_argument("--num_images", type=int, default=8,
                        help="images attacked")
    parser.add_argument("--clean_images", type=int, default=64, help="images for clean accuracy")
    parser.add_argument("--norm", default="Linf", choices=("Linf", "L2"))
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--attack", default="apgd", choices=("apgd", "pgd"), help="the exact-gradient attack")
    parser.add_argument("--steps", type=int, default=5,
                        help="attack iterations (the full chain costs ~15 CPU-seconds per image per iteration)")
    parser.add_argument("--restarts", type=int, default=DEFAULTS.restarts)
    parser.add_argument("--eot_samples", type=int, default=1)
    parser.add_argument("--loss", default=DEFAULTS.loss, choices=LOSSES)
    parser.add_argument("--rescore_runs", type=int, default=DEFAULTS.rescore_runs, help="K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--results_dir", default=str(RESULTS_DIR), help="where steps_vs_robustness.json goes")
    args = parser.parse_args(argv)
    try:
        attack_config(args, 1)  # the attack budget, checked before anything is loaded
        if args.num_images < 1 or args.clean_images < 1 or any(s < 1 for s in args.ddim_steps):
            raise ValueError("--num_images, --clean_images and --ddim_steps must be >= 1")
    except ValueError as err:
        parser.error(str(err))
    started = time.time()
    pipe = load(args.pipeline)
    strength = pipe.config.strength
    # The full chain visits every timestep from t* down to 0: t* + 1 steps, the most the schedule allows.
    full_steps = start_timestep(strength, pipe.scheduler.config.num_train_timesteps) + 1
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    configs = [("DDIM", ddim, s) for s in args.ddim_steps]
    if args.full_ddpm:
        configs.append(("DDPM (full chain)", ddpm, full_steps))
    for name, scheduler, steps in configs:  # every step count checked against t* before any work
        pipe.scheduler = scheduler
        try:
            pipe.resolve_settings(num_inference_steps=steps, guidance="latent")
        except ValueError as err:
            parser.error(f"{name} with {steps} steps: {err}")
    data = load_labelled_images("mnist", "test")
    results = []
    for name, scheduler, steps in configs:
        pipe.scheduler = scheduler
        began = time.time()
        clean = _clean(pipe, data.subset(0, args.clean_images), steps, args)
        config = attack_config(args, steps)
        report = evaluate(pipe, data.subset(0, args.num_images), config).report
        robust = report["results"]["latent"][args.attack]
        first_timestep = report["defenses"]["latent"]["first_timestep"]
        row = {"scheduler": name, "steps": steps, "unet_evaluations_per_image": steps,
               "first_timestep": first_timestep,
               "clean_accuracy": clean, "robust_all": robust["all"]["mean"],
               "robust_majority": robust["majority"]["mean"], "robust_single": robust["single"]["mean"],
               "seconds": time.time() - began}
        results.append(row)
        print(f"{name:18s} {steps:4d} steps  clean {100 * clean:5.1f}% (all {args.rescore_runs})  robust "
              f"{100 * row['robust_all']:5.1f}% "
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
                                          "guidance_scale": pipe.config.guidance_scale,
                                          "robust_rule": report["settings"]["robust_rule"]},
                  {"rows": results, "fewest_ddim_steps_within_1_point": fewest}, started,
                  results_dir=args.results_dir)


def attack_config(args, num_inference_steps: int) -> EvaluationConfig:
    """The `agdm evaluate` settings of one row: latent guidance only, no sanity checks (a comparison of step
    counts; the reported evaluation runs them)."""
    return DEFAULTS.replace(
        attacks=(args.attack,), defenses=("latent",), norm=args.norm, eps=args.eps, steps=args.steps,
        restarts=args.restarts, eot_samples=args.eot_samples, loss=args.loss, rescore_runs=args.rescore_runs,
        seeds=(args.seed,), batch_size=args.batch_size, num_inference_steps=num_inference_steps, sanity_images=0,
        gradient_check=False, num_examples=0, allow_failed_sanity=True, show_progress_bar=False)


def _clean(pipe, data, steps, args, batch_size=100) -> float:
    """Clean accuracy correct in all K runs (the score of the robust columns)."""
    settings = pipe.resolve_settings(num_inference_steps=steps, guidance="latent")
    correct = 0
    for start in range(0, len(data), batch_size):
        model = pipe.defended_classifier(seed=None, gradient_checkpointing=False, settings=settings)
        scored = rescore(model, data.images[start:start + batch_size].to(pipe.device),
                         data.labels[start:start + batch_size], args.rescore_runs,
                         seed=derive_seed(args.seed, "steps-clean", start))
        correct += int(scored.all_correct.sum())
    return correct / len(data)


if __name__ == "__main__":
    main()
