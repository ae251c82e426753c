"""
Running one unit of work: attack a chunk of images through one defense, then score it over K fresh defense runs,
and judge it on `selection_runs` further runs (which the per-image worst case over attacks chooses on).

Three separate streams of purification noise, each seeded from (seed, purpose, first image of the chunk): the
attack's, the selection runs' and the K scoring runs'. The worst case picks each image's adversarial example on the
selection runs and reads its score from the scoring runs, so the choice cannot overfit the score.
"""

import copy
import time

import torch

from ..attacks import BPDAClassifier, rescore
from .config import EvaluationConfig
from .defenses import DefenseSpec
from .planning import Job, Unit
from .sanity import SanityCheck, check_gradient
from .seeds import derive_seed


class UnitRunner:
    """Runs units of an evaluation on one process: holds the pipeline, the data and the defenses."""

    def __init__(self, pipeline, data, config: EvaluationConfig, specs: dict[str, DefenseSpec], device,
                 num_classes: int):
        self.pipeline, self.data, self.config, self.specs = pipeline, data, config, specs
        self.device, self.num_classes = device, num_classes
        self._float64_pipeline = None

    # ------------------------------------------------------------------ attacks
    def surrogate_steps(self, spec: DefenseSpec) -> int:
        if self.config.surrogate_steps is not None:
            return self.config.surrogate_steps
        return max(1, spec.settings.num_inference_steps // 2)

    def gradient_model(self, job: Job, spec: DefenseSpec, seed: int):
        """The model an attack differentiates: the real defense, BPDA around it, or the surrogate process."""
        gradient, checkpointing = job.spec.gradient, self.config.gradient_checkpointing
        if gradient == "bpda":
            return BPDAClassifier(spec.build(self.pipeline, seed, gradient_checkpointing=checkpointing),
                                  spec.classifier(self.pipeline))
        if gradient == "surrogate" and spec.purifies:
            return spec.build(self.pipeline, seed, num_inference_steps=self.surrogate_steps(spec),
                              gradient_checkpointing=checkpointing)
        return spec.build(self.pipeline, seed, gradient_checkpointing=checkpointing)

    def attack(self, job: Job, spec: DefenseSpec, images, labels, start: int, callback=None, stats=None):
        """The adversarial images of `job` on one chunk, and the gradient evaluations the attack spent on it (images
        sent through the model with gradients enabled, EOT draws included). `stats` (an `attacks.AttackStats`) gets
        APGD's per-image accounting."""
        noise_seed = derive_seed(job.seed, "attack-noise", start)
        generator = torch.Generator().manual_seed(derive_seed(job.seed, "attack-start", start))
        model = self.gradient_model(job, spec, noise_seed)
        # APGD judges its candidates on draws of their own (not the attack's, the selection runs' or the scoring's).
        selection_model = spec.build(self.pipeline, derive_seed(job.seed, "attack-selection", start))
        spent = [0]

        def count(module, inputs, output):
            if torch.is_grad_enabled():
                spent[0] += inputs[0].shape[0]

        handle = model.register_forward_hook(count)
        try:
            adversarial = job.spec.runner(model, images, labels, job, config=self.config,
                                          num_classes=self.num_classes, generator=generator, callback=callback,
                                          selection_model=selection_model, stats=stats)
        finally:
            handle.remove()
        return adversarial, spent[0]

    # ------------------------------------------------------------------ one unit
    def run(self, unit: Unit, wants_examples: bool = False, callback=None) -> dict:
        """The records of `unit`: per image, in how many of K runs the defense was right, and run 0's verdict."""
        began = time.perf_counter()
        if unit.job is None:
            check = self.gradient_check(unit.defense)
            return {"gradient_check": unit.defense, "check": check.to_dict(), "seconds": time.perf_counter() - began}
        job, spec = unit.job, self.specs[unit.job.defense]
        images = self.data.images[unit.start:unit.end].to(self.device)
        labels = self.data.labels[unit.start:unit.end].to(self.device)
        evaluated, spent = images, 0
        if job.attack != "clean":
            evaluated, spent = self.attack(job, spec, images, labels, unit.start, callback)
            self.check_within_budget(job, images, evaluated)
        scorer = spec.build(self.pipeline, seed=None)
        rescore_seed = derive_seed(job.seed, "rescore", unit.start)
        scored = rescore(scorer, evaluated, labels, self.config.rescore_runs, seed=rescore_seed)
        output = {
            "job": job, "start": unit.start,
            "correct_runs": scored.correct_runs.tolist(), "run0_correct": scored.correct[0].tolist(),
            "predictions": scored.predictions[0].tolist(),
        }
        if job.attack != "clean":
            output |= self.selection(scorer, job.seed, evaluated, labels, unit.start)
            output["gradient_evaluations"] = spent
        output["seconds"] = time.perf_counter() - began
        if wants_examples:
            output["examples"] = self.examples(spec, scorer, rescore_seed, images, labels, evaluated)
        return output

    def selection(self, scorer, seed: int, adversarial, labels, start: int, runs: int | None = None) -> dict:
        """Per image, on how many of `selection_runs` (or `runs`) fresh defense runs `adversarial` was misclassified
        and its mean margin loss there: what the per-image worst case over attacks chooses on
        (`aggregation.choose_worst`). The same draws for every attack of a chunk (paired), apart from the attack's
        and the scoring draws; more runs extend the same stream (the first `selection_runs` are the same draws)."""
        runs = self.config.selection_runs if runs is None else runs
        selected = rescore(scorer, adversarial, labels, runs, seed=derive_seed(seed, "selection", start), losses=True)
        return {"selection_wrong": (selected.runs - selected.correct_runs).tolist(),
                "selection_loss": selected.losses.mean(0).tolist()}

    @staticmethod
    def check_within_budget(job: Job, images, adversarial) -> None:
        # Every attack, ours or torchattacks', must return images inside the threat model: otherwise the number is
        # not a robust accuracy at this eps.
        delta = (adversarial - images).flatten(1)
        size = delta.abs().max(1).values if job.norm == "Linf" else delta.norm(dim=1)
        if size.max().item() > job.eps * (1 + 1e-4) + 1e-6 or adversarial.min() < 0 or adversarial.max() > 1:
            raise RuntimeError(f"{job.describe()} returned images outside the threat model (largest perturbation "
                               f"{size.max().item():.4g}).")

    @torch.no_grad()
    def examples(self, spec: DefenseSpec, scorer, rescore_seed, images, labels, adversarial) -> dict:
        # Replays scoring run 0 on the whole chunk (same seed, same batch), so the purified image shown is the one
        # run 0 classified.
        scorer.reseed(rescore_seed)
        purified = scorer.purify(adversarial)
        n = min(self.config.num_examples, images.shape[0])
        return {
            "images": images[:n].cpu(), "labels": labels[:n].cpu(), "adversarial": adversarial[:n].cpu(),
            "purified": purified[:n].cpu(),
            "raw_predictions": self.pipeline.classifier_logits(adversarial[:n]).argmax(-1).cpu(),
            "purified_predictions": spec.classifier(self.pipeline)(purified).argmax(-1)[:n].cpu(),
        }

    # ------------------------------------------------------------------ the gradient check
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

    def gradient_check(self, defense: str) -> SanityCheck:
        model = self.specs[defense].build(self.float64_pipeline(), seed=0)
        images = self.data.images[:1].to(self.device, torch.float64)
        labels = self.data.labels[:1].to(self.device)
        return check_gradient(model, images, labels, name=defense,
                              seed=derive_seed(self.config.seeds[0], "gradient-check") % 2**31)
