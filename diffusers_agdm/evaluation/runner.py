"""
`evaluate`: clean and robust accuracy of every defense on the same images, seeds and budgets, with the per-image worst
case over all attacks and sanity checks.

The work is a short sequence of its own modules: [`EvaluationConfig`] (settings, validated once) ->
[`EvaluationPlan`] (jobs and units) -> [`UnitRunner`] (one unit: attack, then K-run scoring; finished units saved by
[`ProgressStore`], so a rerun resumes) -> [`Records`] / [`Aggregate`] (clean-and-robust accuracies per score) ->
[`sanity_checks`] -> the report (`report.py`, `plots.py`). Under `accelerate launch --num_processes N` the units are
shared between processes and gathered; the numbers equal a one-process run (see `planning.py`).
"""

import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import LabelledImages, check_images_fit
from ..distributed import needs_cpu_process_group
from ..utils.paths import check_output_dir
from .aggregation import Aggregate, Records
from .attacks_registry import attack_spec
from .checks import sanity_checks
from .config import ATTACK_TITLES, ATTACKS, EvaluationConfig
from .defenses import DEFENSE_TITLES, DEFENSES, ROBUSTLY_CLASSIFIED, DefenseSpec, defense_specs, robust_logits
from .execution import UnitRunner
from .planning import EvaluationPlan, applies, share_units
from .report import settings_summary, text_summary, write_outputs
from .sanity import SanityCheck, format_sanity_block
from .seeds import derive_seed
from .store import ProgressStore, fingerprint_key, fingerprint_parts


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


# The processes meet once, to gather the results; one may wait there for hours while the other finishes its share
# of a CPU evaluation, and the default 30-minute collective timeout would then throw the whole run away.
GATHER_TIMEOUT = timedelta(hours=48)


def partial_state(cpu: bool = False):
    """accelerate's process state. On a machine without CUDA, a multi-process launch is a MULTI_CPU (gloo) run, which
    accelerate only sets up when told `cpu=True`."""
    from accelerate import PartialState

    return PartialState(cpu=cpu or needs_cpu_process_group(), timeout=GATHER_TIMEOUT)


def _package_versions() -> dict:
    import platform

    import accelerate
    import diffusers

    from .. import __version__  # noqa: I001 (the package imports this module)

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


def _merge_examples(chunks: dict, defenses: list[str], attack: str, eps: float, norm: str) -> dict | None:
    if not chunks:
        return None
    first = next(iter(chunks.values()))
    return {"images": first["images"], "labels": first["labels"], "attack": attack, "eps": eps, "norm": norm,
            "defenses": {d: {k: v for k, v in chunks[d].items() if k not in ("images", "labels")}
                         for d in defenses if d in chunks}}


def _prepare(pipeline, data: LabelledImages, config: EvaluationConfig, state) -> tuple[dict, int]:
    """Freeze the pipeline on the device, check the data against it; the defenses and the number of classes."""
    if pipeline.classifier is None:
        raise ValueError("The pipeline has no classifier: there is nothing to evaluate. Register one with "
                         "`pipe.register_modules(classifier=...)`.")
    if len(data) == 0:
        raise ValueError(f"The evaluation set {data.name or ''} holds no images.".replace("  ", " "))
    pipeline.to(state.device)
    pipeline.set_progress_bar_config(disable=True)
    for component in (pipeline.unet, pipeline.guidance, pipeline.classifier):
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    size = pipeline.sample_size
    check_images_fit(data, pipeline.unet.config.in_channels, size, what="the pipeline")
    with torch.no_grad():
        num_classes = int(pipeline.classifier_logits(data.images[:1].to(state.device)).shape[-1])
    check_images_fit(data, pipeline.unet.config.in_channels, size, num_classes=num_classes,
                     what="the pipeline's classifier")
    for attack in config.attacks:
        if num_classes < attack_spec(attack).min_classes:
            raise ValueError(f"{attack} needs at least {attack_spec(attack).min_classes} classes; the classifier "
                             f"has {num_classes}.")
    if any(d in ROBUSTLY_CLASSIFIED for d in config.defenses):
        if pipeline.guidance is None:
            raise ValueError("The robust-classifier defenses classify with the pipeline's guidance network, and it "
                             "has none: leave them out of the defenses.")
        with torch.no_grad():
            guidance_classes = int(robust_logits(pipeline, data.images[:1].to(state.device)).shape[-1])
        if guidance_classes != num_classes:
            raise ValueError(f"The guidance network predicts {guidance_classes} classes and the classifier "
                             f"{num_classes}: the robust-classifier defenses cannot be scored on these labels.")
    if config.loss == "dlr" and num_classes < 3:
        raise ValueError(f"The DLR loss needs at least 3 classes; the classifier has {num_classes}.")
    if config.targeted_restarts >= num_classes:
        raise ValueError(f"`targeted_restarts` must be below the number of classes ({num_classes}), got "
                         f"{config.targeted_restarts}.")
    if all(attack_spec(a).guided_only for a in config.attacks) and not any(
            applies(d, a) for d in config.defenses for a in config.attacks):
        raise ValueError("The apgd-guidance attack targets the guidance network of latent guidance, and no defense "
                         "evaluated has one: add the 'latent' defense or another attack.")
    names = ("undefended",) + tuple(d for d in config.defenses if d != "undefended")
    specs = {spec.name: spec for spec in config_defense_specs(pipeline, config, names)}
    return specs, num_classes


def _run_units(runner: UnitRunner, plan: EvaluationPlan, store: ProgressStore, state, config) -> list[dict]:
    """This process's share of the units, each loaded from the store if done before, else run and saved."""
    units = share_units(plan.units(), state.process_index, state.num_processes)
    # The example grid shows, per defense, the first images under the first attack that applies to every defense.
    shown = {plan.job(d, plan.base_attack, config.seeds[0]) for d in plan.scored_defenses}

    def wants_examples(unit):
        return config.num_examples > 0 and unit.start == 0 and unit.job in shown

    total = sum(max(1, u.job.iterations) if u.job is not None else 1 for u in units)
    bar = tqdm(total=total, desc="agdm evaluate", unit="it",
               disable=not (state.is_main_process and config.show_progress_bar))
    outputs = []
    for unit in units:
        bar.set_postfix_str(unit.job.describe() if unit.job else f"{unit.defense}/gradient check", refresh=True)
        ticks_done, ticks = bar.n, max(1, unit.job.iterations) if unit.job is not None else 1
        output = store.load(unit)
        if output is not None and wants_examples(unit) and "examples" not in output:
            output = None  # saved by a run that showed no examples: run it again for the grid
        if output is None:
            output = runner.run(unit, wants_examples(unit), callback=bar.update)  # ticks per attack iteration
            store.save(unit, output)
        bar.update(ticks_done + ticks - bar.n)  # what the unit did not tick itself (resumed, clean, torchattacks)
        outputs.append(output)
    bar.close()
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        outputs = gather_object(outputs)
    return outputs


def evaluate(
    pipeline,
    data: LabelledImages,
    config: EvaluationConfig | None = None,
    output_dir: str | Path | None = None,
    pipeline_name: str | None = None,
    command: str | None = None,
    resume: bool = True,
    **overrides,
) -> EvaluationResult:
    r"""
    Clean and robust accuracy of the undefended classifier, the adversarial-training baseline (the guidance network
    as the classifier), unguided purification (DiffPure-style), pixel guidance (GDMP-style), latent guidance (AGDM)
    and latent guidance classified by the robust network, on the same images, seeds and budgets, under every attack
    and the per-image worst case over them (`results[defense]["worst-case"]`), with sanity checks.

    Every attack sees the whole defense it is scored on (BPDA and the surrogate are labelled as the weaker
    baselines they are). Each adversarial (and clean) image is scored over `rescore_runs` fresh defense runs, and
    counts as robust only if it is clean-correct too. Run it under `accelerate launch --num_processes N` to split the
    images between processes; the result equals the one-process result. With `output_dir`, every finished unit of
    work is saved as it ends and a rerun with the same settings resumes (`resume=False` recomputes).

    Args:
        pipeline ([`AdversarialGuidedPurificationPipeline`]): With a classifier (and a guidance model for latent).
        data ([`LabelledImages`]): The labelled split, in [0, 1].
        config ([`EvaluationConfig`], *optional*): The settings; `overrides` replace single fields.
        output_dir (`str` or `Path`, *optional*): Where to write `results.json`, `results.md`,
            `robust_accuracy_vs_eps.png`, `examples_grid.png` and the progress of a run (checked before any work).
        pipeline_name (`str`, *optional*): Recorded in the report (folder or Hub id).
        command (`str`, *optional*): The command line recorded in the report (default: `sys.argv`).
        resume (`bool`, defaults to `True`): Reuse the finished units of an earlier run with the same settings.

    Returns:
        [`EvaluationResult`]. Raises [`SanityCheckError`] (after writing the outputs) when a sanity check fails and
        `allow_failed_sanity` is off, and `ValueError` for bad settings, data or output folder.

    Example:

    ```py
    >>> from diffusers_agdm import AdversarialGuidedPurificationPipeline
    >>> from diffusers_agdm.data import load_labelled_images
    >>> from diffusers_agdm.evaluation import EvaluationConfig, evaluate
    >>> pipe = AdversarialGuidedPurificationPipeline.from_pretrained("path/to/pipeline")  # doctest: +SKIP
    >>> data = load_labelled_images("mnist", "test").subset(0, 64)  # doctest: +SKIP
    >>> config = EvaluationConfig(eps=0.3, steps=100)
    >>> result = evaluate(pipe, data, config, output_dir="outputs/eval")  # doctest: +SKIP
    >>> result.report["results"]["latent"]["apgd"]["all"]["mean"]  # doctest: +SKIP
    ```
    """
    began, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    config = (config or EvaluationConfig()).replace(**overrides)
    output_path = None
    state = partial_state()
    if state.is_main_process:
        output_path = None if output_dir is None else check_output_dir(output_dir)
    specs, num_classes = _prepare(pipeline, data, config, state)
    defenses = list(dict.fromkeys(config.defenses))
    checked = [d for d in defenses if d != "undefended"]  # the undefended classifier has its own collapse check
    plan = EvaluationPlan(config, len(data), checked, num_classes=num_classes)
    described = {d: specs[d].describe(pipeline) for d in defenses}
    parts = fingerprint_parts(config, pipeline, data, described)
    key = fingerprint_key(parts)
    store = ProgressStore(output_dir, key, read=resume, parts=parts,
                          announce=print if state.is_main_process else lambda _: None, lock=state.is_main_process)
    runner = UnitRunner(pipeline, data, config, specs, state.device, num_classes)

    try:
        outputs = _run_units(runner, plan, store, state, config)
    finally:
        store.release()
    records = Records(outputs, config.rescore_runs)
    aggregate = Aggregate(plan, records, data.labels.tolist())
    checks = sanity_checks(aggregate, num_classes)
    report = {
        "title": "diffusers-agdm robustness evaluation",
        "pipeline": pipeline_name,
        "data": {"name": data.name, "num_images": len(data), "num_classes": num_classes,
                 "class_names": list(data.class_names)},
        "defenses": described,
        "settings": settings_summary(config, plan, pipeline, specs),
        "results": aggregate.results(),
        "gradient_evaluations_spent": aggregate.gradient_evaluations(),
        "eps_curve": aggregate.eps_curve(),
        "sanity_checks": [check.to_dict() for check in checks],
        "sanity_passed": not any(check.passed is False for check in checks),
        "per_image": aggregate.per_image(),
        "run": {"command": command if command is not None else shlex.join(sys.argv), "started_at": started_at,
                "wall_time_s": time.perf_counter() - began, "num_processes": state.num_processes,
                "device": str(state.device), "versions": _package_versions(), "seconds_per_job": aggregate.timing(),
                "fingerprint": key},
    }
    examples = _merge_examples(records.example_chunks, defenses, plan.base_attack, config.eps, config.norm)
    result = EvaluationResult(report=report, sanity_checks=checks, examples=examples, output_dir=output_path)

    if state.is_main_process:
        # The table first: whatever fails afterwards, the numbers have been shown.
        print(text_summary(result, color=sys.stdout.isatty()))
        if output_path is not None:
            write_outputs(result, output_path)
    if result.failed_checks and not config.allow_failed_sanity:
        raise SanityCheckError(result)
    return result


__all__ = [
    "ATTACKS",
    "ATTACK_TITLES",
    "DEFENSES",
    "DEFENSE_TITLES",
    "DefenseSpec",
    "EvaluationConfig",
    "EvaluationResult",
    "SanityCheck",
    "SanityCheckError",
    "check_output_dir",
    "defense_specs",
    "derive_seed",
    "evaluate",
    "format_sanity_block",
]
