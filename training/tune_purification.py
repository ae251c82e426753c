#!/usr/bin/env python
"""Choose a trained pipeline's purification defaults (t*, latent guidance scale; the pixel-guidance baseline's scale
too) on a validation split, under the same exact-gradient attack and the same scoring as `agdm evaluate`, and save
the tuned pipeline.

For each t* in --strengths and each setting: clean accuracy on the whole split and clean-and-robust accuracy on the
first --robust_images images (default attack: APGD-EOT with the margin loss), every image scored over K =
--rescore_runs fresh defense runs. An image counts as robust only if it is classified correctly both clean and
attacked. The chosen t* and latent scale maximise latent-guided robust accuracy correct in all K runs among settings
whose clean accuracy (all K runs correct) is at least --min_clean (ties: the smaller t*, then the smaller scale); the
pixel scale is chosen the same way at that t*, so the baseline is tuned as carefully as the method. Report the final
numbers on a different split (e.g. `agdm evaluate --split test`): tuning numbers are optimistic by selection.

    python training/tune_purification.py --pipeline runs/agdm-mnist --dataset_name mnist --split validation \\
        --output_dir runs/agdm-mnist-tuned
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from diffusers_agdm import load_pipeline
from diffusers_agdm.attacks import LOSSES, rescore, robust_under
from diffusers_agdm.data import load_labelled_images
from diffusers_agdm.data.datasets import is_test_split
from diffusers_agdm.evaluation import SCORES, EvaluationConfig, defense_specs, evaluate
from diffusers_agdm.evaluation.seeds import derive_seed
from diffusers_agdm.loading import load_classifier
from diffusers_agdm.settings_table import UNTUNED_DEFAULTS, add_purification_arguments
from diffusers_agdm.training_utils.argtypes import check_model_source, finite, int_at_least
from diffusers_agdm.utils.flags import ArgumentParser
from diffusers_agdm.utils.io import atomic_write_json
from diffusers_agdm.utils.paths import check_output_dir

# The attacks a setting can be tuned under: each applies to all three purification defenses.
TUNING_ATTACKS = ("apgd", "pgd")
DEFAULTS = EvaluationConfig()
# The default grid brackets the embedded default's setting (t* 0.306, latent scale 10, pixel scale 1): latent scales
# 3 to 20 and pixel scales 0.3 to 1 keep digits, a pixel scale of 10 turns them into noise. The default budget is a
# screening budget (about 17 CPU-minutes for the 21 settings, extrapolated from 3 settings measured at 145 CPU-s on
# the embedded default), far below `agdm evaluate`'s: tuning compares settings, the reported evaluation measures the
# chosen one. Raise it on a GPU.
TUNING_GRID = {"strengths": [0.2, 0.3, 0.35], "latent_scales": [3.0, 10.0, 20.0], "pixel_scales": [0.3, 1.0, 3.0]}
TUNING_BUDGET = {"clean_images": 64, "robust_images": 16, "steps": 5, "restarts": 1, "targeted_restarts": 0,
                 "eot_samples": 1, "rescore_runs": 3}


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--pretrained_model_name_or_path", "--pipeline", dest="pipeline", metavar="PIPELINE",
                        required=True,
                        help="The trained pipeline (folder or Hub id) to tune.")
    parser.add_argument("--classifier_name_or_path", default=None, help="replace the pipeline's classifier")
    parser.add_argument("--dataset_name", "--dataset", dest="dataset", default="mnist",
                        help="The dataset tuned on (a built-in or a Hub dataset id).")
    parser.add_argument("--split", default="validation", help="Its split tuned on (never the one reported).")
    parser.add_argument("--allow_test_split", action="store_true",
                        help="Allow tuning on a split that holds test images (refused otherwise: tuned numbers on the "
                             "test split are optimistic by selection).")
    parser.add_argument("--strengths", type=finite(0, 1, inclusive_min=False), nargs="+",
                        default=TUNING_GRID["strengths"], help="Candidate t*, each in (0, 1].")
    add_purification_arguments(parser, ("num_inference_steps",), defaults=UNTUNED_DEFAULTS)  # (every setting's)
    parser.add_argument("--latent_scales", type=finite(0), nargs="+", default=TUNING_GRID["latent_scales"],
                        help="Candidate latent guidance scales, each >= 0.")
    parser.add_argument("--pixel_scales", type=finite(0), nargs="+", default=TUNING_GRID["pixel_scales"],
                        help="Candidate pixel guidance scales, each >= 0.")
    parser.add_argument("--min_clean", type=finite(0, 1), default=0.97,
                        help="Least clean accuracy (correct in all K runs), in [0, 1], a chosen setting must keep.")
    parser.add_argument("--clean_images", type=int_at_least(1), default=TUNING_BUDGET["clean_images"],
                        help="Images of the split (the first ones, class-balanced for the built-ins) whose clean "
                             "accuracy is measured per setting.")
    parser.add_argument("--robust_images", type=int_at_least(1), default=TUNING_BUDGET["robust_images"],
                        help="Images of the split attacked per setting.")
    parser.add_argument("--norm", default=DEFAULTS.norm, choices=["Linf", "L2"], help="The threat model's norm.")
    parser.add_argument("--eps", type=finite(0, inclusive_min=False), default=DEFAULTS.eps,
                        help="The threat model's radius, in [0, 1] pixel units (MNIST: Linf 0.3, L2 2.0).")
    parser.add_argument("--attack", default="apgd", choices=TUNING_ATTACKS,
                        help="The exact-gradient attack every setting is tuned under (as in `agdm evaluate`).")
    parser.add_argument("--steps", type=int_at_least(1), default=TUNING_BUDGET["steps"],
                        help="Attack iterations per run (per restart).")
    parser.add_argument("--restarts", type=int_at_least(1), default=TUNING_BUDGET["restarts"],
                        help="Untargeted APGD runs per image.")
    parser.add_argument("--targeted_restarts", type=int_at_least(0), default=TUNING_BUDGET["targeted_restarts"],
                        help="APGD runs targeted at the next most likely classes.")
    parser.add_argument("--eot_samples", type=int_at_least(1), default=TUNING_BUDGET["eot_samples"],
                        help="Defense runs averaged per gradient (EOT).")
    parser.add_argument("--loss", default=DEFAULTS.loss, choices=LOSSES, help="The attack loss.")
    parser.add_argument("--rescore_runs", type=int_at_least(1), default=TUNING_BUDGET["rescore_runs"],
                        help="K: fresh defense runs each clean and adversarial image is scored over.")
    parser.add_argument("--batch_size", type=int_at_least(1), default=DEFAULTS.batch_size,
                        help="Images per chunk of work.")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="Seed of the attacks and the defense runs.")
    parser.add_argument("--output_dir", required=True, help="where the tuned pipeline and tuning.json go")
    parser.add_argument("--work_dir", default=None,
                        help="Where each setting's evaluation report and finished units go (outside --output_dir, "
                             "which holds only the pipeline); rerun with the same one to resume an interrupted "
                             "tuning without recomputing any finished attack.")
    parser.add_argument("--progress_bar", action=argparse.BooleanOptionalAction, default=True,
                        help="Show a progress bar over the settings tried (main process only).")
    args = parser.parse_args(argv)
    try:
        check_output_dir(args.output_dir, "--output_dir", create=False)
        if args.work_dir is not None:
            check_output_dir(args.work_dir, "--work_dir", create=False)
            work, out = Path(args.work_dir).resolve(), Path(args.output_dir).resolve()
            if work == out or out in work.parents:
                raise ValueError(f"--work_dir {args.work_dir} lies inside --output_dir {args.output_dir}, which "
                                 "becomes the tuned pipeline; give a folder outside it.")
        check_model_source("--pipeline", args.pipeline, ("model_index.json",))
        if args.classifier_name_or_path:
            check_model_source("--classifier_name_or_path", args.classifier_name_or_path,
                               ("config.json", "model_index.json"))
        if is_test_split(args.dataset, args.split) and not args.allow_test_split:
            raise ValueError(f"The {args.split!r} split of {args.dataset} holds test images; tune on a validation "
                             "split and report on the test split, or pass --allow_test_split.")
        evaluation_config(args, "none")  # the attack budget, checked before anything is loaded
    except ValueError as err:
        parser.error(str(err))
    return args


def evaluation_config(args, defense: str, **settings) -> EvaluationConfig:
    """The `agdm evaluate` settings one tuning row is attacked and scored with (no sanity checks: tuning only
    compares settings; the reported evaluation runs them)."""
    return DEFAULTS.replace(
        attacks=(args.attack,), defenses=(defense,), norm=args.norm, eps=args.eps, steps=args.steps,
        restarts=args.restarts, targeted_restarts=args.targeted_restarts, eot_samples=args.eot_samples,
        loss=args.loss, rescore_runs=args.rescore_runs, seeds=(args.seed,), batch_size=args.batch_size,
        sanity_images=0, gradient_check=False, num_examples=0, allow_failed_sanity=True, show_progress_bar=False,
        **settings)


def clean_accuracy(pipe, data, args, defense: str, **purification) -> dict:
    """Clean accuracy of one setting of `defense` on the whole split under the three scores of `agdm evaluate`:
    correct in all K runs, in a majority of K, in run 0 (K = `args.rescore_runs`, fresh purification noise per
    run)."""
    settings = defense_specs(pipe, (defense,), **purification)[0].settings
    correct = []
    for start in range(0, len(data), args.batch_size):
        model = pipe.defended_classifier(seed=None, gradient_checkpointing=False, settings=settings)
        images = data.images[start:start + args.batch_size].to(pipe.device)
        scored = rescore(model, images, data.labels[start:start + args.batch_size], args.rescore_runs,
                         seed=derive_seed(args.seed, "tuning-clean", start))
        correct.append(scored.correct)
    correct = torch.cat(correct, dim=1)  # (K, N)
    return {kind: robust_under(kind, correct.sum(0), args.rescore_runs, correct[0]).float().mean().item()
            for kind in SCORES}


def robust_accuracy(pipe, data, args, defense: str, output_dir=None, **settings) -> dict:
    """Clean-and-robust accuracy of one setting under the three scores, from `evaluate` itself (resumable in
    `output_dir`)."""
    result = evaluate(pipe, data, evaluation_config(args, defense, **settings), output_dir=output_dir)
    by_score = result.report["results"][defense][args.attack]
    return {kind: float(by_score[kind]["mean"]) for kind in SCORES}


def choose(rows, defense, min_clean):
    """The best row of `defense` by clean-and-robust accuracy correct in all K runs, among rows whose clean accuracy
    (all K runs) is at least `min_clean`; ties go to the smaller t*, then the smaller scale."""
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
    data = data.subset(0, args.clean_images)
    steps = args.num_inference_steps
    rows = []
    settings = len(args.strengths) * (1 + len(args.latent_scales) + len(args.pixel_scales))
    progress = tqdm(total=settings, desc="tuning purification", unit="setting",
                    disable=not (args.progress_bar and PartialState().is_main_process))

    def record(defense, strength, scale, scales):
        # `scales`: the swept scale under its `defense_specs` name, for purification and `evaluate` alike.
        clean = clean_accuracy(pipe, data, args, defense, strength=strength, num_inference_steps=steps, **scales)
        work = None if args.work_dir is None else Path(args.work_dir) / f"{defense}-t{strength:g}-s{scale:g}"
        robust = robust_accuracy(pipe, robust_data, args, defense, output_dir=work, strength=strength,
                                 num_inference_steps=steps, **scales)
        # `clean_accuracy` / `robust_accuracy` are the "all K runs" scores the choice is made on.
        rows.append({"defense": defense, "strength": strength, "scale": scale, "clean_accuracy": clean["all"],
                     "robust_accuracy": robust["all"], "clean": clean, "robust": robust})
        progress.update(1)
        progress.write(f"t*={strength:<5} {defense:6s} scale {scale:<7g} clean {100 * clean['all']:5.1f}%  robust "
                       f"{100 * robust['all']:5.1f}% (all {args.rescore_runs} runs; majority "
                       f"{100 * robust['majority']:.1f}%, one run {100 * robust['single']:.1f}%)  "
                       f"({time.time() - started:.0f} s)")

    for strength in args.strengths:
        record("none", strength, 0.0, {})
        for scale in args.latent_scales:
            record("latent", strength, scale, {"guidance_scale": scale})
        for scale in args.pixel_scales:
            record("pixel", strength, scale, {"pixel_guidance_scale": scale})

    progress.close()
    latent = choose(rows, "latent", args.min_clean)
    if latent is None:
        raise SystemExit(f"No latent-guided setting reached clean accuracy {args.min_clean:.0%} (correct in all "
                         f"{args.rescore_runs} runs); see the rows above.")
    pixel = choose([r for r in rows if r["strength"] == latent["strength"]], "pixel", args.min_clean)
    pipe.register_to_config(strength=latent["strength"], num_inference_steps=steps, guidance_scale=latent["scale"],
                            guidance_mode="latent", **({"pixel_guidance_scale": pixel["scale"]} if pixel else {}))
    out = Path(args.output_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    summary = {"command": " ".join(["python", "training/tune_purification.py", *(argv or sys.argv[1:])]),
               "settings": vars(args), "rows": rows, "chosen": {"latent": latent, "pixel": pixel},
               "rule": f"robust = clean-correct and adversarially correct; chosen by robust accuracy correct in all "
                       f"K = {args.rescore_runs} runs among settings with clean accuracy (all K) >= {args.min_clean}",
               "wall_time_s": time.time() - started}
    atomic_write_json(out / "tuning.json", summary)  # a crash never leaves a half-written tuning.json
    print(f"\nchosen: t* = {latent['strength']}, latent scale {latent['scale']:g} "
          f"(clean {100 * latent['clean_accuracy']:.1f}%, robust {100 * latent['robust_accuracy']:.1f}%); pixel "
          f"scale {pixel['scale'] if pixel else 'none eligible'}; saved to {out}")


if __name__ == "__main__":
    from diffusers_agdm.exits import run_main

    sys.exit(run_main(main, "tune_purification.py"))  # 0 done, 2 bad input or environment, 3 a bug, 130 interrupted
