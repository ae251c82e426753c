"""
Is the project's default attack at least as strong as a plain one at the same cost? The default attack (`apgd`
exactly as `agdm evaluate` runs it: its budget, seeds, selection draws and early stop) against a plain, independent
APGD-style loop written here from scratch (margin loss, cosine step decay, momentum 0.75, EOT 2, the best iterate
kept by its own EOT loss, one random start), given as many gradient evaluations per image as the default may spend
((steps + 1) x EOT x runs: each run also evaluates its start; the default spends fewer on images it stops early,
and both are recorded). Both are scored on the same K fresh defense runs, clean-and-robust, paired per image, for
unguided and latent purification of the embedded default on held-out images. The bar (issue 18): the default is
not weaker under any scoring rule.

Units of `--chunk` images are saved as they finish under `--work_dir/<settings>/` (rerun the same command to
resume); after each unit the CPU time left is printed; at the end the summary is printed and written to
`results/attack_comparison.json` (or `--results_dir`).

    OMP_NUM_THREADS=1 python benchmarks/attack_comparison.py --num_images 32        # the full run (CPU-hours)
    OMP_NUM_THREADS=1 python benchmarks/attack_comparison.py --num_images 2 --steps 2 --targeted_restarts 1
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_units import (  # noqa: E402
    SCORES,
    AttackBench,
    add_common_arguments,
    check_common_arguments,
    clean_and_robust,
    image_runs_robust,
    load_units,
    run_units,
)

from common import RESULTS_DIR, markdown_table, write_results  # noqa: E402
from diffusers_agdm.evaluation.seeds import derive_seed  # noqa: E402

WORK_DIR = RESULTS_DIR / "attack_comparison"
DEFENSES = ("none", "latent")
MOMENTUM = 0.75


def plain_attack(model, images, labels, *, eps: float, gradient_evaluations: int, eot: int = 2,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """
    An APGD-style Linf loop that shares no code with the project's attacks: margin loss ``max_{j != y} z_j - z_y``,
    step 2 eps x (1 + cos(pi i / n)) / 2 (cosine decay to 0), APGD's momentum (0.75 of the new step, 0.25 of the last
    move), EOT over `eot` draws per gradient, one random start, and per image the iterate with the highest EOT loss.
    """
    iterations = max(1, gradient_evaluations // eot)
    x0 = images.detach()
    noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x = (x0 + eps * (2 * noise - 1)).clamp(0, 1)
    previous = x.clone()
    best, best_loss = x.clone(), torch.full((x0.shape[0],), -math.inf, device=x0.device, dtype=torch.float64)

    def project(z):
        return torch.minimum(torch.maximum(z, x0 - eps), x0 + eps).clamp(0, 1)

    for i in range(iterations):
        z = x.clone().requires_grad_(True)
        logits = model(z.repeat(eot, 1, 1, 1)).double()
        y = labels.repeat(eot)
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -math.inf).max(1).values
        loss = (other - true).view(eot, -1).mean(0)
        grad = torch.autograd.grad(loss.sum(), z)[0]
        better = loss.detach() > best_loss
        best[better], best_loss[better] = x[better], loss.detach()[better]
        step = 2 * eps * (1 + math.cos(math.pi * i / iterations)) / 2
        candidate = project(x + step * grad.sign())
        if i > 0:
            candidate = project(x + MOMENTUM * (candidate - x) + (1 - MOMENTUM) * (x - previous))
        previous, x = x, candidate.detach()
    return best


def settings_name(bench: AttackBench) -> str:
    args = bench.args
    return f"{bench.shape_name()}-plain_eot{args.plain_eot}-k{args.rescore_runs}-seed{args.seed}"


def run_unit(bench: AttackBench, defense: str, start: int) -> dict:
    args = bench.args
    end, images, labels = bench.batch(start)
    clean = bench.score(defense, images, labels, start)
    default_adv, default_cost = bench.default_attack(defense, "apgd", images, labels, start)
    attacked = bench.specs[defense].build(bench.pipe, derive_seed(args.seed, "plain-attack-noise", start))
    began = time.process_time()
    plain_adv = plain_attack(attacked, images, labels, eps=args.eps, gradient_evaluations=bench.budget,
                             eot=args.plain_eot,
                             generator=torch.Generator().manual_seed(derive_seed(args.seed, "plain-start", start)))
    plain_cpu = time.process_time() - began
    plain_spent = max(1, bench.budget // args.plain_eot) * args.plain_eot
    return {"defense": defense, "pipeline": None if args.pipeline is None else str(args.pipeline),
            "start": start, "end": end, "labels": labels.tolist(), "clean_correct": clean,
            # The default's selection records let guidance_weight.py reuse this unit as its weight 0.
            "default": {"correct": bench.score(defense, default_adv, labels, start),
                        **bench.select(defense, default_adv, labels, start), **default_cost},
            "plain": {"correct": bench.score(defense, plain_adv, labels, start), "attack_cpu_s": plain_cpu,
                      "gradient_evaluations": [plain_spent] * len(labels)}}


def summarize(units: list[dict]) -> dict:
    """Clean-and-robust accuracy of both attacks under each score, and the paired disagreements."""
    robust = {m: {s: [] for s in SCORES} for m in ("default", "plain")}
    spent = {m: [] for m in ("default", "plain")}
    for unit in units:
        for method in robust:
            per_image = clean_and_robust(unit["clean_correct"], unit[method]["correct"])
            for score in SCORES:
                robust[method][score] += per_image[score]
            spent[method] += unit[method]["gradient_evaluations"]
    n = len(spent["default"])
    out = {"num_images": n}
    for method in robust:
        out[method] = {score: sum(v) / n for score, v in robust[method].items()}
        out[method]["mean_gradient_evaluations"] = sum(spent[method]) / n
        out[method]["attack_cpu_s"] = round(sum(u[method]["attack_cpu_s"] for u in units), 1)
    out["paired"] = {score: {
        "robust_to_default_broken_by_plain": sum(d and not p for d, p in zip(robust["default"][score],
                                                                              robust["plain"][score])),
        "robust_to_plain_broken_by_default": sum(p and not d for d, p in zip(robust["default"][score],
                                                                              robust["plain"][score]))}
        for score in SCORES}
    out["default_not_weaker"] = all(out["default"][s] <= out["plain"][s] for s in SCORES)
    # "One run" scores run 0 only, so on 32 images it rests on one draw per image. Each of the K runs is an equally
    # valid one-run trial: their mean estimates the same one-run accuracy with all the data, paired per image and run.
    per_run = {m: [v for unit in units for v in image_runs_robust(unit["clean_correct"], unit[m]["correct"])]
               for m in robust}
    for method, flat in per_run.items():
        out[method]["per_run_mean"] = sum(flat) / max(1, len(flat))
    pairs = list(zip(per_run["default"], per_run["plain"]))
    out["paired_image_runs"] = {"robust_to_default_broken_by_plain": sum(d and not p for d, p in pairs),
                                "robust_to_plain_broken_by_default": sum(p and not d for d, p in pairs),
                                "image_runs": len(pairs)}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, WORK_DIR)
    parser.add_argument("--defenses", nargs="+", default=list(DEFENSES), choices=("none", "pixel", "latent"))
    parser.add_argument("--plain_eot", type=int, default=2, help="EOT draws per gradient of the plain loop")
    parser.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.plain_eot < 1:
        parser.error("--plain_eot must be >= 1")
    if args.results_dir.exists() and not args.results_dir.is_dir():
        parser.error(f"--results_dir {args.results_dir} is not a folder")
    started = time.time()
    bench = AttackBench(args)
    work = args.work_dir / settings_name(bench)
    print(f"default attack: {bench.budget} gradient evaluations per image at most; units in {work}", flush=True)
    run_units(args, work, list(args.defenses), lambda defense, start: run_unit(bench, defense, start))
    summary = {defense: summarize([u for u in load_units(work, defense)
                                   if args.start_index <= u["start"] < args.start_index + args.num_images])
               for defense in args.defenses}
    rows = [[defense, method, *(f"{100 * s[method][score]:.1f}" for score in SCORES),
             f"{s[method]['mean_gradient_evaluations']:.0f}", str(s["num_images"])]
            for defense, s in summary.items() for method in ("default", "plain")]
    print(markdown_table(["defense", "attack", "all K %", "majority %", "one run %", "gradient evals / image",
                          "images"], rows))
    for defense, s in summary.items():
        print(f"{defense}: default not weaker under every score: {s['default_not_weaker']}; paired "
              + ", ".join(f"{score} {v['robust_to_default_broken_by_plain']} vs "
                          f"{v['robust_to_plain_broken_by_default']}" for score, v in s["paired"].items()))
        pr = s["paired_image_runs"]
        print(f"{defense}: one run, mean over the K runs: default {100 * s['default']['per_run_mean']:.1f}%, plain "
              f"{100 * s['plain']['per_run_mean']:.1f}%; image-runs robust to the default but not the plain loop "
              f"vs the reverse: {pr['robust_to_default_broken_by_plain']} vs {pr['robust_to_plain_broken_by_default']}"
              f" of {pr['image_runs']}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["effective"] = bench.effective()  # the runs as they ran on purifiers (`long_runs_on_purifiers`)
    write_results("attack_comparison", settings, summary, started, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
