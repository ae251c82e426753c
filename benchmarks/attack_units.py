"""
What the attack benchmarks (attack_comparison.py, guidance_weight.py) share: the project's default attack run through
the very code `agdm evaluate` runs (`UnitRunner.attack`), clean-and-robust scoring over K fresh runs on draws shared
by every method (a paired comparison), and resumable units of a few images saved atomically, with the CPU time still
to go printed after each.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from common import atomic_write_json, load
from diffusers_agdm.attacks import AttackStats, rescore, robust_under
from diffusers_agdm.data import load_labelled_images
from diffusers_agdm.evaluation import EvaluationConfig, defense_specs
from diffusers_agdm.evaluation.execution import UnitRunner
from diffusers_agdm.evaluation.planning import EvaluationPlan
from diffusers_agdm.evaluation.seeds import derive_seed
from diffusers_agdm.utils.io import atomic_write_bytes
from diffusers_agdm.utils.scores import SCORES

# What `AttackBench.select` records per image (`UnitRunner.selection`): the worst case over attacks chooses on these.
SELECTION = ("selection_wrong", "selection_loss")


def add_common_arguments(parser, default_dir: Path, num_images: int = 32, chunk: int = 4) -> None:
    """The arguments every attack benchmark takes (budget overrides default to `agdm evaluate`'s)."""
    defaults = EvaluationConfig()
    parser.add_argument("--pipeline", default=None, help="pipeline folder or Hub id (default: the embedded default)")
    parser.add_argument("--num_images", type=int, default=num_images, help="held-out test images attacked")
    parser.add_argument("--start_index", type=int, default=0, help="first test image")
    parser.add_argument("--chunk", type=int, default=chunk, help="images per saved unit of work")
    parser.add_argument("--eps", type=float, default=defaults.eps, help="Linf radius")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="the default attack's iterations per run")
    parser.add_argument("--restarts", type=int, default=defaults.restarts)
    parser.add_argument("--targeted_restarts", type=int, default=defaults.targeted_restarts)
    parser.add_argument("--eot_samples", type=int, default=defaults.eot_samples)
    parser.add_argument("--rescore_runs", type=int, default=defaults.rescore_runs, help="K")
    parser.add_argument("--selection_runs", type=int, default=defaults.selection_runs,
                        help="fresh defense runs the worst case over attacks chooses on")
    parser.add_argument("--early_stop", action=argparse.BooleanOptionalAction, default=defaults.early_stop,
                        help="the default attack stops on images broken on all its selection draws")
    parser.add_argument("--long_runs_on_purifiers", action=argparse.BooleanOptionalAction,
                        default=defaults.long_runs_on_purifiers,
                        help="APGD spends its targeted runs as iterations of the untargeted run on purifiers")
    # Not part of the units' folder name: checkpointing changes the time and memory, never the numbers (tested).
    parser.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction,
                        default=defaults.gradient_checkpointing,
                        help="recompute activations in the backward pass (less memory; off is 1.2-1.45x faster)")
    parser.add_argument("--work_dir", type=Path, default=default_dir, help="where the units are saved")
    parser.add_argument("--seed", type=int, default=0)


def check_common_arguments(parser, args) -> None:
    for name in ("num_images", "chunk", "steps", "eot_samples", "rescore_runs", "selection_runs", "restarts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.targeted_restarts < 0 or args.start_index < 0 or not args.eps > 0:
        parser.error("--targeted_restarts and --start_index must be >= 0 and --eps > 0")
    if args.work_dir.exists() and not args.work_dir.is_dir():
        parser.error(f"--work_dir {args.work_dir} is not a folder")


class AttackBench:
    """The pipeline, the held-out images and the evaluation's own attack code, for one benchmark run."""

    def __init__(self, args, **config_overrides):
        self.args = args
        self.pipe = load(args.pipeline)
        for component in (self.pipe.unet, self.pipe.guidance, self.pipe.classifier):
            if component is not None:
                component.eval().requires_grad_(False)
        self.data = load_labelled_images("mnist", "test")  # the held-out split `agdm evaluate` uses by default
        if args.start_index + args.num_images > len(self.data):
            raise SystemExit(f"only {len(self.data)} test images")
        self.config = dataclasses.replace(
            EvaluationConfig(), eps=args.eps, steps=args.steps, restarts=args.restarts,
            targeted_restarts=args.targeted_restarts, eot_samples=args.eot_samples, rescore_runs=args.rescore_runs,
            selection_runs=args.selection_runs,
            early_stop=args.early_stop, gradient_checkpointing=args.gradient_checkpointing, show_progress_bar=False,
            long_runs_on_purifiers=args.long_runs_on_purifiers, **config_overrides)
        self.config.validate()
        self.specs = {spec.name: spec for spec in defense_specs(self.pipe, ("none", "pixel", "latent"))}
        self.device = next(self.pipe.unet.parameters()).device
        num_classes = int(self.pipe.classifier_logits(self.data.images[:1].to(self.device)).shape[-1])
        self.runner = UnitRunner(self.pipe, self.data, self.config, self.specs, self.device, num_classes)
        self.plan = EvaluationPlan(self.config, args.num_images, ["none", "pixel", "latent"])

    def purifier_job(self):
        """The default attack's job on a purifying defense (every defense these benchmarks attack purifies)."""
        return self.plan.job("latent", "apgd", self.args.seed)

    @property
    def budget(self) -> int:
        """The most gradient evaluations per image the default attack may spend on a purifier: (steps + 1) x EOT x
        runs (each run also evaluates its random start)."""
        job = self.purifier_job()
        return (job.steps + 1) * job.eot_samples * (job.restarts + job.targeted_restarts)

    def effective(self) -> dict:
        """The default attack's budget as it runs on purifiers (recorded beside the arguments)."""
        job = self.purifier_job()
        return {"steps": job.steps, "restarts": job.restarts, "targeted_restarts": job.targeted_restarts,
                "eot_samples": job.eot_samples}

    def shape_name(self) -> str:
        """The units' folder name: the attack as it really runs on purifiers (so units of different runs never mix;
        one shape reached by two settings shares its units)."""
        job, early_stop = self.purifier_job(), "-early_stop" if self.args.early_stop else ""
        return (f"eps{job.eps:g}-steps{job.steps}-runs{job.restarts}+{job.targeted_restarts}t-eot{job.eot_samples}"
                f"{early_stop}")

    def batch(self, start: int):
        end = min(start + self.args.chunk, self.args.start_index + self.args.num_images)
        return end, self.data.images[start:end].to(self.device), self.data.labels[start:end].to(self.device)

    def default_attack(self, defense: str, attack: str, images, labels, start: int, config=None):
        """`agdm evaluate`'s attack `attack` on these images (its seeds, its code) and the evaluations it spent."""
        runner = self.runner if config is None else UnitRunner(self.pipe, self.data, config, self.specs,
                                                               self.device, self.runner.num_classes)
        job = (self.plan if config is None else EvaluationPlan(config, self.args.num_images, [])).job(
            defense, attack, self.args.seed)
        stats = AttackStats()
        began = time.process_time()
        adversarial, _ = runner.attack(job, self.specs[defense], images, labels, start, stats=stats)
        cpu = time.process_time() - began
        return adversarial, {"gradient_evaluations": stats.gradient_evaluations.tolist(),
                             "forward_evaluations": stats.forward_evaluations.tolist(), "attack_cpu_s": cpu}

    def select(self, defense: str, adversarial, labels, start: int, runs: int | None = None) -> dict:
        """`agdm evaluate`'s selection records of these adversarial images (`UnitRunner.selection`: its draws, its
        code; `runs` draws instead of its `selection_runs`), on which the per-image worst case over attacks
        chooses."""
        scorer = self.specs[defense].build(self.pipe, seed=None)
        runs = self.config.selection_runs if runs is None else runs
        return self.runner.selection(scorer, self.args.seed, adversarial, labels, start, runs=runs) | {
            "selection_runs": runs}

    def score(self, defense: str, images, labels, start: int) -> list[list[int]]:
        """(K, n) correct-or-not over K fresh defense runs, on draws every method shares (paired)."""
        scorer = self.specs[defense].build(self.pipe, seed=None)
        seed = derive_seed(self.args.seed, "rescore", start)
        return rescore(scorer, images, labels, self.args.rescore_runs, seed=seed).correct.int().tolist()


def clean_and_robust(clean: list[list[int]], adversarial: list[list[int]]) -> dict:
    """Per image, robust under each score (the one K-run rule, `robust_under`): correct clean and attacked in all K
    runs, in a majority, in run 0."""
    c, a = torch.tensor(clean, dtype=torch.bool), torch.tensor(adversarial, dtype=torch.bool)
    k = c.shape[0]
    return {kind: (robust_under(kind, c.sum(0), k, c[0]) & robust_under(kind, a.sum(0), k, a[0])).tolist()
            for kind in SCORES}


def image_runs_robust(clean: list[list[int]], adversarial: list[list[int]]) -> list[int]:
    """Per run and image (run-major, flat), 1 if clean-correct and attacked-correct in that run: each of the K runs
    as a one-run trial, so their mean estimates the one-run score with all K runs' data."""
    return [int(c and a) for clean_row, adv_row in zip(clean, adversarial) for c, a in zip(clean_row, adv_row)]


def run_units(args, work: Path, keys: list[str], run_unit, complete=None) -> None:
    """Run `run_unit(key, start)` for every key and chunk not saved yet (or whose saved unit `complete(unit)` finds
    lacking: it is recomputed and replaced), saving each unit atomically as it finishes and printing the CPU time
    still to go (mean per unit so far x units left)."""
    def done(key, start):
        path = unit_path(work, key, start)
        return path.exists() and (complete is None or complete(json.loads(path.read_text())))

    todo = [(key, start) for key in keys
            for start in range(args.start_index, args.start_index + args.num_images, args.chunk)]
    todo = [(key, start) for key, start in todo if not done(key, start)]
    spent = []
    for index, (key, start) in enumerate(todo):
        began = time.process_time()
        unit = run_unit(key, start)
        unit["cpu_s"] = time.process_time() - began
        unit_path(work, key, start).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(unit_path(work, key, start), unit, indent=None)
        spent.append(unit["cpu_s"])
        left = (len(todo) - index - 1) * sum(spent) / len(spent)
        print(f"{key} [{start}, {unit['end']}): {unit['cpu_s']:.0f} CPU-s; about {left / 60:.1f} CPU-min left",
              flush=True)


def unit_path(work: Path, key: str, start: int) -> Path:
    return Path(work) / f"{key}-{start:05d}.json"


def examples_path(work: Path, key: str, start: int) -> Path:
    """Where a unit's adversarial images are kept (safetensors, beside its JSON), for analyses that need no attack."""
    return unit_path(work, key, start).with_suffix(".safetensors")


def save_examples(work: Path, key: str, start: int, adversarial) -> None:
    from safetensors.torch import save

    examples_path(work, key, start).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(examples_path(work, key, start), save({"adversarial": adversarial.detach().cpu().contiguous()}))


def load_examples(work: Path, key: str, start: int):
    from safetensors.torch import load_file

    return load_file(examples_path(work, key, start))["adversarial"]


def load_units(work: Path, key: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(work).glob(f"{key}-*.json"))]
