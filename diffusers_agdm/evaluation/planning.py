"""
Planning an evaluation: which attack settings run on which images ([`Job`]), cut into units of work ([`Unit`]) that
processes share.

How the work is cut, and why the numbers do not depend on the number of processes or on interruptions: the images
are split into chunks of `batch_size` consecutive images; every (job, chunk) pair is one unit, and every random draw
in a unit (the attack's random start, the defense's noise while attacked, the K scoring runs) is seeded from
(seed, purpose, index of the chunk's first image). So any process can run any unit, at any time, and get the same
records: a run split over N processes, or stopped and resumed, equals one uninterrupted run.
"""

from dataclasses import dataclass, replace

from ..attacks import default_step_size
from .config import GUIDED_ONLY, EvaluationConfig
from .defenses import DEFENSES

# The huge-eps check needs no long attack (eps 1 allows any image); 20 PGD steps from the clean image suffice when
# the gradient reaches the input, and fewer steps only make the check harder to pass.
HUGE_EPS_STEPS = 20


@dataclass(frozen=True)
class Job:
    """One attack setting on the first `num_images` images of the set, for one defense and one seed."""

    defense: str
    attack: str  # "clean" or one of ATTACKS
    num_images: int
    seed: int
    norm: str = "Linf"
    eps: float = 0.0
    steps: int = 0
    eot_samples: int = 0
    restarts: int = 0
    targeted_restarts: int = 0
    step_size: float = 0.0  # PGD family only
    random_start: bool = True

    def describe(self) -> str:
        if self.attack == "clean":
            return f"{self.defense}/clean"
        runs = f" runs={self.restarts}+{self.targeted_restarts}t" if self.attack.startswith("apgd") else ""
        start = "" if self.random_start else " no-random-start"
        return (f"{self.defense}/{self.attack} {self.norm} eps={self.eps:g} steps={self.steps} "
                f"eot={self.eot_samples}{runs}{start}")

    @property
    def iterations(self) -> int:
        """Attack iterations per image (each a gradient of `eot_samples` draws): the progress bar's unit."""
        if self.attack == "clean":
            return 0
        if self.attack.startswith("apgd"):
            return self.steps * (self.restarts + self.targeted_restarts)
        if self.attack == "autoattack-rand":
            return 2 * self.steps
        return self.steps


@dataclass(frozen=True)
class Unit:
    """A job on one chunk [start, end) of images, or (job=None) the gradient check of `defense`."""

    job: Job | None
    start: int
    end: int
    defense: str = ""

    @property
    def key(self) -> str:
        """A file-name-safe identity of the unit (for the resume store)."""
        if self.job is None:
            return f"gradient-check-{self.defense}"
        fields = "-".join(str(v) for v in vars(self.job).values())
        return f"{fields}-{self.start}-{self.end}".replace("/", "_")


def applies(defense: str, attack: str) -> bool:
    """Whether `attack` exists for `defense` (the guidance-target attack needs a guidance network)."""
    return attack not in GUIDED_ONLY or defense == "latent"


class EvaluationPlan:
    """Every job of an evaluation of `num_images` images under `config`, and the units they are cut into."""

    def __init__(self, config: EvaluationConfig, num_images: int, purifying: list[str]):
        self.config, self.num_images, self.purifying = config, num_images, purifying
        # The undefended classifier is always evaluated: its collapse is the first sanity check.
        self.defenses = list(dict.fromkeys(config.defenses))
        self.scored_defenses = list(dict.fromkeys(["undefended"] + self.defenses))
        self.base_attack = next((a for a in config.attacks if a not in GUIDED_ONLY), "apgd")

    def job(self, defense, attack, seed, *, eps=None, norm=None, steps=None, eot=None, restarts=None,
            targeted=None, step_size=None, random_start=None, num_images=None) -> Job:
        cfg = self.config
        num_images = self.num_images if num_images is None else num_images
        if attack == "clean":
            return Job(defense, "clean", num_images, seed)
        eps = float(cfg.eps if eps is None else eps)
        common = {"norm": norm or cfg.norm, "eps": eps}
        if attack.startswith("autoattack"):
            eot = cfg.autoattack_eot_iter if attack == "autoattack-rand" else 1
            return Job(defense, attack, num_images, seed, steps=cfg.autoattack_steps, eot_samples=eot, **common)
        steps = cfg.steps if steps is None else steps
        eot = cfg.eot_samples if eot is None else eot
        if attack.startswith("apgd"):
            return Job(defense, attack, num_images, seed, steps=steps, eot_samples=eot,
                       restarts=cfg.restarts if restarts is None else restarts,
                       targeted_restarts=cfg.targeted_restarts if targeted is None else targeted, **common)
        # Off the nominal eps PGD's step scales with eps, so every point of a curve gets the same relative budget.
        if step_size is None:
            step_size = cfg.step_size * eps / cfg.eps if cfg.step_size is not None else default_step_size(eps, steps)
        return Job(defense, attack, num_images, seed, steps=steps, eot_samples=eot, step_size=float(step_size),
                   random_start=cfg.random_start if random_start is None else random_start, **common)

    def main_jobs(self, seed) -> dict:
        """(defense, attack) -> job, "clean" included, for every scored defense and applicable attack."""
        return {(d, a): self.job(d, a, seed) for d in self.scored_defenses
                for a in ("clean",) + self.config.attacks if applies(d, a)}

    def curve_eps(self) -> list[float]:
        return sorted({float(e) for e in self.config.eps_grid if e > 0} | {float(self.config.eps)})

    def curve_jobs(self, seed) -> dict:
        return {(d, e): self.job(d, self.base_attack, seed, eps=e) for d in self.defenses for e in self.curve_eps()}

    @property
    def sanity_count(self) -> int:
        return min(self.config.sanity_images, self.num_images)

    def doubled(self, job: Job, axis: str) -> Job:
        """`job` with one budget doubled, on the sanity images."""
        change = {"steps": {"steps": 2 * job.steps}, "eot": {"eot_samples": 2 * job.eot_samples},
                  "restarts": {"restarts": 2 * max(job.restarts, 1)}}[axis]
        return replace(job, num_images=self.sanity_count, **change)

    def sanity_jobs(self) -> dict:
        """The extra jobs of the costly checks, on the first seed and the first `sanity_images` images: each
        purifying defense's first attack with a doubled budget (per convergence axis), and PGD at a huge eps from
        the clean image. (The undefended collapse check reads the main jobs of every seed.)"""
        cfg, seed, n = self.config, self.config.seeds[0], self.sanity_count
        jobs = {}
        if n == 0:
            return jobs
        for d in self.purifying:
            weak = self.job(d, self.base_attack, seed)  # the main job; the check reads its first n images
            for axis in cfg.convergence_checks:
                if axis == "restarts" and not weak.attack.startswith("apgd"):
                    continue
                jobs[("converge", axis, d)] = self.doubled(weak, axis)
            jobs[("huge-eps", d)] = self.job(d, "pgd", seed, eps=cfg.huge_eps, norm="Linf", steps=HUGE_EPS_STEPS,
                                             step_size=default_step_size(cfg.huge_eps, HUGE_EPS_STEPS),
                                             random_start=False, num_images=n)
        return jobs

    def all_jobs(self) -> list[Job]:
        jobs = []
        for seed in self.config.seeds:
            jobs += list(self.main_jobs(seed).values()) + list(self.curve_jobs(seed).values())
        jobs += list(self.sanity_jobs().values())
        return list(dict.fromkeys(jobs))  # a job needed twice runs once

    def units(self) -> list[Unit]:
        jobs, size = self.all_jobs(), self.config.batch_size
        # Chunk-major order: the first images of every job come first.
        units = [Unit(job, start, min(start + size, job.num_images))
                 for start in range(0, self.num_images, size) for job in jobs if start < job.num_images]
        if self.config.gradient_check:
            units += [Unit(None, 0, 1, d) for d in self.purifying]
        return units


def unit_cost(unit: Unit, rescore_runs: int = 5) -> float:
    """A rough relative cost of a unit, for sharing them between processes: attack gradients through the reverse
    process dominate; the undefended classifier and the tiny float64 gradient check are almost free."""
    if unit.job is None:
        return 1.0
    job = unit.job
    passes = rescore_runs / 3 + job.iterations * max(1, job.eot_samples)
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


__all__ = ["DEFENSES", "EvaluationPlan", "Job", "Unit", "applies", "share_units", "unit_cost"]
