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
from .attacks_registry import ATTACK_SPECS, attack_spec
from .config import EvaluationConfig
from .defenses import DEFENSES, GUIDANCE_OF

# The huge-eps check needs no long attack (eps 1 allows any image); 20 PGD steps from the clean image suffice when
# the gradient reaches the input, and fewer steps only make the check harder to pass.
HUGE_EPS_STEPS = 20


@dataclass(frozen=True)
class Job:
    """One attack setting on the first `num_images` images of the set, for one defense and one seed."""

    defense: str
    attack: str  # "clean" or one of ATTACKS (attacks_registry.py)
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
        family = ATTACK_SPECS[self.attack].family
        runs = f" runs={self.restarts}+{self.targeted_restarts}t" if family == "apgd" else ""
        start = "" if self.random_start else " no-random-start"
        return (f"{self.defense}/{self.attack} {self.norm} eps={self.eps:g} steps={self.steps} "
                f"eot={self.eot_samples}{runs}{start}")

    @property
    def iterations(self) -> int:
        """Attack iterations per image (each a gradient of `eot_samples` draws): the progress bar's unit."""
        return 0 if self.attack == "clean" else ATTACK_SPECS[self.attack].iterations(self)

    @property
    def spec(self):
        """The attack's [`AttackSpec`] (`None` for a clean job)."""
        return None if self.attack == "clean" else ATTACK_SPECS[self.attack]


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
    """Whether `attack` exists for `defense` (the guidance-target attack needs latent guidance's y_hat)."""
    return attack == "clean" or not attack_spec(attack).guided_only or GUIDANCE_OF.get(defense) == "latent"


class EvaluationPlan:
    """
    Every job of an evaluation of `num_images` images under `config`, and the units they are cut into. `checked`
    are the defenses that get the costly sanity checks (convergence, huge eps, gradient check): every defense but the
    undefended classifier, which has its own collapse check. `num_classes` caps targeted runs (the k-th most likely
    wrong class must exist), so a doubled number of runs is made up with untargeted ones.
    """

    def __init__(self, config: EvaluationConfig, num_images: int, checked: list[str], num_classes: int | None = None):
        self.config, self.num_images, self.checked, self.num_classes = config, num_images, checked, num_classes
        # The undefended classifier is always evaluated: its collapse is the first sanity check.
        self.defenses = list(dict.fromkeys(config.defenses))
        self.scored_defenses = list(dict.fromkeys(["undefended"] + self.defenses))
        self.base_attack = next((a for a in config.attacks if not attack_spec(a).guided_only), "apgd")

    def attacks_of(self, defense: str) -> list[str]:
        """The attack rows of `defense` (those that apply to it), in `config.attacks` order."""
        return [a for a in self.config.attacks if applies(defense, a)]

    def job(self, defense, attack, seed, *, eps=None, norm=None, steps=None, eot=None, restarts=None,
            targeted=None, step_size=None, random_start=None, num_images=None) -> Job:
        cfg = self.config
        num_images = self.num_images if num_images is None else num_images
        if attack == "clean":
            return Job(defense, "clean", num_images, seed)
        eps = float(cfg.eps if eps is None else eps)
        common = {"norm": norm or cfg.norm, "eps": eps}
        spec = attack_spec(attack)
        budget = spec.budget(cfg, purifies=defense in GUIDANCE_OF)
        steps = budget["steps"] if steps is None else steps
        eot = budget["eot_samples"] if eot is None else eot
        if spec.family == "autoattack":
            return Job(defense, attack, num_images, seed, steps=steps, eot_samples=eot, **common)
        if spec.family == "apgd":
            return Job(defense, attack, num_images, seed, steps=steps, eot_samples=eot,
                       restarts=budget["restarts"] if restarts is None else restarts,
                       targeted_restarts=budget["targeted_restarts"] if targeted is None else targeted, **common)
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
        """`job` with one budget axis really doubled, on the sanity images: twice the steps, twice the EOT draws,
        or twice the runs (untargeted and targeted both: 1 + 3 -> 2 + 6; targeted runs beyond the classes there
        are become untargeted ones, so the total still doubles)."""
        if axis not in job.spec.axes:
            raise ValueError(f"{job.attack} has no {axis!r} budget to double; it has {job.spec.axes}.")
        if axis == "steps":
            change = {"steps": 2 * job.steps}
        elif axis == "eot":
            change = {"eot_samples": 2 * job.eot_samples}
        else:
            runs = 2 * (job.restarts + job.targeted_restarts)
            targeted = 2 * job.targeted_restarts
            if self.num_classes is not None:
                targeted = min(targeted, self.num_classes - 1)
            change = {"restarts": runs - targeted, "targeted_restarts": targeted}
        return replace(job, num_images=self.sanity_count, **change)

    def convergence_jobs(self, defense: str, axis: str) -> dict:
        """attack -> its doubled job along `axis` (on the sanity images), for every attack row of `defense` that
        has that axis."""
        seed = self.config.seeds[0]
        return {a: self.doubled(self.job(defense, a, seed), axis) for a in self.attacks_of(defense)
                if axis in attack_spec(a).axes}

    def sanity_jobs(self) -> dict:
        """The extra jobs of the costly checks, on the first seed and the first `sanity_images` images: every attack
        row of each checked defense with each convergence axis doubled, and PGD at a huge eps from the clean image.
        (The undefended collapse check reads the main jobs of every seed.)"""
        cfg, seed, n = self.config, self.config.seeds[0], self.sanity_count
        jobs = {}
        if n == 0:
            return jobs
        for d in self.checked:
            for axis in cfg.convergence_checks:
                for attack, job in self.convergence_jobs(d, axis).items():
                    jobs[("converge", axis, d, attack)] = job
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
            units += [Unit(None, 0, 1, d) for d in self.checked]
        return units


def unit_cost(unit: Unit, rescore_runs: int = 5) -> float:
    """A rough relative cost of a unit, for sharing them between processes: attack gradients through the reverse
    process dominate; the undefended classifier and the tiny float64 gradient check are almost free."""
    if unit.job is None:
        return 1.0
    job = unit.job
    passes = rescore_runs / 3 + job.iterations * max(1, job.eot_samples)
    cheap = job.defense in ("undefended", "robust-classifier")  # one classifier forward, no reverse process
    return (unit.end - unit.start) * passes * (0.05 if cheap else 1.0)


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
