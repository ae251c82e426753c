"""The settings of an evaluation, validated once: [`EvaluationConfig`], and the names of attacks and scores."""

from dataclasses import dataclass, field, fields

from ..settings_table import OPTIONS
from ..utils.scores import SCORE_TITLES, SCORES
from ..utils.validation import check_finite, check_int
from .attacks_registry import ATTACK_SPECS, ATTACK_TITLES, ATTACKS, WORST_CASE

# Standard library only at import (the attacks load in `validate`; the attack table loads its runners on use):
# `agdm evaluate --help` builds its flags from these fields without torch.
ROBUST_CLASSIFIER = "robust-classifier"
LATENT_ROBUST = "latent+robust-classifier"
DEFENSES = ("undefended", ROBUST_CLASSIFIER, "none", "pixel", "latent", LATENT_ROBUST)

# Re-exported: the attack table lives in attacks_registry.py, the K-run rule in attacks/scoring.py.
__all__ = ["ATTACKS", "ATTACK_SPECS", "ATTACK_TITLES", "CONVERGENCE_AXES", "SCORES", "SCORE_TITLES", "WORST_CASE",
           "EvaluationConfig"]
CONVERGENCE_AXES = ("steps", "eot", "restarts")
# Undefended collapse thresholds, calibrated on the embedded default with the strong attack (APGD, margin loss,
# targeted restarts): L2 2.0 leaves one or two hard digits that only a targeted run moves.
UNDEFENDED_MAX_ACCURACY = {"Linf": 0.01, "L2": 0.02}


@dataclass
class EvaluationConfig:
    r"""
    Every setting of an evaluation; all of them are written to `results.json`. Each field's `metadata["help"]` is
    the help of its `agdm evaluate` flag, which is generated from the field
    ([`~diffusers_agdm.utils.flags.add_dataclass_arguments`]).

    Args:
        attacks: Attacks to run, from `ATTACKS` (default: both APGD rows). `apgd` is exact-gradient APGD-EOT through
            the whole defense with restarts, the worst iterate kept; `apgd-guidance` adds a term attacking the guidance
            network's class prediction (latent guidance only: see the README's "Evaluating honestly"); `pgd` is plain
            PGD-EOT; `bpda` and `surrogate` are the cheaper literature baselines (comparison only); `autoattack-rand`
            is APGD-CE + APGD-DLR with EOT, `autoattack-standard` torchattacks' (for deterministic models).
        defenses: From `DEFENSES`: `undefended`, `robust-classifier` (the pipeline's adversarially trained guidance
            network used as the classifier at t = 0: the adversarial-training baseline), `none` (DiffPure-style),
            `pixel` (GDMP-style), `latent` (AGDM), `latent+robust-classifier` (latent purification, then the robust
            network classifies). Every table also has the per-image worst case over all attacks (`worst-case`).
        norm, eps: The threat model, in [0, 1] pixel units (MNIST: Linf 0.3, L2 2.0).
        eps_grid: Further eps values for the robust-accuracy-vs-eps plot (the first attack; PGD's step size scales
            with eps).
        steps, restarts, targeted_restarts, eot_samples, eot_batch, loss: The budget of `apgd`, `apgd-guidance`,
            `pgd`, `bpda` and `surrogate`: iterations per run, untargeted runs (APGD), runs targeted at the next most
            likely classes (APGD-T), EOT draws per gradient and per model call, and the loss (`margin`, `dlr` or
            `ce`).
        step_size, random_start: PGD's fixed step (default `2.5 * eps / steps`) and random start (APGD adapts its
            step and always starts at random).
        guidance_weight: Weight of the guidance-target term of `apgd-guidance` (default 2, measured strongest in the
            worst-case row).
        long_runs_on_purifiers: On defenses that purify (random ones), APGD spends its targeted runs' budget as more
            iterations of its untargeted run(s): 25 x (1 + 3 targeted) becomes one run of 100 (measured stronger
            against purification at the same cost); deterministic defenses keep their targeted runs.
        early_stop: Stop APGD on images misclassified on all its selection draws (cheaper, weaker: off by default).
        gradient_checkpointing: Checkpoint the attacked defense per reverse step (default) or keep every step's
            activations: faster on CPU, more memory; the gradients are the same.
        surrogate_steps: Reverse steps of the surrogate process (default: half the defense's, at least 1).
        autoattack_steps, autoattack_eot_iter, autoattack_square_queries: AutoAttack's budget (defaults: the
            original's 100 iterations, EOT 20 in 'rand', 5,000 Square queries).
        rescore_runs: K, the fresh defense runs each (adversarial or clean) image is scored over. An image is robust
            only if it is clean-correct *and* adversarially correct, under "all K", "majority of K" and "one run"
            (run 0). Default 5: odd, so a majority has no ties.
        selection_runs: Fresh defense runs (seeded apart from the attack's and from the K scoring runs) on which the
            `worst-case` row picks, per image, the adversarial example of the attack row that defeats the defense
            most often (ties: the larger mean margin loss); that one example is then scored over the K scoring
            runs, so the row is neither optimistic nor a biased minimum over scoring draws. Default 20 (5 picked the
            weaker example too often).
        seeds: One full evaluation per seed; tables show mean and sample std over seeds (one seed: a 95% interval).
        batch_size: Images per unit of work (results depend on it, not on the number of processes).
        strength, num_inference_steps, guidance_scale, pixel_guidance_scale, feature_weight, class_guidance,
            guidance_target: Purification settings (default: the pipeline's config); `guidance_scale` is the latent
            scale, `pixel_guidance_scale` the GDMP-style baseline's.
        sanity_images: Images (the first ones) for the costly checks (convergence, huge eps); 0 skips them. Default
            32: the fewest on which the paired convergence test below can reject a real drop of ~6 images.
        convergence_checks: Budgets doubled to test convergence, from `CONVERGENCE_AXES` (`steps`, `eot`,
            `restarts`; default all three). Each doubles that axis of every attack row that has it (restarts: the
            untargeted and the targeted runs both, 1 + 3 -> 2 + 6) on `sanity_images` images, and the check also
            runs on the `worst-case` row. Cost: per axis, twice each attack's cost on `sanity_images` images.
        convergence_tolerance: How far (fraction) robust accuracy may fall when a budget is doubled before the
            report says "attack not converged" (and `agdm evaluate` exits 1), whatever the paired test says.
        convergence_alpha: Level of the exact one-sided paired (McNemar) test of the convergence check: the images
            that turn robust -> broken under the doubled budget against those that turn broken -> robust. When
            doubling changes nothing, the test alone raises a false alarm at most `alpha` of the time per row, axis
            and score; the tolerance adds to that when many images change (on 32 images: 0% with 4 discordant
            images, 5.5% with 10, 13.2% with 20); each check reports its exact false-alarm rate.
        huge_eps: The Linf eps at which every defense must fall to chance (attacked without random start, so the
            start alone cannot pass it).
        gradient_check: Compare each defense's gradient with finite differences (float64, one image).
        num_examples: Images shown in `examples_grid.png`.
        allow_failed_sanity: Return normally even if a sanity check fails (otherwise [`SanityCheckError`]).
        show_progress_bar: A progress bar over the attack iterations (main process only).
    """

    attacks: tuple[str, ...] = field(default=("apgd", "apgd-guidance"), metadata={
        "help": f"comma-separated, from {', '.join(ATTACKS)}", "group": "threat"})
    defenses: tuple[str, ...] = field(default=DEFENSES, metadata={
        "help": f"comma-separated, from {', '.join(DEFENSES)}", "group": "threat"})
    norm: str = field(default="Linf", metadata={"help": "the threat model's norm", "choices": ("Linf", "L2"),
                                                "group": "threat"})
    eps: float = field(default=0.3, metadata={"help": "in [0, 1] pixel units (MNIST: Linf 0.3, L2 2.0)",
                                              "group": "threat"})
    eps_grid: tuple[float, ...] = field(default=(), metadata={
        "help": "more eps values for the accuracy-vs-eps plot", "nargs": "*", "group": "threat"})
    # The default budget: 25 iterations x (1 untargeted + 3 targeted runs) x EOT 2 = 200 gradient evaluations per
    # image; on defenses that purify, one untargeted run of 100 iterations x EOT 2 (`long_runs_on_purifiers`). EOT 2:
    # at EOT 1 APGD's step-size rule reacts to one draw's noise. Targeted runs stay on deterministic defenses: at 100
    # evaluations they leave the undefended default at 1.6% under L2 2.0 where untargeted ones leave 7.8%.
    # A budget, not a plateau: benchmarks/campaign.py's convergence study is what says where robust accuracy stops
    # falling.
    steps: int = field(default=25, metadata={
        "help": "iterations of each attack run (apgd, apgd-guidance, pgd, bpda, surrogate)", "group": "threat"})
    restarts: int = field(default=1, metadata={"help": "untargeted APGD runs per image", "group": "threat"})
    targeted_restarts: int = field(default=3, metadata={
        "help": "APGD runs targeted at the next most likely classes (APGD-T)", "group": "threat"})
    # Against purification, four runs of 25 iterations were weaker than one of 100 at the same cost (see
    # `attacks_registry.apgd_runs`): on defenses that purify, the targeted runs' budget lengthens the untargeted run.
    long_runs_on_purifiers: bool = field(default=True, metadata={
        "help": "on defenses that purify (random ones), spend APGD's targeted runs as more iterations of the "
                "untargeted run(s): 25 x (1 + 3 targeted) becomes 100 x 1 (measured stronger against purification); "
                "deterministic defenses keep their targeted runs", "group": "threat"})
    eot_samples: int = field(default=2, metadata={"help": "defense runs averaged per gradient (EOT)",
                                                  "group": "threat"})
    eot_batch: int | None = field(default=None, metadata={
        "help": "EOT draws per model call (default: all at once)", "group": "threat"})
    loss: str = field(default="margin", metadata={"help": "the loss the attacks ascend: ce, margin or dlr",
                                                  "group": "threat"})
    step_size: float | None = field(default=None, metadata={
        "help": "PGD's fixed step (default: 2.5 * eps / steps; APGD adapts its own)", "group": "threat"})
    random_start: bool = field(default=True, metadata={
        "help": "start PGD at a random point of the eps-ball (--no-random_start: at the clean image)",
        "group": "threat"})
    # Early stop (no more iterations for an image misclassified on all of APGD's selection draws) saves most of the
    # budget but weakens the attack: a stopped point is only just adversarial, and the K scoring runs then find it
    # correct often enough. On 32 held-out images of the embedded default (unguided purification, 200 evaluations,
    # benchmarks/attack_comparison.py) it left 9.4 / 34.4 / 37.5% clean-and-robust (all 5 / majority / one run) where
    # an independent EOT-2 loop spending the whole budget left 3.1 / 28.1 / 21.9%. So it is off by default.
    early_stop: bool = field(default=False, metadata={
        "help": "stop attacking an image once it is misclassified on all of APGD's selection draws (cheaper; "
                "measured to weaken the attack, so off by default)", "group": "threat"})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "checkpoint every reverse step of the attacked defense (memory that does not grow with the steps); "
                "--no-gradient_checkpointing keeps every step's activations (on the embedded default about 10 MB "
                "per image, EOT draw and step with latent guidance) for 1.3-1.45x faster gradients on CPU; the "
                "gradients are the same", "group": "threat"})
    # 2: on 32 held-out images of the embedded default (latent guidance, one run of 100 x EOT 2) the worst-case row
    # over `apgd` and `apgd-guidance` was lowest at weight 2 among 0.5, 1 and 2 (benchmarks/guidance_weight.py,
    # RESULTS.md section 8); at weight 1 `apgd-guidance` never won an image's selection against `apgd`.
    guidance_weight: float = field(default=2.0, metadata={
        "help": "weight of the guidance-target term of apgd-guidance", "group": "threat"})
    surrogate_steps: int | None = field(default=None, metadata={
        "help": "reverse steps of the surrogate process (default: half the defense's)", "group": "threat"})
    autoattack_steps: int = field(default=100, metadata={"help": "AutoAttack's APGD iterations", "group": "threat"})
    autoattack_eot_iter: int = field(default=20, metadata={
        "help": "EOT samples per gradient in AutoAttack's 'rand' version", "group": "threat"})
    autoattack_square_queries: int = field(default=5000, metadata={
        "help": "queries of AutoAttack's Square attack", "group": "threat"})
    rescore_runs: int = field(default=5, metadata={
        "help": "K: fresh defense runs each image is scored over (all K / majority of K)", "group": "threat"})
    # 20, not 5: chosen on 5 runs the worst-case row picked the weaker example often enough to sit above the `apgd`
    # row alone (latent, 32 images: 12.5% vs 6.2% "all 5"); on 20 runs it is at or below every row under every score
    # (RESULTS.md section 8). Selection runs are forward passes only: ~5% of an attack row's cost at the default.
    selection_runs: int = field(default=20, metadata={
        "help": "fresh defense runs (seeded apart from the attack's and the scoring runs) on which the worst-case row "
                "picks each image's adversarial example", "group": "threat"})
    seeds: tuple[int, ...] = field(default=(0,), metadata={
        "help": "one evaluation per seed; mean and std over seeds (--seed N: just N)", "aliases": ("seed",),
        "metavar": "SEED", "group": "threat"})
    batch_size: int = field(default=16, metadata={
        "help": "images per chunk of work (results depend on it, not on the number of processes)", "group": "threat"})
    # Purification settings: None = the pipeline's config; their flags and help come from the settings table.
    strength: float | None = field(default=None, metadata={"help": OPTIONS["strength"].help, "purification": True})
    num_inference_steps: int | None = field(default=None, metadata={"help": OPTIONS["num_inference_steps"].help,
                                                                    "purification": True})
    guidance_scale: float | None = field(default=None, metadata={"help": OPTIONS["guidance_scale"].help,
                                                                 "purification": True})
    pixel_guidance_scale: float | None = field(default=None, metadata={"help": OPTIONS["pixel_guidance_scale"].help,
                                                                       "purification": True})
    feature_weight: float | None = field(default=None, metadata={"help": OPTIONS["feature_weight"].help,
                                                                 "purification": True})
    class_guidance: bool | None = field(default=None, metadata={"help": OPTIONS["class_guidance"].help,
                                                                "purification": True})
    guidance_target: str | None = field(default=None, metadata={"help": OPTIONS["guidance_target"].help,
                                                                "purification": True})
    sanity_images: int = field(default=32, metadata={
        "help": "images for the costly checks (convergence, huge eps); 0 skips them", "group": "sanity"})
    convergence_checks: tuple[str, ...] = field(default=CONVERGENCE_AXES, metadata={
        "help": f"budgets doubled to test that the attack converged, from {', '.join(CONVERGENCE_AXES)} (none given: "
                "skip)", "nargs": "*", "group": "sanity"})
    convergence_tolerance: float = field(default=0.15, metadata={
        "help": "how far robust accuracy may fall when a budget doubles before the report says 'attack not "
                "converged'", "group": "sanity"})
    convergence_alpha: float = field(default=0.05, metadata={
        "help": "level of the exact one-sided paired (McNemar) test of the convergence check", "group": "sanity"})
    huge_eps: float = field(default=1.0, metadata={"help": "the Linf eps at which every defense must fall to chance",
                                                   "group": "sanity"})
    gradient_check: bool = field(default=True, metadata={
        "help": "compare each defense's gradient with finite differences", "group": "sanity"})
    num_examples: int = field(default=6, metadata={"help": "images shown in examples_grid.png", "group": "output"})
    allow_failed_sanity: bool = field(default=False, metadata={
        "help": "exit 0 even when a sanity check fails (the report still says FAILED)", "group": "sanity"})
    show_progress_bar: bool = field(default=True, metadata={"help": "show a progress bar", "flag": "progress_bar",
                                                            "group": "output"})

    def validate(self) -> None:
        """Raise a `ValueError` naming the first bad setting."""
        from ..attacks import LOSSES, check_budget

        for name in ("attacks", "defenses", "eps_grid", "seeds", "convergence_checks"):
            setattr(self, name, tuple(getattr(self, name)))
        if not self.attacks:
            raise ValueError(f"No attack given; choose from {ATTACKS}.")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"Unknown attacks {unknown}; choose from {ATTACKS}.")
        unknown = [d for d in self.defenses if d not in DEFENSES]
        if unknown or not self.defenses:
            raise ValueError(
                f"Unknown defenses {unknown}; choose from {DEFENSES}." if unknown else "No defense given."
            )
        check_budget(self.norm, self.eps, self.steps, self.step_size, self.eot_samples, self.loss, self.restarts)
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown loss {self.loss!r}; choose one of {LOSSES}.")
        if self.eps <= 0:
            raise ValueError(f"The nominal `eps` must be > 0, got {self.eps!r}.")
        for value in self.eps_grid:
            check_budget(self.norm, value)
        if not isinstance(self.huge_eps, (int, float)) or not 0 < self.huge_eps <= 1:
            raise ValueError(f"`huge_eps` must be in (0, 1], got {self.huge_eps!r}.")
        check_finite("guidance_weight", self.guidance_weight, minimum=0)
        tolerance = self.convergence_tolerance
        if not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
            raise ValueError(f"`convergence_tolerance` must be in [0, 1), got {tolerance!r}.")
        alpha = self.convergence_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ValueError(f"`convergence_alpha` must be in (0, 1), got {alpha!r}.")
        for name in ("rescore_runs", "selection_runs", "batch_size", "autoattack_steps", "autoattack_eot_iter",
                     "autoattack_square_queries"):
            check_int(name, getattr(self, name))
        for name in ("surrogate_steps", "eot_batch"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        for name in ("sanity_images", "num_examples", "targeted_restarts"):
            check_int(name, getattr(self, name), minimum=0)
        unknown = [a for a in self.convergence_checks if a not in CONVERGENCE_AXES]
        if unknown:
            raise ValueError(f"Unknown convergence checks {unknown}; choose from {CONVERGENCE_AXES}.")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds):
            raise ValueError(f"`seeds` must be one or more integers, got {self.seeds!r}.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` has repeats: {self.seeds!r}.")

    def replace(self, **overrides) -> "EvaluationConfig":
        """A validated copy with `overrides`; an unknown name is a `ValueError`."""
        names = {f.name for f in fields(self)}
        unknown = [name for name in overrides if name not in names]
        if unknown:
            raise ValueError(f"Unknown evaluation settings {unknown}.")
        values = {f.name: getattr(self, f.name) for f in fields(self)} | overrides
        config = EvaluationConfig(**values)
        config.validate()
        return config

    @property
    def pgd_step_size(self) -> float:
        """PGD's step size at the nominal eps."""
        from ..attacks import default_step_size

        return self.step_size if self.step_size is not None else default_step_size(self.eps, self.steps)

    @property
    def runs_per_attack(self) -> int:
        """APGD runs per image: untargeted restarts plus targeted ones."""
        return self.restarts + self.targeted_restarts
