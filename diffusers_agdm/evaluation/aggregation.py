"""
From per-image records to accuracies. An image counts as robust only if the defense classifies it correctly both
clean and attacked, under each score: in all K runs, in a majority of K runs, and in one run (run 0, comparable with
papers that score a single run). Clean accuracy uses the same three scores.
"""

import math
from collections import defaultdict

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


class Records:
    """The gathered per-image records of every job: `(correct_runs, run0_correct, prediction)` per image."""

    def __init__(self, outputs: list[dict], rescore_runs: int):
        self.k = rescore_runs
        self.per_job, self.seconds = defaultdict(dict), defaultdict(float)
        self.gradient_checks, self.example_chunks = {}, {}
        for out in outputs:
            if "gradient_check" in out:
                self.gradient_checks[out["gradient_check"]] = out["check"]
                continue
            job = out["job"]
            self.seconds[job] += out["seconds"]
            for offset, row in enumerate(zip(out["correct_runs"], out["run0_correct"], out["predictions"])):
                self.per_job[job][out["start"] + offset] = row
            if "examples" in out:
                self.example_chunks[job.defense] = out["examples"]
        for job, per_image in self.per_job.items():
            if sorted(per_image) != list(range(job.num_images)):
                raise RuntimeError(f"{job.describe()}: gathered results for {len(per_image)} images, expected "
                                   f"{job.num_images}; a process lost its share.")

    def correct(self, job: Job, kind: str, num_images: int | None = None) -> list[bool]:
        """Per image (the first `num_images`), whether the defense was right under score `kind`."""
        rows = [self.per_job[job][i] for i in range(num_images if num_images is not None else job.num_images)]
        if kind == "all":
            return [runs == self.k for runs, _, _ in rows]
        if kind == "majority":
            return [2 * runs > self.k for runs, _, _ in rows]
        if kind == "single":
            return [bool(run0) for _, run0, _ in rows]
        raise ValueError(f"Unknown score {kind!r}; choose from {SCORES}.")


class Aggregate:
    """Accuracies of an evaluation: every robust number is clean-and-robust, per score, over seeds."""

    def __init__(self, plan: EvaluationPlan, records: Records, labels: list[int]):
        self.plan, self.records, self.labels = plan, records, labels

    def clean_job(self, job: Job) -> Job:
        return self.plan.job(job.defense, "clean", job.seed)

    def accuracy(self, job: Job, kind: str, num_images: int | None = None) -> float:
        """Clean accuracy of a clean job; for an attack, the fraction of images correct both clean and attacked."""
        n = job.num_images if num_images is None else num_images
        adversarial = self.records.correct(job, kind, n)
        if job.attack != "clean":
            clean = self.records.correct(self.clean_job(job), kind, n)
            adversarial = [a and c for a, c in zip(adversarial, clean)]
        return sum(adversarial) / n

    def summary(self, jobs_by_seed: dict) -> dict:
        num_images = next(iter(jobs_by_seed.values())).num_images
        out = {}
        for kind in SCORES:
            per_seed = {str(seed): self.accuracy(job, kind) for seed, job in jobs_by_seed.items()}
            out[kind] = {**stats(list(per_seed.values()), num_images), "per_seed": per_seed}
        return out

    def results(self) -> dict:
        seeds = self.plan.config.seeds
        main = {seed: self.plan.main_jobs(seed) for seed in seeds}
        return {d: {a: self.summary({seed: main[seed][(d, a)] for seed in seeds})
                    for (defense, a) in main[seeds[0]] if defense == d}
                for d in self.plan.defenses}

    def eps_curve(self) -> dict:
        seeds, plan = self.plan.config.seeds, self.plan
        main = {seed: plan.main_jobs(seed) for seed in seeds}
        curve = {seed: plan.curve_jobs(seed) for seed in seeds}
        return {d: [{"eps": 0.0, **self.summary({s: main[s][(d, "clean")] for s in seeds})}]
                + [{"eps": e, **self.summary({s: curve[s][(d, e)] for s in seeds})} for e in plan.curve_eps()]
                for d in plan.defenses}

    def per_image(self) -> list[dict]:
        rows = []
        for seed in self.plan.config.seeds:
            for (d, a), job in self.plan.main_jobs(seed).items():
                for index, (runs, run0, prediction) in sorted(self.records.per_job[job].items()):
                    rows.append({"defense": d, "attack": a, "seed": seed, "index": index,
                                 "label": self.labels[index], "correct_runs": runs,
                                 "run0_correct": bool(run0), "prediction_run0": prediction})
        return rows

    def timing(self) -> dict:
        """Compute seconds per job (summed over chunks and processes), by defense."""
        out = defaultdict(dict)
        for job, seconds in sorted(self.records.seconds.items(), key=lambda item: item[0].describe()):
            label = job.describe().split("/", 1)[1] + f" n={job.num_images} seed={job.seed}"
            out[job.defense][label] = round(seconds, 3)
        return dict(out)
