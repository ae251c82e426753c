"""Nothing stale, nothing silent (issue 21): evaluation progress that notices a changed pipeline and survives damaged
units, checkpoints verified by content, resume that refuses changed settings, inputs that are never overwritten,
one exit-code contract and one run per folder."""

import json
import os

import pytest
import torch

from diffusers_agdm import AdversarialGuidedPurificationPipeline
from diffusers_agdm.data import LabelledImages
from diffusers_agdm.evaluation import EvaluationConfig, evaluate
from dummies import CLASSES, dummy_images, dummy_pipeline

TINY_EVAL = dict(defenses=("none",), attacks=("apgd",), steps=2, eot_samples=1, rescore_runs=2, batch_size=4,
                 sanity_images=2, convergence_checks=(), num_examples=0, show_progress_bar=False,
                 allow_failed_sanity=True, gradient_check=False)


def _data(pipe, n=4) -> LabelledImages:
    images = dummy_images(n, seed=3)
    with torch.no_grad():
        labels = pipe.classifier_logits(images).argmax(-1)
    return LabelledImages(images, labels, [f"c{i}" for i in range(CLASSES)], "random")


def _counting_runs(monkeypatch) -> list:
    from diffusers_agdm.evaluation.execution import UnitRunner

    real, calls = UnitRunner.run, []

    def run(self, unit, *args, **kwargs):
        calls.append(unit)
        return real(self, unit, *args, **kwargs)

    monkeypatch.setattr(UnitRunner, "run", run)
    return calls


# ------------------------------------------------------------------------------------- evaluation fingerprints
def test_a_changed_scheduler_config_is_recomputed_not_reused(tmp_path, monkeypatch, capsys):
    saved = tmp_path / "pipeline"
    dummy_pipeline().save_pretrained(saved)
    pipe = AdversarialGuidedPurificationPipeline.from_pretrained(saved)
    data = _data(pipe)
    calls = _counting_runs(monkeypatch)
    first = evaluate(pipe, data, EvaluationConfig(**TINY_EVAL), output_dir=tmp_path / "eval").report
    done = len(calls)
    assert done > 0
    again = evaluate(AdversarialGuidedPurificationPipeline.from_pretrained(saved), data,
                     EvaluationConfig(**TINY_EVAL), output_dir=tmp_path / "eval").report
    assert len(calls) == done and again["per_image"] == first["per_image"]  # the same pipeline: all reused
    capsys.readouterr()

    config_file = saved / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["beta_end"] = 0.2
    config_file.write_text(json.dumps(config))
    changed = AdversarialGuidedPurificationPipeline.from_pretrained(saved)
    assert changed.scheduler.config.beta_end == 0.2
    report = evaluate(changed, data, EvaluationConfig(**TINY_EVAL), output_dir=tmp_path / "eval").report
    assert len(calls) == 2 * done  # every unit computed anew
    assert report["run"]["fingerprint"] != first["run"]["fingerprint"]
    assert "the pipeline's component configs changed" in capsys.readouterr().out
    fresh = evaluate(changed, data, EvaluationConfig(**TINY_EVAL), output_dir=tmp_path / "fresh").report
    assert report["per_image"] == fresh["per_image"]  # what a fresh folder gives, not the old pipeline's numbers
    assert report["per_image"] != first["per_image"]


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00random bytes\x81", b"{}", b"[]", b"null",
                                    b'{"seconds": 1.0, "start": 0}', "missing-key", "wrong-type"])
def test_a_damaged_progress_unit_is_named_and_recomputed(tmp_path, monkeypatch, capsys, damage):
    pipe = dummy_pipeline()
    data = _data(pipe)
    out = tmp_path / "eval"
    first = evaluate(pipe, data, EvaluationConfig(**TINY_EVAL), output_dir=out).report
    units = sorted(p for p in out.glob("progress/*/*.json") if p.name != "fingerprint.json")
    assert units
    victim = units[-1]
    if damage == "missing-key":
        payload = json.loads(victim.read_text())
        del payload["predictions"]
        damage = json.dumps(payload).encode()
    elif damage == "wrong-type":
        payload = json.loads(victim.read_text())
        payload["correct_runs"] = "all of them"
        damage = json.dumps(payload).encode()
    victim.write_bytes(damage)
    capsys.readouterr()
    calls = _counting_runs(monkeypatch)
    report = evaluate(pipe, data, EvaluationConfig(**TINY_EVAL), output_dir=out).report
    assert len(calls) == 1  # only the damaged unit ran again
    assert f"{victim}" in capsys.readouterr().err
    assert report["per_image"] == first["per_image"]
    json.loads(victim.read_text())  # rewritten whole
