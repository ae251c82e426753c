"""
From per-image records to accuracies. An image counts as robust only if the defense classifies it correctly both
clean and attacked, under each score: in all K runs, in a majority of K runs, and in one run (run 0, comparable with
papers that score a single run); the rule itself is [`robust_under`]. Clean accuracy uses the same three scores.

The per-image worst case over attacks (AutoAttack's rule: robust only if every attack fails on the image): per image,
among the attack rows that apply to the defense, the adversarial example misclassified on the most selection runs
(ties: the largest mean margin loss on them; then the first attack listed) is chosen, and that one example's record
on the K scoring runs is read. The selection runs are drawn apart from the scoring runs, so the row is not a minimum
over scoring draws (which would be biased low) and never higher than the attack rows it is chosen from would allow
on the selection runs. For a deterministic defense every run agrees and it is exactly the per-image minimum.
"""

import math
from collections import defaultdict
from dataclasses import dataclass

from ..attacks import robust_under
from .attacks_registry import WORST_CASE
from .config import SCORES
from .planning import EvaluationPlan, Job


def wilson_interval(fraction: float, n: int, z: float = 1.96) -> list[float]:
    """The 95% Wilson score interval of a binomial proportion observed as `fraction` of `n`."""
    if n == 0:
        return [0.0, 1.0]
    centre = (fraction + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(fraction * (1 - fraction) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def stats(values: list[float], num_images: int) -> dict:
    """Mean and sample std over seeds, and a 95% interval of the pooled proportion (the honest error bar of a
    single seed)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "std": std, "ci95": wilson_interval(mean, num_images * len(values))}


@dataclass(frozen=True)
class ImageRecord:
    """One image of one job: in how many of the K scoring runs the defense was right, run 0's verdict and
    prediction, and (attacks only) on how many selection runs it was wrong and its mean margin loss there."""

    correct_runs: int
    run0_correct: bool
    prediction: int
    selection_wrong: int | None = None
    selection_loss: float | None = None
    attack: str | None = None  # the worst-case row: which attack's example was chosen

    def correct(self, kind: str, k: int) -> bool:
        return bool(robust_under(kind, self.correct_runs, k, bool(self.run0_correct)))


def choose_worst(candidates: list[ImageRecord]) -> ImageRecord:
    """The candidate misclassified on the most selection runs (ties: the largest mean margin loss, then the first),
    judged on selection runs only: its scoring-run record is what the worst-case row reads."""
    if any(c.selection_wrong is None for c in candidates):
        raise RuntimeError("An attack record has no selection runs: it was saved by an older version; rerun it.")
    order = range(len(candidates))
    best = max(order, key=lambda i: (candidates[i].selection_wrong, candidates[i].selection_loss, -i))
    return candidates[best]


class Records:
    """The gathered per-image records of every job ([`ImageRecord`] per image)."""

    def __init__(self, outputs: list[dict], rescore_runs: int):
        self.k = rescore_runs
        self.per_job, self.seconds = defaultdict(dict), defaultdict(float)
        self.gradient_evaluations = defaultdict(int)
        self.gradient_checks, self.example_chunks = {}, {}
        for out in outputs:
            if "gradient_check" in out:
                self.gradient_checks[out["gradient_check"]] = out["check"]
                continue
            job = out["job"]
            self.seconds[job] += out["seconds"]
            self.gradient_evaluations[job] += out.get("gradient_evaluations", 0)
            n = len(out["correct_runs"])
            wrong, loss = out.get("selection_wrong", [None] * n), out.get("selection_loss", [None] * n)
            for offset, row in enumerate(zip(out["correct_runs"], out["run0_correct"], out["predictions"], wrong,
                                             loss)):
                self.per_job[job][out["start"] + offset] = ImageRecord(*row, attack=job.attack)
            if "examples" in out:
                self.example_chunks[job.defense] = out["examples"]
        for job, per_image in self.per_job.items():
            if sorted(per_image) != list(range(job.num_images)):
                raise RuntimeError(f"{job.describe()}: gathered results for {len(per_image)} images, expected "
                                   f"{job.num_images}; a process lost its share.")

    def rows(self, job: Job, num_images: int | None = None) -> list[ImageRecord]:
        return [self.per_job[job][i] for i in range(num_images if num_images is not None else job.num_images)]

    def worst_rows(self, jobs: list[Job], num_images: int) -> list[ImageRecord]:
        """Per image, the record of the worst case over `jobs` (see the module docstring)."""
        return [choose_worst([self.per_job[job][i] for job in jobs]) for i in range(num_images)]

    def correct(self, job: Job, kind: str, num_images: int | None = None) -> list[bool]:
        """Per image (the first `num_images`), whether the defense was right under score `kind`."""
        if kind not in SCORES:
            raise ValueError(f"Unknown score {kind!r}; choose from {SCORES}.")
        return [row.correct(kind, self.k) for row in self.rows(job, num_images)]

    def spent_per_image(self, job: Job) -> float:
        """Gradient evaluations the attack of `job` spent per image (EOT draws included)."""
        return self.gradient_evaluations[job] / job.num_images


class Aggregate:
    """Accuracies of an evaluation: every robust number is clean-and-robust, per score, over seeds."""

    def __init__(self, plan: EvaluationPlan, records: Records, labels: list[int]):
        self.plan, self.records, self.labels = plan, records, labels

    def clean_job(self, job: Job) -> Job:
        return self.plan.job(job.defense, "clean", job.seed)

    def robust(self, jobs: Job | list[Job], kind: str, num_images: int | None = None) -> list[bool]:
        """Per image: correct clean (a clean job) or clean-and-robust (an attack job; a list of attack jobs of one
        defense and seed is their per-image worst case)."""
        jobs = [jobs] if isinstance(jobs, Job) else list(jobs)
        n = jobs[0].num_images if num_images is None else num_images
        k = self.records.k
        rows = self.records.rows(jobs[0], n) if len(jobs) == 1 else self.records.worst_rows(jobs, n)
        correct = [row.correct(kind, k) for row in rows]
        if jobs[0].attack != "clean":
            clean = self.records.correct(self.clean_job(jobs[0]), kind, n)
            correct = [a and c for a, c in zip(correct, clean)]
        return correct

    def accuracy(self, job: Job | list[Job], kind: str, num_images: int | None = None) -> float:
        """Clean accuracy of a clean job; for an attack (or the worst case over a list of them), the fraction of
        images correct both clean and attacked."""
        correct = self.robust(job, kind, num_images)
        return sum(correct) / len(correct)

    def summary(self, jobs_by_seed: dict) -> dict:
        first = next(iter(jobs_by_seed.values()))
        num_images = (first[0] if isinstance(first, list) else first).num_images
        out = {}
        for kind in SCORES:
            per_seed = {str(seed): self.accuracy(job, kind) for seed, job in jobs_by_seed.items()}
            out[kind] = {**stats(list(per_seed.values()), num_images), "per_seed": per_seed}
        return out

    def attack_jobs(self, defense: str, seed: int) -> list[Job]:
        """The main attack jobs of `defense` on `seed`: what its worst-case row is chosen from."""
        main = self.plan.main_jobs(seed)
        return [main[(defense, a)] for a in self.plan.attacks_of(defense)]

    def results(self) -> dict:
        seeds = self.plan.config.seeds
        main = {seed: self.plan.main_jobs(seed) for seed in seeds}
        out = {}
        for d in self.plan.defenses:
            out[d] = {a: self.summary({seed: main[seed][(d, a)] for seed in seeds})
                      for (defense, a) in main[seeds[0]] if defense == d}
            if self.plan.attacks_of(d):
                out[d][WORST_CASE] = self.summary({seed: self.attack_jobs(d, seed) for seed in seeds})
        return out

    def gradient_evaluations(self) -> dict:
        """Gradient evaluations per image each main attack actually spent, per defense (mean over seeds)."""
        seeds = self.plan.config.seeds
        return {d: {a: sum(self.records.spent_per_image(self.plan.job(d, a, s)) for s in seeds) / len(seeds)
                    for a in self.plan.attacks_of(d)} for d in self.plan.defenses}

    def eps_curve(self) -> dict:
        seeds, plan = self.plan.config.seeds, self.plan
        main = {seed: plan.main_jobs(seed) for seed in seeds}
        curve = {seed: plan.curve_jobs(seed) for seed in seeds}
        return {d: [{"eps": 0.0, **self.summary({s: main[s][(d, "clean")] for s in seeds})}]
                + [{"eps": e, **self.summary({s: curve[s][(d, e)] for s in seeds})} for e in plan.curve_eps()]
                for d in plan.defenses}

    def per_image(self) -> list[dict]:
        rows = []

        def add(d, a, seed, index, record):
            row = {"defense": d, "attack": a, "seed": seed, "index": index, "label": self.labels[index],
                   "correct_runs": record.correct_runs, "run0_correct": bool(record.run0_correct),
                   "prediction_run0": record.prediction}
            if record.selection_wrong is not None:
                row |= {"selection_wrong": record.selection_wrong, "selection_loss": record.selection_loss}
            if a == WORST_CASE:
                row["chosen_attack"] = record.attack
            rows.append(row)

        for seed in self.plan.config.seeds:
            for (d, a), job in self.plan.main_jobs(seed).items():
                for index, record in sorted(self.records.per_job[job].items()):
                    add(d, a, seed, index, record)
            for d in self.plan.defenses:
                jobs = self.attack_jobs(d, seed)
                for index, record in enumerate(self.records.worst_rows(jobs, self.plan.num_images) if jobs else []):
                    add(d, WORST_CASE, seed, index, record)
        return rows

    def timing(self) -> dict:
        """Compute seconds per job (summed over chunks and processes), by defense."""
        out = defaultdict(dict)
        for job, seconds in sorted(self.records.seconds.items(), key=lambda item: item[0].describe()):
            label = job.describe().split("/", 1)[1] + f" n={job.num_images} seed={job.seed}"
            out[job.defense][label] = round(seconds, 3)
        return dict(out)
