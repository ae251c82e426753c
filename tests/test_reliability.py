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
from test_training_reliability import _env, _steps, _train_classifier_in_process, folder  # noqa: F401  (fixture)

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


# ------------------------------------------------------------------------------------------ training resumes
@pytest.fixture
def stopped(tmp_path, folder):
    """A run stopped at step 2 with a constant learning rate (a complete checkpoint-2)."""
    out = tmp_path / "run"
    _train_classifier_in_process(folder, out, 4, ["--stop_after_steps", "2", *CONSTANT_LR])
    assert _steps(out) == (["checkpoint-2"], [])
    return out


CONSTANT_LR = ["--lr_scheduler", "constant", "--log_steps", "1"]


def _logged(monkeypatch) -> list:
    from accelerate import Accelerator

    logged = []
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, **kw: logged.append((step, values)))
    return logged


def test_a_resume_with_a_changed_learning_rate_is_refused_then_applied_and_recorded(stopped, folder, monkeypatch,
                                                                                    capsys):
    resume = ["--resume_from_checkpoint", "latest", *CONSTANT_LR]
    for changed, flag in [(["--learning_rate", "5e-2"], "--learning_rate"), (["--seed", "3"], "--seed"),
                          (["--train_batch_size", "2"], "--train_batch_size")]:
        with pytest.raises(SystemExit) as exit_info:
            _train_classifier_in_process(folder, stopped, 4, [*resume, *changed])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and "--allow_changed_args" in err, err
    assert not (stopped / "diffusion_pytorch_model.safetensors").exists()

    logged = _logged(monkeypatch)
    _train_classifier_in_process(folder, stopped, 4, [*resume, "--learning_rate", "5e-2", "--allow_changed_args"])
    lrs = {step: values["train/lr"] for step, values in logged if "train/lr" in values}
    assert lrs == {3: 5e-2, 4: 5e-2}  # the new rate really applies (the checkpoint's was 1e-2)
    card = (stopped / "README.md").read_text()
    assert "--learning_rate 0.01 -> 0.05" in card and "0 -> 2" in card and "2 -> 4" in card
    run = json.loads((stopped / "checkpoint-4" / "training_run.json").read_text())
    assert [(i["from_step"], i["to_step"]) for i in run["invocations"]] == [(0, 2), (2, 4)]
    assert run["args"]["learning_rate"] == 5e-2


def test_settings_that_do_not_change_the_training_may_change_on_resume(stopped, folder):
    _train_classifier_in_process(folder, stopped, 4, ["--resume_from_checkpoint", "latest", *CONSTANT_LR,
                                                      "--checkpointing_steps", "1", "--log_steps", "3"])
    assert (stopped / "diffusion_pytorch_model.safetensors").exists()


def _flip_byte(path, offset_from_end=16):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))  # the same size: only the content check can tell


@pytest.mark.parametrize("name", ["classifier/diffusion_pytorch_model.safetensors", "optimizer.bin",
                                  "classifier_ema/diffusion_pytorch_model.safetensors"])
def test_a_flipped_byte_in_a_checkpoint_is_named_at_resume(stopped, folder, capsys, name):
    target = stopped / "checkpoint-2" / name
    size = target.stat().st_size
    _flip_byte(target)
    assert target.stat().st_size == size
    with pytest.raises(SystemExit) as exit_info:
        _train_classifier_in_process(folder, stopped, 4, ["--resume_from_checkpoint", "latest", *CONSTANT_LR])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(target) in err and "SHA-256" in err


def test_non_finite_weights_are_refused_at_resume_with_the_file_named(stopped, folder, capsys):
    from safetensors.torch import load_file, save_file

    from diffusers_agdm.training.checkpoints import MANIFEST

    target = stopped / "checkpoint-2" / "classifier_ema" / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(target))
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, str(target), metadata={"format": "pt"})
    (stopped / "checkpoint-2" / MANIFEST).unlink()  # as a checkpoint saved before manifests: sizes only...
    marker = json.loads((stopped / "checkpoint-2" / "checkpoint_complete.json").read_text())
    marker["files"] = {k: (stopped / "checkpoint-2" / k).stat().st_size for k in marker["files"] if k != MANIFEST}
    (stopped / "checkpoint-2" / "checkpoint_complete.json").write_text(json.dumps(marker))
    with pytest.raises(SystemExit) as exit_info:  # ...and still refused, by its content
        _train_classifier_in_process(folder, stopped, 4, ["--resume_from_checkpoint", "latest", *CONSTANT_LR])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(target) in err and "NaN or infinity" in err and first in err


def test_nan_in_the_ema_weights_is_never_saved_and_the_last_good_checkpoint_is_kept(tmp_path, folder, monkeypatch):
    from diffusers.training_utils import EMAModel

    real_step = EMAModel.step

    def poisoned(self, parameters):
        real_step(self, parameters)
        if self.optimization_step >= 3:
            self.shadow_params[0].fill_(float("nan"))

    monkeypatch.setattr(EMAModel, "step", poisoned)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"At step 4 the EMA weights hold NaN or infinity.*earlier ones .* kept"):
        _train_classifier_in_process(folder, out, 6, CONSTANT_LR)
    assert _steps(out) == (["checkpoint-2"], [])  # never pruned in favour of a poisoned one
    monkeypatch.setattr(EMAModel, "step", real_step)
    _train_classifier_in_process(folder, out, 6, ["--resume_from_checkpoint", "latest", *CONSTANT_LR])
    assert (out / "diffusion_pytorch_model.safetensors").exists()
