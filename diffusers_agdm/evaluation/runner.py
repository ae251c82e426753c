"""
`evaluate`: clean and robust accuracy of the four defenses on the same images, seeds and budgets, with sanity checks.

How the work is cut, and why the numbers do not depend on the number of processes: the images are split into
chunks of `batch_size` consecutive images; every (attack setting, chunk) pair is one unit of work, and every random
draw in a unit (the attack's random start, the defense's noise while attacked, the K scoring runs) is seeded from
(seed, purpose, index of the chunk's first image). Under `accelerate launch --num_processes N` the units are split
between processes and the per-image records gathered, so N processes compute exactly what one process computes with
the same seeds and `batch_size`.
"""

import copy
import hashlib
import math
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..attacks import BPDAClassifier, autoattack, check_budget, default_step_size, pgd, rescore
from ..attacks.autoattack import autoattack_min_classes
from ..data import LabelledImages, check_images_fit
from ..distributed import needs_cpu_process_group
from .defenses import DEFENSE_TITLES, DEFENSES, DefenseSpec, defense_specs
from .sanity import (
    SanityCheck,
    check_gradient,
    check_huge_eps,
    check_no_rise,
    check_undefended_collapse,
    format_sanity_block,
)

ATTACKS = ("pgd", "bpda", "surrogate", "autoattack-rand", "autoattack-standard")
ATTACK_TITLES = {
    "clean": "clean",
    "pgd": "PGD-EOT (exact gradient)",
    "bpda": "BPDA (identity backward)",
    "surrogate": "PGD-EOT on a surrogate reverse process",
    "autoattack-rand": "AutoAttack rand",
    "autoattack-standard": "AutoAttack standard",
}
PGD_FAMILY = ("pgd", "bpda", "surrogate")


@dataclass
class EvaluationConfig:
    r"""
    Every setting of an evaluation; all of them are written to `results.json`.

    Args:
        attacks: Attacks to run, from `ATTACKS`. `pgd` is the exact-gradient PGD-EOT through the whole defense; `bpda`
            and `surrogate` are the cheaper literature baselines (comparison only); `autoattack-*` go through
            torchattacks.
        defenses: From `DEFENSES`: `undefended`, `none` (DiffPure-style), `pixel` (GDMP-style), `latent` (AGDM).
        norm, eps: The threat model, in [0, 1] pixel units (MNIST: Linf 0.3, L2 2.0).
        eps_grid: Further eps values for the robust-accuracy-vs-eps plot (exact PGD only; the step size is scaled
            with eps).
        pgd_steps, pgd_step_size, eot_samples, loss, random_start: The PGD budget (step size defaults to
            2.5 * eps / steps). BPDA and the surrogate use the same budget.
        surrogate_steps: Reverse steps of the surrogate process (default: half the defense's, at least 1).
        autoattack_steps, autoattack_eot_iter, autoattack_square_queries: AutoAttack's budget (defaults: the
            original's 100 iterations, EOT 20 in 'rand', 5,000 Square queries).
        rescore_runs: K, the fresh defense runs each (adversarial or clean) image is scored over. Reported both as
            "correct in all K" and "correct in a majority of K". Default 3: odd, so a majority has no ties.
        seeds: One full evaluation per seed; tables show mean and sample std over seeds.
        batch_size: Images per chunk of work (see the module docstring: results depend on it, not on the number of
            processes).
        strength, num_inference_steps, guidance_scale, feature_weight, class_guidance, guidance_target: Purification
            settings (default: the pipeline's config); `guidance_scale` is the latent scale.
        pixel_guidance_scale: The GDMP-style pixel guidance scale (default: the pipeline's `pixel_guidance_scale`).
        sanity_images: Images (the first ones) for the costly sanity checks (huge eps, more steps, more EOT); 0 skips
            them.
        sanity_steps, sanity_eot: (weak, strong) PGD steps and EOT samples those checks compare.
        huge_eps: The Linf eps at which every defense must fall to chance.
        gradient_check: Compare each defense's gradient with finite differences (float64, one image).
        num_examples: Images shown in `examples_grid.png`.
        allow_failed_sanity: Return normally even if a sanity check fails (otherwise [`SanityCheckError`]).
        show_progress_bar: A progress bar over the work (main process only).
    """

    attacks: tuple[str, ...] = ("pgd",)
    defenses: tuple[str, ...] = DEFENSES
    norm: str = "Linf"
    eps: float = 0.3
    eps_grid: tuple[float, ...] = ()
    pgd_steps: int = 20
    pgd_step_size: float | None = None
    eot_samples: int = 2
    loss: str = "ce"
    random_start: bool = True
    surrogate_steps: int | None = None
    autoattack_steps: int = 100
    autoattack_eot_iter: int = 20
    autoattack_square_queries: int = 5000
    rescore_runs: int = 3
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 16
    strength: float | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    pixel_guidance_scale: float | None = None
    feature_weight: float | None = None
    class_guidance: bool | None = None
    guidance_target: str | None = None
    sanity_images: int = 16
    sanity_steps: tuple[int, int] = (10, 50)
    sanity_eot: tuple[int, int] = (1, 8)
    huge_eps: float = 1.0
    gradient_check: bool = True
    num_examples: int = 6
    allow_failed_sanity: bool = False
    show_progress_bar: bool = True

    def validate(self) -> None:
        """Raise a `ValueError` naming the first bad setting."""
        for name in ("attacks", "defenses", "eps_grid", "seeds", "sanity_steps", "sanity_eot"):
            setattr(self, name, tuple(getattr(self, name)))
        if not self.attacks:
            raise ValueError(f"No attack given; choose from {ATTACKS}.")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"Unknown attacks {unknown}; choose from {ATTACKS}.")
        unknown = [d for d in self.defenses if d not in DEFENSES]
        if unknown or not self.defenses:
            raise ValueError(f"Unknown defenses {unknown}; choose from {DEFENSES}." if unknown else "No defense given.")
        check_budget(self.norm, self.eps, self.pgd_steps, self.pgd_step_size, self.eot_samples, self.loss)
        if self.eps <= 0:
            raise ValueError(f"The nominal `eps` must be > 0, got {self.eps!r}.")
        for value in self.eps_grid:
            check_budget(self.norm, value)
        if not isinstance(self.huge_eps, (int, float)) or not 0 < self.huge_eps <= 1:
            raise ValueError(f"`huge_eps` must be in (0, 1], got {self.huge_eps!r}.")
        positive = {"rescore_runs": self.rescore_runs, "batch_size": self.batch_size,
                    "autoattack_steps": self.autoattack_steps, "autoattack_eot_iter": self.autoattack_eot_iter,
                    "autoattack_square_queries": self.autoattack_square_queries}
        if self.surrogate_steps is not None:
            positive["surrogate_steps"] = self.surrogate_steps
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        for name in ("sanity_images", "num_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0, got {value!r}.")
        for name in ("sanity_steps", "sanity_eot"):
            pair = getattr(self, name)
            if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
                raise ValueError(f"`{name}` must be two integers >= 1 (weak, strong), got {pair!r}.")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds):
            raise ValueError(f"`seeds` must be one or more integers, got {self.seeds!r}.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` has repeats: {self.seeds!r}.")

    @property
    def step_size(self) -> float:
        """The PGD step size at the nominal eps."""
        return self.pgd_step_size if self.pgd_step_size is not None else default_step_size(self.eps, self.pgd_steps)


@dataclass(frozen=True)
class Job:
    """One attack setting on the first `num_images` images of the set, for one defense and one seed."""

    defense: str
    attack: str  # "clean" or one of ATTACKS
    norm: str
    eps: float
    steps: int
    step_size: float
    eot_samples: int
    num_images: int
    seed: int

    def describe(self) -> str:
        if self.attack == "clean":
            return f"{self.defense}/clean"
        return f"{self.defense}/{self.attack} {self.norm} eps={self.eps:g} steps={self.steps} eot={self.eot_samples}"


@dataclass(frozen=True)
class Unit:
    """A job on one chunk [start, end) of images, or (job=None) the gradient check of `defense`."""

    job: Job | None
    start: int
    end: int
    defense: str = ""


def unit_cost(unit: Unit) -> float:
    """A rough relative cost of a unit, for sharing them between processes: attack gradients through the reverse
    process dominate; the undefended classifier and the tiny float64 gradient check are almost free."""
    if unit.job is None:
        return 1.0
    job = unit.job
    passes = 1 + (0 if job.attack == "clean" else max(1, job.steps) * max(1, job.eot_samples))
    if job.attack.startswith("autoattack"):
        passes *= 2  # APGD-CE then APGD-DLR (or the T targets and Square of "standard")
    return (unit.end - unit.start) * passes * (0.05 if job.defense == "undefended" else 1.0)


def share_units(units: list[Unit], process_index: int, num_processes: int) -> list[Unit]:
    """This process's units: each unit, costliest first, goes to the least loaded process (the same deterministic
    split on every process). Dealing in turn gave one process every clean job and the other every attack; which
    process runs a unit never changes its numbers."""
    costs = [unit_cost(unit) for unit in units]
    load, mine = [0.0] * num_processes, set()
    for index in sorted(range(len(units)), key=lambda i: (-costs[i], i)):
        process = min(range(num_processes), key=lambda p: (load[p], p))
        load[process] += costs[index]
        if process == process_index:
            mine.add(index)
    return [unit for i, unit in enumerate(units) if i in mine]  # in run order: first images of every job first


@dataclass
class EvaluationResult:
    """What [`evaluate`] measured: `report` is exactly `results.json`; `examples` feeds `examples_grid.png`."""

    report: dict
    sanity_checks: list[SanityCheck]
    examples: dict | None = None
    output_dir: Path | None = None

    @property
    def failed_checks(self) -> list[SanityCheck]:
        return [check for check in self.sanity_checks if check.passed is False]

    @property
    def passed(self) -> bool:
        return not self.failed_checks


class SanityCheckError(RuntimeError):
    """A sanity check failed: the reported robust accuracies cannot be trusted. `.result` holds everything."""

    def __init__(self, result: EvaluationResult):
        self.result = result
        names = ", ".join(check.name for check in result.failed_checks)
        super().__init__(f"{len(result.failed_checks)} sanity check(s) failed: {names}. The outputs were written; "
                         "pass allow_failed_sanity=True (--allow_failed_sanity) to accept them anyway.")


def derive_seed(*parts) -> int:
    """A 60-bit seed from any tuple of ints and strings, the same in every process and Python run (unlike hash())."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


# The processes meet once, to gather the results; one may wait there for hours while the other finishes its share
# of a CPU evaluation, and the default 30-minute collective timeout would then throw the whole run away.
GATHER_TIMEOUT = timedelta(hours=48)


def partial_state(cpu: bool = False):
    """accelerate's process state. On a machine without CUDA, a multi-process launch is a MULTI_CPU (gloo) run, which
    accelerate only sets up when told `cpu=True`."""
    from accelerate import PartialState

    return PartialState(cpu=cpu or needs_cpu_process_group(), timeout=GATHER_TIMEOUT)


def _stats(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "std": std}


def _package_versions() -> dict:
    import platform

    import accelerate
    import diffusers

    from .. import __version__

    versions = {"diffusers_agdm": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                "accelerate": accelerate.__version__, "python": platform.python_version()}
    try:
        import torchattacks

        versions["torchattacks"] = torchattacks.__version__
    except ImportError:
        versions["torchattacks"] = None
    return versions


def config_defense_specs(pipeline, config: EvaluationConfig, names=None) -> list[DefenseSpec]:
    """The defenses `names` (default: `config.defenses`) with the purification overrides of `config`."""
    return defense_specs(
        pipeline, config.defenses if names is None else names, strength=config.strength,
        num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
        pixel_guidance_scale=config.pixel_guidance_scale, feature_weight=config.feature_weight,
        class_guidance=config.class_guidance, guidance_target=config.guidance_target)


class _Evaluation:
    """The state of one `evaluate` call: builds the work, runs this process's share, assembles the report."""

    def __init__(self, pipeline, data: LabelledImages, config: EvaluationConfig, state):
        self.pipeline, self.data, self.config, self.state = pipeline, data, config, state
        self.device = state.device
        self.num_images = len(data)
        names = DEFENSES if "undefended" in config.defenses else ("undefended",) + tuple(config.defenses)
        self.specs = {spec.name: spec for spec in config_defense_specs(pipeline, config, names)}
        self.defenses = list(dict.fromkeys(config.defenses))
        self.purifying = [d for d in self.defenses if self.specs[d].purifies]
        with torch.no_grad():
            self.num_classes = int(pipeline.classifier_logits(data.images[:1].to(self.device)).shape[-1])
        self._float64_pipeline = None

    # ------------------------------------------------------------------ the work
    def _job(self, defense, attack, seed, eps=None, norm=None, steps=None, step_size=None, eot=None, num_images=None):
        cfg = self.config
        num_images = self.num_images if num_images is None else num_images
        if attack == "clean":
            return Job(defense, "clean", cfg.norm, 0.0, 0, 0.0, 0, num_images, seed)
        eps = cfg.eps if eps is None else eps
        if attack.startswith("autoattack"):
            eot = cfg.autoattack_eot_iter if attack == "autoattack-rand" else 1
            return Job(defense, attack, norm or cfg.norm, eps, cfg.autoattack_steps, 0.0, eot, num_images, seed)
        steps = cfg.pgd_steps if steps is None else steps
        # Off the nominal eps the step size scales with eps, so every point of a curve gets the same relative budget.
        step_size = cfg.step_size * eps / cfg.eps if step_size is None else step_size
        return Job(defense, attack, norm or cfg.norm, float(eps), steps, float(step_size),
                   cfg.eot_samples if eot is None else eot, num_images, seed)

    def main_jobs(self, seed) -> dict:
        return {(d, a): self._job(d, a, seed) for d in self.defenses for a in ("clean",) + self.config.attacks}

    def curve_eps(self) -> list[float]:
        return sorted({float(e) for e in self.config.eps_grid if e > 0} | {float(self.config.eps)})

    def curve_jobs(self, seed) -> dict:
        return {(d, e): self._job(d, "pgd", seed, eps=e) for d in self.defenses for e in self.curve_eps()}

    def sanity_jobs(self) -> dict:
        cfg, seed = self.config, self.config.seeds[0]
        jobs = {("undefended-collapse",): self._job("undefended", "pgd", seed),
                ("undefended-clean",): self._job("undefended", "clean", seed)}
        n = min(cfg.sanity_images, self.num_images)
        if n == 0:
            return jobs
        (weak_steps, strong_steps), (weak_eot, strong_eot) = cfg.sanity_steps, cfg.sanity_eot
        for d in self.purifying:
            jobs[("huge-eps", d)] = self._job(d, "pgd", seed, eps=cfg.huge_eps, norm="Linf",
                                              step_size=default_step_size(cfg.huge_eps, cfg.pgd_steps),
                                              num_images=n)
            # More steps at the nominal step size; more EOT samples at the weak number of steps.
            for key, steps, eot in (("steps-weak", weak_steps, weak_eot), ("steps-strong", strong_steps, weak_eot),
                                    ("eot-strong", weak_steps, strong_eot)):
                jobs[(key, d)] = self._job(d, "pgd", seed, steps=steps, step_size=cfg.step_size, eot=eot,
                                           num_images=n)
        return jobs

    def all_jobs(self) -> list[Job]:
        jobs = []
        for seed in self.config.seeds:
            jobs += list(self.main_jobs(seed).values()) + list(self.curve_jobs(seed).values())
        jobs += list(self.sanity_jobs().values())
        return list(dict.fromkeys(jobs))  # a sanity job equal to a main job is run once

    def units(self) -> list[Unit]:
        jobs, size = self.all_jobs(), self.config.batch_size
        # Chunk-major order: the first images of every job come first.
        units = [Unit(job, start, min(start + size, job.num_images))
                 for start in range(0, self.num_images, size) for job in jobs if start < job.num_images]
        if self.config.gradient_check:
            units += [Unit(None, 0, 1, d) for d in self.purifying]
        return units

    # ------------------------------------------------------------------ running one unit
    def surrogate_steps(self, spec: DefenseSpec) -> int:
        if self.config.surrogate_steps is not None:
            return self.config.surrogate_steps
        steps = self.pipeline.resolve_settings(**spec.purify_kwargs).num_inference_steps
        return max(1, steps // 2)

    def gradient_model(self, job: Job, spec: DefenseSpec, seed: int):
        """The model PGD differentiates: the real defense (pgd), BPDA around it, or the surrogate process."""
        if job.attack == "bpda":
            return BPDAClassifier(spec.build(self.pipeline, seed), self.pipeline.classifier_logits)
        if job.attack == "surrogate" and spec.purifies:
            return spec.build(self.pipeline, seed, num_inference_steps=self.surrogate_steps(spec))
        return spec.build(self.pipeline, seed)

    def attack(self, job: Job, spec: DefenseSpec, images, labels, start: int):
        noise_seed = derive_seed(job.seed, "attack-noise", start)
        start_seed = derive_seed(job.seed, "attack-start", start)
        cfg = self.config
        if job.attack in PGD_FAMILY:
            return pgd(self.gradient_model(job, spec, noise_seed), images, labels, eps=job.eps, norm=job.norm,
                       steps=job.steps, step_size=job.step_size, eot_samples=job.eot_samples,
                       random_start=cfg.random_start, loss=cfg.loss,
                       generator=torch.Generator().manual_seed(start_seed))
        return autoattack(spec.build(self.pipeline, noise_seed), images, labels, eps=job.eps, norm=job.norm,
                          version=job.attack.split("-", 1)[1], n_classes=self.num_classes,
                          seed=start_seed % 2**31, steps=cfg.autoattack_steps, eot_iter=cfg.autoattack_eot_iter,
                          square_queries=cfg.autoattack_square_queries)

    def wants_examples(self, job: Job, start: int) -> bool:
        return (start == 0 and self.config.num_examples > 0 and job.seed == self.config.seeds[0]
                and job == self.main_jobs(job.seed).get((job.defense, self.config.attacks[0])))

    def run_unit(self, unit: Unit) -> dict:
        began = time.perf_counter()
        if unit.job is None:
            check = self.run_gradient_check(unit.defense)
            return {"gradient_check": unit.defense, "check": check.to_dict(), "seconds": time.perf_counter() - began}
        job, spec = unit.job, self.specs[unit.job.defense]
        images = self.data.images[unit.start:unit.end].to(self.device)
        labels = self.data.labels[unit.start:unit.end].to(self.device)
        evaluated = images if job.attack == "clean" else self.attack(job, spec, images, labels, unit.start)
        scorer = spec.build(self.pipeline, seed=None)
        rescore_seed = derive_seed(job.seed, "rescore", unit.start)
        scored = rescore(scorer, evaluated, labels, self.config.rescore_runs, seed=rescore_seed)
        if job.attack != "clean":
            self._check_within_budget(job, images, evaluated)
        output = {
            "job": job, "start": unit.start,
            "correct_runs": scored.correct_runs.tolist(), "predictions": scored.predictions[0].tolist(),
            "seconds": time.perf_counter() - began,
        }
        if self.wants_examples(job, unit.start):
            output["examples"] = self.examples(scorer, rescore_seed, images, labels, evaluated)
        return output

    def _check_within_budget(self, job: Job, images, adversarial) -> None:
        # Every attack, ours or torchattacks', must return images inside the threat model: otherwise the number is
        # not a robust accuracy at this eps.
        delta = (adversarial - images).flatten(1)
        size = delta.abs().max(1).values if job.norm == "Linf" else delta.norm(dim=1)
        if size.max().item() > job.eps * (1 + 1e-4) + 1e-6 or adversarial.min() < 0 or adversarial.max() > 1:
            raise RuntimeError(f"{job.describe()} returned images outside the threat model (largest perturbation "
                               f"{size.max().item():.4g}).")

    @torch.no_grad()
    def examples(self, scorer, rescore_seed, images, labels, adversarial) -> dict:
        # Replays scoring run 0 on the whole chunk (same seed, same batch), so the purified image shown is the one
        # run 0 classified.
        scorer.reseed(rescore_seed)
        purified = scorer.purify(adversarial)
        n = min(self.config.num_examples, images.shape[0])
        return {
            "images": images[:n].cpu(), "labels": labels[:n].cpu(), "adversarial": adversarial[:n].cpu(),
            "purified": purified[:n].cpu(),
            "raw_predictions": self.pipeline.classifier_logits(adversarial[:n]).argmax(-1).cpu(),
            "purified_predictions": self.pipeline.classifier_logits(purified).argmax(-1)[:n].cpu(),
        }

    def float64_pipeline(self):
        if self._float64_pipeline is None:
            from diffusers.utils import logging as diffusers_logging

            verbosity = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # silence "should be kept in float32" notes on the copy
            try:
                self._float64_pipeline = copy.deepcopy(self.pipeline).to(dtype=torch.float64)
            finally:
                diffusers_logging.set_verbosity(verbosity)
        return self._float64_pipeline

    def run_gradient_check(self, defense: str) -> SanityCheck:
        model = self.specs[defense].build(self.float64_pipeline(), seed=0)
        images = self.data.images[:1].to(self.device, torch.float64)
        labels = self.data.labels[:1].to(self.device)
        return check_gradient(model, images, labels, name=defense,
                              seed=derive_seed(self.config.seeds[0], "gradient-check") % 2**31)

    # ------------------------------------------------------------------ assembling the report
    def collect(self, outputs: list[dict]):
        records, seconds, gradient_checks, examples = defaultdict(dict), defaultdict(float), {}, {}
        for out in outputs:
            if "gradient_check" in out:
                gradient_checks[out["gradient_check"]] = out["check"]
                continue
            job = out["job"]
            seconds[job] += out["seconds"]
            for offset, (runs, prediction) in enumerate(zip(out["correct_runs"], out["predictions"])):
                records[job][out["start"] + offset] = (runs, prediction)
            if "examples" in out:
                examples[job.defense] = out["examples"]
        for job, per_image in records.items():
            if sorted(per_image) != list(range(job.num_images)):
                raise RuntimeError(f"{job.describe()}: gathered results for {len(per_image)} images, expected "
                                   f"{job.num_images}; a process lost its share.")
        self.records, self.seconds, self.gradient_checks, self.example_chunks = (
            records, seconds, gradient_checks, examples)

    def accuracy(self, job: Job, kind: str) -> float:
        runs = [r for r, _ in self.records[job].values()]
        k = self.config.rescore_runs
        hits = [r == k if kind == "all" else 2 * r > k for r in runs]
        return sum(hits) / len(hits)

    def summary(self, jobs_by_seed: dict) -> dict:
        out = {}
        for kind in ("all", "majority"):
            per_seed = {str(seed): self.accuracy(job, kind) for seed, job in jobs_by_seed.items()}
            out[kind] = {**_stats(list(per_seed.values())), "per_seed": per_seed}
        return out

    def results(self) -> dict:
        seeds = self.config.seeds
        main = {seed: self.main_jobs(seed) for seed in seeds}
        return {d: {a: self.summary({seed: main[seed][(d, a)] for seed in seeds})
                    for a in ("clean",) + self.config.attacks} for d in self.defenses}

    def eps_curve(self) -> dict:
        seeds = self.config.seeds
        main = {seed: self.main_jobs(seed) for seed in seeds}
        curve = {seed: self.curve_jobs(seed) for seed in seeds}
        return {d: [{"eps": 0.0, **self.summary({s: main[s][(d, "clean")] for s in seeds})}]
                + [{"eps": e, **self.summary({s: curve[s][(d, e)] for s in seeds})} for e in self.curve_eps()]
                for d in self.defenses}

    def sanity_checks(self) -> list[SanityCheck]:
        cfg, jobs = self.config, self.sanity_jobs()
        job = jobs[("undefended-collapse",)]
        checks = [check_undefended_collapse(self.accuracy(job, "majority"), job.num_images, cfg.norm, cfg.eps,
                                            clean_accuracy=self.accuracy(jobs[("undefended-clean",)], "majority"))]
        n = min(cfg.sanity_images, self.num_images)
        for d in self.purifying:
            if n == 0:
                skipped = "skipped: sanity_images is 0"
                checks += [SanityCheck(f"huge eps reaches chance [{d}]", None, skipped),
                           SanityCheck(f"robust accuracy does not rise with more PGD steps [{d}]", None, skipped),
                           SanityCheck(f"robust accuracy does not rise with more EOT samples [{d}]", None, skipped)]
                continue
            checks.append(check_huge_eps(d, self.accuracy(jobs[("huge-eps", d)], "majority"), n, self.num_classes,
                                         cfg.huge_eps))
            weak = jobs[("steps-weak", d)]
            for key, what in (("steps-strong", "more PGD steps"), ("eot-strong", "more EOT samples")):
                strong = jobs[(key, d)]
                names = ((f"{weak.steps} steps", f"{strong.steps} steps") if key == "steps-strong"
                         else (f"EOT {weak.eot_samples}", f"EOT {strong.eot_samples}"))
                # Both scores must hold, the conservative one (all K runs) and the majority; report a failing one.
                by_score = {kind: check_no_rise(d, what, (names[0], self.accuracy(weak, kind)),
                                                (names[1], self.accuracy(strong, kind)), n)
                            for kind in ("majority", "all")}
                kind, check = next(((k, c) for k, c in by_score.items() if not c.passed),
                                   ("majority", by_score["majority"]))
                check.detail += f" [score: {kind} of {cfg.rescore_runs} runs]"
                check.values = {k: c.values for k, c in by_score.items()}
                check.passed = all(c.passed for c in by_score.values())
                checks.append(check)
        for d in self.purifying:
            if not cfg.gradient_check:
                checks.append(SanityCheck(f"gradient is exact [{d}]", None, "skipped: gradient_check is off"))
            else:
                check = self.gradient_checks[d]
                checks.append(SanityCheck(check["name"], check["passed"], check["detail"], check["values"]))
        return checks

    def per_image(self) -> list[dict]:
        rows = []
        for seed in self.config.seeds:
            for (d, a), job in self.main_jobs(seed).items():
                for index, (runs, prediction) in sorted(self.records[job].items()):
                    rows.append({"defense": d, "attack": a, "seed": seed, "index": index,
                                 "label": int(self.data.labels[index]), "correct_runs": runs,
                                 "prediction_run0": prediction})
        return rows

    def timing(self) -> dict:
        """Compute seconds per job (summed over chunks and processes), by defense."""
        out = defaultdict(dict)
        for job, seconds in sorted(self.seconds.items(), key=lambda item: item[0].describe()):
            label = job.describe().split("/", 1)[1] + f" n={job.num_images} seed={job.seed}"
            out[job.defense][label] = round(seconds, 3)
        return dict(out)

    def settings(self) -> dict:
        cfg = self.config
        surrogate = {d: self.surrogate_steps(self.specs[d]) for d in self.purifying}
        return {
            "threat_model": {"norm": cfg.norm, "eps": cfg.eps, "eps_grid": self.curve_eps()},
            "attacks": list(cfg.attacks),
            "pgd": {"steps": cfg.pgd_steps, "step_size": cfg.step_size, "eot_samples": cfg.eot_samples,
                    "random_start": cfg.random_start, "loss": cfg.loss, "gradient": "exact, through the whole "
                    "defense (forward noising, every reverse step, second order through the guidance network, "
                    "classifier), per-step gradient checkpointing"},
            "bpda": {"same budget as pgd": True, "backward": "identity through purification"},
            "surrogate": {"same budget as pgd": True, "num_inference_steps": surrogate},
            "autoattack": {"steps": cfg.autoattack_steps, "eot_iter (rand)": cfg.autoattack_eot_iter,
                           "square_queries (standard)": cfg.autoattack_square_queries},
            "rescore_runs": cfg.rescore_runs,
            "seeds": list(cfg.seeds),
            "batch_size": cfg.batch_size,
            "sanity": {"images": min(cfg.sanity_images, self.num_images), "steps": list(cfg.sanity_steps),
                       "eot": list(cfg.sanity_eot), "huge_eps": cfg.huge_eps,
                       "huge_eps_step_size": default_step_size(cfg.huge_eps, cfg.pgd_steps),
                       "gradient_check": cfg.gradient_check},
            "config": asdict(cfg),
        }


def _merge_examples(chunks: dict, defenses: list[str], attack: str, eps: float, norm: str) -> dict | None:
    if not chunks:
        return None
    first = next(iter(chunks.values()))
    return {"images": first["images"], "labels": first["labels"], "attack": attack, "eps": eps, "norm": norm,
            "defenses": {d: {k: v for k, v in chunks[d].items() if k not in ("images", "labels")}
                         for d in defenses if d in chunks}}


def evaluate(
    pipeline,
    data: LabelledImages,
    config: EvaluationConfig | None = None,
    output_dir: str | Path | None = None,
    pipeline_name: str | None = None,
    command: str | None = None,
    **overrides,
) -> EvaluationResult:
    r"""
    Clean and robust accuracy of the undefended classifier, unguided purification (DiffPure-style), pixel guidance
    (GDMP-style) and latent guidance (AGDM) on the same images, seeds and budgets, with sanity checks.

    Every attack sees the whole defense it is scored on (BPDA and the surrogate are labelled as the weaker
    baselines they are). Each adversarial (and clean) image is scored over `rescore_runs` fresh defense runs. Run it
    under `accelerate launch --num_processes N` to split the images between processes; the result equals the
    one-process result. The pipeline's components are put in eval mode and frozen (evaluation never trains).

    Args:
        pipeline ([`AdversarialGuidedPurificationPipeline`]): With a classifier (and a guidance model for latent).
        data ([`LabelledImages`]): The labelled split, in [0, 1].
        config ([`EvaluationConfig`], *optional*): The settings; `overrides` replace single fields.
        output_dir (`str` or `Path`, *optional*): Where to write `results.json`, `results.md`,
            `robust_accuracy_vs_eps.png` and `examples_grid.png` (main process only).
        pipeline_name (`str`, *optional*): Recorded in the report (folder or Hub id).
        command (`str`, *optional*): The command line recorded in the report (default: `sys.argv`).

    Returns:
        [`EvaluationResult`]. Raises [`SanityCheckError`] (after writing the outputs) when a sanity check fails and
        `allow_failed_sanity` is off, and `ValueError` for bad settings or data.

    Example:

    ```py
    >>> from diffusers_agdm import AdversarialGuidedPurificationPipeline
    >>> from diffusers_agdm.data import load_labelled_images
    >>> from diffusers_agdm.evaluation import EvaluationConfig, evaluate
    >>> pipe = AdversarialGuidedPurificationPipeline.from_pretrained("path/to/pipeline")  # doctest: +SKIP
    >>> data = load_labelled_images("mnist", "test").subset(0, 64)  # doctest: +SKIP
    >>> result = evaluate(pipe, data, EvaluationConfig(eps=0.3, pgd_steps=50, eot_samples=4),
    ...                   output_dir="outputs/eval")  # doctest: +SKIP
    >>> result.report["results"]["latent"]["pgd"]["all"]["mean"]  # doctest: +SKIP
    ```
    """
    began, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    config = copy.deepcopy(config) if config is not None else EvaluationConfig()
    for name, value in overrides.items():
        if not hasattr(config, name):
            raise ValueError(f"Unknown evaluation setting {name!r}.")
        setattr(config, name, value)
    config.validate()
    if pipeline.classifier is None:
        raise ValueError("The pipeline has no classifier: there is nothing to evaluate. Register one with "
                         "`pipe.register_modules(classifier=...)`.")
    if len(data) == 0:
        raise ValueError(f"The evaluation set {data.name or ''} holds no images.".replace("  ", " "))

    state = partial_state()
    pipeline.to(state.device)
    pipeline.set_progress_bar_config(disable=True)
    for component in (pipeline.unet, pipeline.guidance, pipeline.classifier):
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    size = pipeline.sample_size
    check_images_fit(data, pipeline.unet.config.in_channels, size, what="the pipeline")
    run = _Evaluation(pipeline, data, config, state)
    check_images_fit(data, pipeline.unet.config.in_channels, size, num_classes=run.num_classes,
                     what="the pipeline's classifier")
    for attack in config.attacks:
        if attack.startswith("autoattack") and run.num_classes < autoattack_min_classes(attack.split("-", 1)[1]):
            raise ValueError(f"{attack} needs at least {autoattack_min_classes(attack.split('-', 1)[1])} classes; "
                             f"the classifier has {run.num_classes}.")

    my_units = share_units(run.units(), state.process_index, state.num_processes)
    outputs = []
    bar = tqdm(my_units, desc="agdm evaluate", disable=not (state.is_main_process and config.show_progress_bar))
    for unit in bar:
        bar.set_postfix_str(unit.job.describe() if unit.job else f"{unit.defense}/gradient check", refresh=False)
        outputs.append(run.run_unit(unit))
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        outputs = gather_object(outputs)
    run.collect(outputs)

    checks = run.sanity_checks()
    versions = _package_versions()
    report = {
        "title": "diffusers-agdm robustness evaluation",
        "pipeline": pipeline_name,
        "data": {"name": data.name, "num_images": len(data), "num_classes": run.num_classes,
                 "class_names": list(data.class_names)},
        "defenses": {d: run.specs[d].describe(pipeline) for d in run.defenses},
        "settings": run.settings(),
        "results": run.results(),
        "eps_curve": run.eps_curve(),
        "sanity_checks": [check.to_dict() for check in checks],
        "sanity_passed": not any(check.passed is False for check in checks),
        "per_image": run.per_image(),
        "run": {"command": command if command is not None else shlex.join(sys.argv), "started_at": started_at,
                "wall_time_s": time.perf_counter() - began, "num_processes": state.num_processes,
                "device": str(state.device), "versions": versions, "seconds_per_job": run.timing()},
    }
    examples = _merge_examples(run.example_chunks, run.defenses, config.attacks[0], config.eps, config.norm)
    result = EvaluationResult(report=report, sanity_checks=checks, examples=examples,
                              output_dir=Path(output_dir) if output_dir is not None else None)

    if state.is_main_process:
        from .report import write_outputs

        if output_dir is not None:
            write_outputs(result, output_dir)
        from .report import text_summary

        print(text_summary(result, color=sys.stdout.isatty()))
    if result.failed_checks and not config.allow_failed_sanity:
        raise SanityCheckError(result)
    return result


__all__ = [
    "ATTACKS",
    "ATTACK_TITLES",
    "DEFENSE_TITLES",
    "EvaluationConfig",
    "EvaluationResult",
    "SanityCheckError",
    "derive_seed",
    "evaluate",
    "format_sanity_block",
]
