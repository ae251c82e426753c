#!/usr/bin/env python
"""Choose a trained pipeline's purification defaults (t*, latent guidance scale; the pixel-guidance baseline's scale
too) on a validation split, under the same exact-gradient attack the evaluation uses, and save the tuned pipeline.

For each t* in --strengths: clean accuracy of every setting on the whole split, and robust accuracy under
exact-gradient PGD on the first --robust_images images. The chosen t* and latent scale maximise latent-guided robust
accuracy among settings whose clean accuracy is at least --min_clean (ties: the smaller t*, then the smaller scale);
the pixel scale is chosen the same way at that t*, so the baseline is tuned as carefully as the method. Report the
final numbers on a different split (e.g. `agdm evaluate --split test`): tuning numbers are optimistic by selection.

    python training/tune_purification.py --pipeline runs/agdm-mnist --dataset mnist --split validation \\
        --output_dir runs/agdm-mnist-tuned
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from diffusers_agdm.cli import load_pipeline
from diffusers_agdm.data import load_labelled_images
from diffusers_agdm.data.datasets import is_test_split
from diffusers_agdm.evaluation import EvaluationConfig, evaluate
from diffusers_agdm.loading import load_classifier
from diffusers_agdm.training.argtypes import check_model_source, check_output_dir, finite, int_at_least


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", "--pretrained_model_name_or_path", dest="pipeline", required=True,
                        help="The trained pipeline (folder or Hub id) to tune.")
    parser.add_argument("--classifier_name_or_path", default=None, help="replace the pipeline's classifier")
    parser.add_argument("--dataset_name", "--dataset", dest="dataset", default="mnist",
                        help="The dataset tuned on (a built-in or a Hub dataset id).")
    parser.add_argument("--split", default="validation", help="Its split tuned on (never the one reported).")
    parser.add_argument("--allow_test_split", action="store_true",
                        help="Allow tuning on a split that holds test images (refused otherwise: tuned numbers on the "
                             "test split are optimistic by selection).")
    parser.add_argument("--strengths", type=finite(0, 1, inclusive_min=False), nargs="+", default=[0.15, 0.2, 0.3],
                        help="Candidate t*, each in (0, 1].")
    parser.add_argument("--num_inference_steps", type=int_at_least(1), default=10)
    parser.add_argument("--latent_scales", type=finite(0), nargs="+", default=[30.0, 100.0, 300.0],
                        help="Candidate latent guidance scales, each >= 0.")
    parser.add_argument("--pixel_scales", type=finite(0), nargs="+", default=[1.0, 10.0],
                        help="Candidate pixel guidance scales, each >= 0.")
    parser.add_argument("--min_clean", type=finite(0, 1), default=0.98,
                        help="Least clean accuracy, in [0, 1], a chosen setting must keep.")
    parser.add_argument("--robust_images", type=int_at_least(1), default=48,
                        help="Images of the split attacked per setting.")
    parser.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    parser.add_argument("--eps", type=finite(0, inclusive_min=False), default=0.3)
    parser.add_argument("--pgd_steps", type=int_at_least(1), default=10)
    parser.add_argument("--eot_samples", type=int_at_least(1), default=1)
    parser.add_argument("--batch_size", type=int_at_least(1), default=16)
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    parser.add_argument("--output_dir", required=True, help="where the tuned pipeline and tuning.json go")
    parser.add_argument("--progress_bar", action=argparse.BooleanOptionalAction, default=True,
                        help="Show a progress bar over the settings tried (main process only).")
    args = parser.parse_args(argv)
    try:
        check_output_dir("--output_dir", args.output_dir)
        check_model_source("--pipeline", args.pipeline, ("model_index.json",))
        if args.classifier_name_or_path:
            check_model_source("--classifier_name_or_path", args.classifier_name_or_path,
                               ("config.json", "model_index.json"))
        if is_test_split(args.dataset, args.split) and not args.allow_test_split:
            raise ValueError(f"The {args.split!r} split of {args.dataset} holds test images; tune on a validation "
                             "split and report on the test split, or pass --allow_test_split.")
    except ValueError as err:
        parser.error(str(err))
    return args


def clean_accuracy(pipe, data, seed: int, batch_size: int = 100, **purify_kwargs) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            images = data.images[start:start + batch_size].to(pipe.device)
            purified = pipe.purify(images, generator=torch.Generator().manual_seed(seed + start), **purify_kwargs)
            predicted = pipe.classifier_logits(purified).argmax(-1).cpu()
            correct += (predicted == data.labels[start:start + batch_size]).sum()
    return float(correct) / len(data)


def robust_accuracy(pipe, data, args, defense: str, **settings) -> float:
    config = EvaluationConfig(attacks=("pgd",), defenses=(defense,), norm=args.norm, eps=args.eps,
                              pgd_steps=args.pgd_steps, eot_samples=args.eot_samples, rescore_runs=1,
                              seeds=(args.seed,), batch_size=args.batch_size, sanity_images=0, gradient_check=False,
                              num_examples=0, allow_failed_sanity=True, show_progress_bar=False, **settings)
    result = evaluate(pipe, data, config)
    return float(result.report["results"][defense]["pgd"]["all"]["mean"])


def choose(rows, defense, min_clean):
    eligible = [r for r in rows if r["defense"] == defense and r["clean_accuracy"] >= min_clean]
    if not eligible:
        return None
    return max(eligible, key=lambda r: (r["robust_accuracy"], -r["strength"], -r["scale"]))


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    if args.classifier_name_or_path:
        pipe.register_modules(classifier=load_classifier(args.classifier_name_or_path))
    data = load_labelled_images(args.dataset, args.split)
    robust_data = data.subset(0, args.robust_images)
    steps = args.num_inference_steps
    rows = []
    settings = len(args.strengths) * (1 + len(args.latent_scales) + len(args.pixel_scales))
    progress = tqdm(total=settings, desc="tuning purification", unit="setting",
                    disable=not (args.progress_bar and PartialState().is_main_process))

    def record(defense, strength, scale, purify_kwargs, eval_kwargs):
        clean = clean_accuracy(pipe, data, args.seed, strength=strength, num_inference_steps=steps, **purify_kwargs)
        robust = robust_accuracy(pipe, robust_data, args, defense, strength=strength, num_inference_steps=steps,
                                 **eval_kwargs)
        rows.append({"defense": defense, "strength": strength, "scale": scale, "clean_accuracy": clean,
                     "robust_accuracy": robust})
        progress.update(1)
        progress.write(f"t*={strength:<5} {defense:6s} scale {scale:<7g} clean {100 * clean:5.1f}%  robust "
                       f"{100 * robust:5.1f}%  ({time.time() - started:.0f} s)")

    for strength in args.strengths:
        record("none", strength, 0.0, {"guidance": "none"}, {})
        for scale in args.latent_scales:
            record("latent", strength, scale, {"guidance": "latent", "guidance_scale": scale},
                   {"guidance_scale": scale})
        for scale in args.pixel_scales:
            record("pixel", strength, scale, {"guidance": "pixel", "pixel_guidance_scale": scale},
                   {"pixel_guidance_scale": scale})

    progress.close()
    latent = choose(rows, "latent", args.min_clean)
    if latent is None:
        raise SystemExit(f"No latent-guided setting reached clean accuracy {args.min_clean:.0%}; see the rows above.")
    pixel = choose([r for r in rows if r["strength"] == latent["strength"]], "pixel", args.min_clean)
    pipe.register_to_config(strength=latent["strength"], num_inference_steps=steps, guidance_scale=latent["scale"],
                            guidance_mode="latent", **({"pixel_guidance_scale": pixel["scale"]} if pixel else {}))
    out = Path(args.output_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    summary = {"command": " ".join(["python", "training/tune_purification.py", *(argv or sys.argv[1:])]),
               "settings": vars(args), "rows": rows, "chosen": {"latent": latent, "pixel": pixel},
               "wall_time_s": time.time() - started}
    (out / "tuning.json").write_text(json.dumps(summary, indent=2))
    print(f"\nchosen: t* = {latent['strength']}, latent scale {latent['scale']:g} "
          f"(clean {100 * latent['clean_accuracy']:.1f}%, robust {100 * latent['robust_accuracy']:.1f}%); pixel "
          f"scale {pixel['scale'] if pixel else 'none eligible'}; saved to {out}")


if __name__ == "__main__":
    main()
