"""
The attacks an evaluation can run, in one table: name -> [`AttackSpec`] (title, family, which model its gradient
comes from, whether it needs a guidance network, the budget axes it has, its gradient evaluations per image, and the
runner). Planning, execution, the sanity checks and the reports read this table; no other module parses an attack's
name. Every runner has one call signature:

    runner(model, images, labels, job, *, config, num_classes, generator, callback, selection_model, stats)
        -> adversarial images

where `job` carries the budget (`steps`, `eot_samples`, `restarts`, `targeted_restarts`, `step_size`,
`random_start`), so a doubled job really runs the doubled budget.
"""

from collections.abc import Callable
from dataclasses import dataclass

# The attacks (and torch) load when an attack runs, not with this table: `agdm evaluate --help` reads its names.


def apgd_runs(steps: int, restarts: int, targeted: int, *, purifies: bool, long_runs: bool) -> tuple[int, int, int]:
    """
    (steps, restarts, targeted runs) of APGD on one defense. With `long_runs` on a defense that purifies (a random
    one), the targeted runs' budget lengthens the untargeted runs instead: `restarts` runs of
    ceil(steps x (restarts + targeted) / restarts) iterations, none targeted (25 x (1 + 3t) -> 100 x (1 + 0t)).
    Measured on 32 held-out images of the embedded default against latent guidance (benchmarks/RESULTS.md section
    7): four runs of 25 iterations left 15.6 / 59.4% clean-and-robust (all 5 / majority) where one run of 100 left
    far fewer, as did an independent one-run loop; short runs restart their step size on a noisy objective. A
    deterministic defense keeps its targeted runs (APGD-T is what breaks adversarially trained networks).
    """
    if not (long_runs and purifies and targeted):
        return steps, restarts, targeted
    return -(-steps * (restarts + targeted) // restarts), restarts, 0


def _run_apgd(model, images, labels, job, *, config, num_classes, generator, callback, selection_model=None,
              stats=None, guidance_weight=0.0):
    # `selection_model`: the defense with its own noise stream, on whose fresh draws APGD judges each run's candidate
    # points and stops on images broken on all of them (see `attacks.apgd`); `stats`, an `AttackStats` to fill.
    from ..attacks import apgd

    return apgd(model, images, labels, eps=job.eps, norm=job.norm, steps=job.steps, restarts=job.restarts,
                targeted_restarts=min(job.targeted_restarts, num_classes - 1), eot_samples=job.eot_samples,
                eot_batch=config.eot_batch, loss=config.loss, guidance_weight=guidance_weight, generator=generator,
                callback=callback, selection_model=selection_model, early_stop=config.early_stop, stats=stats)


def _run_apgd_guidance(model, images, labels, job, *, config, **kwargs):
    return _run_apgd(model, images, labels, job, config=config, guidance_weight=config.guidance_weight, **kwargs)


def _run_pgd(model, images, labels, job, *, config, num_classes, generator, callback, selection_model=None,
             stats=None):
    from ..attacks import pgd

    return pgd(model, images, labels, eps=job.eps, norm=job.norm, steps=job.steps, step_size=job.step_size,
               eot_samples=job.eot_samples, eot_batch=config.eot_batch, random_start=job.random_start,
               loss=config.loss, generator=generator, callback=callback)


def _autoattack_runner(version: str):
    def run(model, images, labels, job, *, config, num_classes, generator, callback, selection_model=None,
            stats=None):
        from ..attacks import autoattack

        # The job's steps and EOT, not the config's: a doubled job must run the doubled budget.
        return autoattack(model, images, labels, eps=job.eps, norm=job.norm, version=version, n_classes=num_classes,
                          seed=generator.initial_seed() % 2**31, steps=job.steps, eot_iter=job.eot_samples,
                          square_queries=config.autoattack_square_queries, eot_batch=config.eot_batch,
                          callback=callback)

    return run


@dataclass(frozen=True)
class AttackSpec:
    """
    One attack of the suite.

    Args:
        name, title: Its key (`--attacks`) and the column title of the tables.
        family: `"apgd"` (steps x (restarts + targeted) runs, EOT), `"pgd"` (steps, EOT) or `"autoattack"`
            (`autoattack_steps`, `autoattack_eot_iter`).
        runner: See the module docstring.
        gradient: What the attack differentiates: `"exact"` (the whole defense), `"bpda"` (identity backward
            through purification) or `"surrogate"` (a shorter reverse process); scored on the real defense always.
        guided_only: Needs a defense that purifies with latent guidance (it attacks the guidance network's y_hat).
        axes: The budget axes the convergence check can double (`steps`, `eot`, `restarts`).
        fixed_budget: Spends its whole budget on every image, so a doubled job spends twice the gradient
            evaluations (torchattacks' AutoAttack 'standard' stops on broken points, so its count is not fixed).
        autoattack_version: AutoAttack's version (`"rand"`, `"standard"`) for its two rows, else None.
    """

    name: str
    title: str
    family: str
    runner: Callable
    gradient: str = "exact"
    guided_only: bool = False
    axes: tuple[str, ...] = ("steps", "eot")
    fixed_budget: bool = True
    autoattack_version: str | None = None

    @property
    def min_classes(self) -> int:
        """The fewest classes it works with."""
        if self.autoattack_version is None:
            return 2
        from ..attacks.autoattack import autoattack_min_classes

        return autoattack_min_classes(self.autoattack_version)

    def budget(self, config, purifies: bool = False) -> dict:
        """The `Job` budget fields of this attack at `config`'s settings, on a defense that purifies or not (APGD's
        runs differ: `apgd_runs`)."""
        if self.family == "autoattack":
            eot = config.autoattack_eot_iter if "eot" in self.axes else 1
            return {"steps": config.autoattack_steps, "eot_samples": eot}
        budget = {"steps": config.steps, "eot_samples": config.eot_samples}
        if self.family == "apgd":
            steps, restarts, targeted = apgd_runs(config.steps, config.restarts, config.targeted_restarts,
                                                  purifies=purifies, long_runs=config.long_runs_on_purifiers)
            budget |= {"steps": steps, "restarts": restarts, "targeted_restarts": targeted}
        return budget

    def runs(self, job) -> int:
        """Attack runs per image, each `job.steps` iterations of `job.eot_samples` draws."""
        if self.family == "apgd":
            return job.restarts + job.targeted_restarts
        if self.name == "autoattack-rand":
            return 2  # APGD-CE and APGD-DLR
        return 1

    def iterations(self, job) -> int:
        """Attack iterations per image: the progress bar's unit."""
        return job.steps * self.runs(job)

    def gradient_evaluations(self, job, num_classes: int | None = None) -> int:
        """Planned gradient evaluations per image (iterations x EOT draws). For AutoAttack 'standard' an upper
        bound: APGD-CE, then APGD-T and FAB-T against each of `num_classes - 1` targets (Square is gradient-free);
        torchattacks attacks only the points still robust."""
        if self.name == "autoattack-standard":
            targets = max((num_classes or 10) - 1, 1)
            return job.steps * (1 + 2 * targets)
        return self.iterations(job) * job.eot_samples

    def describe_budget(self, job) -> str:
        """The budget as text, e.g. `50 steps x (1 + 3 targeted) runs, EOT 1`."""
        if self.family == "apgd":
            runs = f" x ({job.restarts} + {job.targeted_restarts} targeted) runs"
        elif self.name == "autoattack-rand":
            runs = " x 2 runs (APGD-CE, APGD-DLR)"
        elif self.name == "autoattack-standard":
            runs = " per sub-attack (APGD-CE, APGD-T, FAB-T; Square)"
        else:
            runs = ""
        return f"{job.steps} steps{runs}, EOT {job.eot_samples}"


ATTACK_SPECS = {spec.name: spec for spec in (
    AttackSpec("apgd", "APGD-EOT (exact gradient)", "apgd", _run_apgd, axes=("steps", "eot", "restarts")),
    AttackSpec("apgd-guidance", "APGD-EOT + guidance-target term", "apgd", _run_apgd_guidance, guided_only=True,
               axes=("steps", "eot", "restarts")),
    AttackSpec("pgd", "PGD-EOT (exact gradient)", "pgd", _run_pgd),
    AttackSpec("bpda", "BPDA (identity backward)", "pgd", _run_pgd, gradient="bpda"),
    AttackSpec("surrogate", "PGD-EOT on a surrogate reverse process", "pgd", _run_pgd, gradient="surrogate"),
    AttackSpec("autoattack-rand", "AutoAttack rand", "autoattack", _autoattack_runner("rand"),
               autoattack_version="rand"),
    AttackSpec("autoattack-standard", "AutoAttack standard", "autoattack", _autoattack_runner("standard"),
               axes=("steps",), fixed_budget=False, autoattack_version="standard"),
)}
ATTACKS = tuple(ATTACK_SPECS)
# The per-image worst case over every attack row of a defense (not an attack of its own: see aggregation.py).
WORST_CASE = "worst-case"
ATTACK_TITLES = {"clean": "clean", **{name: spec.title for name, spec in ATTACK_SPECS.items()},
                 WORST_CASE: "worst case over all attacks"}


def attack_spec(name: str) -> AttackSpec:
    """The spec of attack `name`; a `ValueError` naming the choices for an unknown one."""
    if name not in ATTACK_SPECS:
        raise ValueError(f"Unknown attack {name!r}; choose from {ATTACKS}.")
    return ATTACK_SPECS[name]


__all__ = ["ATTACKS", "ATTACK_SPECS", "ATTACK_TITLES", "WORST_CASE", "AttackSpec", "attack_spec"]
