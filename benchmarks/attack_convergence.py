"""
Attack convergence: robust accuracy against gradient evaluations per image (steps x EOT x restarts), for unguided,
pixel-guided and latent-guided purification and each loss, under exact-gradient APGD-EOT through the whole defense.

One long APGD run per (defense, setting) records each image's worst point so far at several iteration counts, so the
steps axis comes from one run; EOT, restarts, losses and the guidance-target term are settings of their own. Every
recorded point is re-scored over K fresh defense runs (draws separate from the attack's) and counted robust only if
the image is also clean-correct (all K / majority of K / one run). Work is saved per (setting, defense, chunk) as it
finishes, so an interrupted run resumes where it stopped; `--summarize` writes the JSON and the plot.

    # one process per core, each its own settings (the default: the margin-loss steps axis for all three defenses)
    OMP_NUM_THREADS=1 python benchmarks/attack_convergence.py --defenses none pixel --tag margin &
    OMP_NUM_THREADS=1 python benchmarks/attack_convergence.py --defenses latent --tag margin &
    python benchmarks/attack_convergence.py --summarize
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, atomic_write_json, load, machine  # noqa: E402
from diffusers_agdm.attacks import SCORES, SELECTION_DRAWS, AttackStats, apgd, rescore, robust_under  # noqa: E402
from diffusers_agdm.data import load_labelled_images  # noqa: E402
from diffusers_agdm.evaluation.defenses import defense_specs  # noqa: E402
from diffusers_agdm.evaluation.seeds import derive_seed  # noqa: E402
from diffusers_agdm.utils.scores import SCORE_PLOT_TITLES  # noqa: E402

WORK_DIR = RESULTS_DIR / "attack_convergence"
DEFENSES = ("none", "pixel", "latent")  # each with its settings from `defense_specs`, as `agdm evaluate` has them


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None, help="pipeline folder or Hub id (default: the embedded default)")
    parser.add_argument("--tag", default="margin", help="name of this setting in the results")
    parser.add_argument("--defenses", nargs="+", default=["none", "pixel", "latent"], choices=list(DEFENSES))
    parser.add_argument("--num_images", type=int, default=64, help="held-out test images attacked")
    parser.add_argument("--start_index", type=int, default=0, help="first test image")
    parser.add_argument("--norm", default="Linf", choices=("Linf", "L2"))
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--loss", default="margin", choices=("margin", "ce", "dlr"))
    parser.add_argument("--steps", type=int, default=100, help="APGD iterations per run")
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--targeted_restarts", type=int, default=0)
    parser.add_argument("--eot_samples", type=int, default=1)
    parser.add_argument("--guidance_weight", type=float, default=0.0, help="the guidance-target term (latent only)")
    parser.add_argument("--selection_draws", type=int, default=SELECTION_DRAWS,
                        help="fresh draws judging each kept candidate (0: the attack's own loss picks it)")
    parser.add_argument("--no_early_stop", action="store_true",
                        help="keep attacking images already broken on every selection draw")
    parser.add_argument("--record_at", type=int, nargs="+", default=[5, 10, 25, 50, 100],
                        help="iteration counts (over all runs) at which the worst points so far are scored")
    parser.add_argument("--rescore_runs", type=int, default=5, help="K")
    parser.add_argument("--chunk", type=int, default=16, help="images per saved unit of work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summarize", action="store_true", help="only gather the saved units: JSON and plot")
    args = parser.parse_args(argv)
    total = args.steps * (args.restarts + args.targeted_restarts)
    if not args.summarize:
        if args.num_images < 1 or args.chunk < 1 or args.steps < 1 or args.rescore_runs < 1:
            parser.error("--num_images, --chunk, --steps and --rescore_runs must be >= 1")
        if args.selection_draws < 0:
            parser.error("--selection_draws must be >= 0")
        if any(not 1 <= r <= total for r in args.record_at):
            parser.error(f"--record_at values must lie in [1, {total}]")
    args.record_at = sorted(set(args.record_at) | {total})
    return args


def unit_path(args, defense: str, start: int) -> Path:
    return WORK_DIR / args.tag / f"{defense}-{start:05d}.json"


def run_unit(pipe, data, args, defense: str, start: int) -> dict:
    end = min(start + args.chunk, args.start_index + args.num_images)
    images, labels = data.images[start:end], data.labels[start:end]
    began = time.process_time()
    spec = defense_specs(pipe, (defense,))[0]
    attacked = spec.build(pipe, derive_seed(args.seed, args.tag, defense, "attack-noise", start))
    weight = args.guidance_weight if defense == "latent" else 0.0
    stats = AttackStats()
    _, snapshots = apgd(attacked, images, labels, eps=args.eps, norm=args.norm, steps=args.steps,
                        restarts=args.restarts, targeted_restarts=args.targeted_restarts,
                        eot_samples=args.eot_samples, loss=args.loss, guidance_weight=weight,
                        generator=torch.Generator().manual_seed(derive_seed(args.seed, args.tag, "start", start)),
                        record_at=tuple(args.record_at), show_progress_bar=True,
                        selection_draws=args.selection_draws, early_stop=not args.no_early_stop, stats=stats,
                        selection_model=spec.build(
                            pipe, derive_seed(args.seed, args.tag, defense, "selection", start)))
    attack_cpu = time.process_time() - began
    scorer = spec.build(pipe, None)
    scored_seed = derive_seed(args.seed, "rescore", start)  # the same draws for every setting: a paired comparison
    clean = rescore(scorer, images, labels, args.rescore_runs, seed=scored_seed).correct
    points = {str(n): rescore(scorer, x, labels, args.rescore_runs, seed=scored_seed).correct.int().tolist()
              for n, x in snapshots.items()}
    gradient_evaluations = {str(n): n * args.eot_samples for n in snapshots}
    return {"defense": defense, "start": start, "end": end, "labels": labels.tolist(),
            "clean_correct": clean.int().tolist(), "adversarial_correct": points,
            "gradient_evaluations": gradient_evaluations, "attack_cpu_s": attack_cpu,
            "gradient_evaluations_spent": stats.gradient_evaluations.tolist(),
            "forward_evaluations_spent": stats.forward_evaluations.tolist(),
            "cpu_s": time.process_time() - began, "settings": {k: v for k, v in vars(args).items()
                                                                if k not in ("summarize", "defenses")}}


def write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, payload, indent=None)


def robust_fractions(units: list[dict], key: str) -> dict:
    """Clean-and-robust accuracy under the three scores, over all images of `units` at recorded point `key`."""
    hits = dict.fromkeys(SCORES, 0)
    n = 0
    for unit in units:
        clean = torch.tensor(unit["clean_correct"], dtype=torch.bool)
        adv = torch.tensor(unit["adversarial_correct"][key], dtype=torch.bool)
        k = clean.shape[0]
        for kind in SCORES:  # the one K-run rule, clean and attacked
            hits[kind] += int((robust_under(kind, clean.sum(0), k, clean[0])
                               & robust_under(kind, adv.sum(0), k, adv[0])).sum())
        n += clean.shape[1]
    return {kind: value / n for kind, value in hits.items()} | {"num_images": n}


def summarize() -> dict:
    out = {}
    for tag_dir in sorted(p for p in WORK_DIR.iterdir() if p.is_dir()):
        units = [json.loads(p.read_text()) for p in sorted(tag_dir.glob("*.json"))]
        by_defense = {}
        for unit in units:
            by_defense.setdefault(unit["defense"], []).append(unit)
        out[tag_dir.name] = {}
        for defense, items in by_defense.items():
            keys = sorted(items[0]["adversarial_correct"], key=int)
            clean = robust_fractions([{**u, "adversarial_correct": {"c": u["clean_correct"]}} for u in items], "c")
            out[tag_dir.name][defense] = {
                "settings": items[0]["settings"], "clean": clean,
                "curve": [{"iterations": int(k), "gradient_evaluations": items[0]["gradient_evaluations"][k],
                           **robust_fractions(items, k)} for k in keys],
                "cpu_s": round(sum(u["cpu_s"] for u in items), 1)}
    return out


def plot(summary: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharey=True)
    colors = {"none": "tab:gray", "pixel": "tab:blue", "latent": "tab:red"}
    styles = ["-", "--", ":", "-.", (0, (3, 1, 1, 1)), (0, (5, 1))]
    for ax, kind in zip(axes, ("all", "majority", "single")):
        for index, (tag, by_defense) in enumerate(summary.items()):
            for defense, result in by_defense.items():
                curve = result["curve"]
                ax.plot([p["gradient_evaluations"] for p in curve], [100 * p[kind] for p in curve],
                        color=colors[defense], linestyle=styles[index % len(styles)], marker="o", markersize=3,
                        label=f"{defense} / {tag} (n={curve[0]['num_images']})")
        ax.set_xscale("log")
        ax.set_xlabel("gradient evaluations / image")
        ax.set_title(SCORE_PLOT_TITLES[kind])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("clean-and-robust accuracy (%)")
    fig.suptitle("Exact-gradient APGD through the whole defense, Linf 0.3 (gradient evaluations = steps x EOT x runs)",
                 fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)


def main(argv=None):
    args = parse(argv)
    if args.summarize:
        summary = summarize()
        payload = {"benchmark": "attack_convergence", "machine": machine(), "results": summary}
        write_atomic(RESULTS_DIR / "attack_convergence.json", payload)
        plot(summary, RESULTS_DIR / "attack_convergence.png")
        print(json.dumps(summary, indent=1)[:4000])
        return
    pipe = load(args.pipeline)
    for component in (pipe.unet, pipe.guidance, pipe.classifier):
        component.eval().requires_grad_(False)
    data = load_labelled_images("mnist", "test")
    if args.start_index + args.num_images > len(data):
        raise SystemExit(f"only {len(data)} test images")
    for defense in args.defenses:
        for start in range(args.start_index, args.start_index + args.num_images, args.chunk):
            path = unit_path(args, defense, start)
            if path.exists():
                continue
            unit = run_unit(pipe, data, args, defense, start)
            write_atomic(path, unit)
            print(f"{args.tag} {defense} [{start}, {unit['end']}): attack {unit['attack_cpu_s']:.0f} CPU-s; "
                  + ", ".join(f"{k}: {sum(all(c) for c in zip(*v))}/{len(v[0])}"
                              for k, v in unit["adversarial_correct"].items()), flush=True)


if __name__ == "__main__":
    main()
