"""Nothing stale, nothing silent (issue 21): evaluation progress that notices a changed pipeline and survives damaged
units, checkpoints verified by content, resume that refuses changed settings, inputs that are never overwritten,
one exit-code contract and one run per folder."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_training import _image_folder
from test_training_reliability import _classifier_command, _env, _steps, _train_classifier_in_process

from diffusers_agdm import AdversarialGuidedPurificationPipeline
from diffusers_agdm.data import LabelledImages
from diffusers_agdm.evaluation import EvaluationConfig, evaluate
from diffusers_agdm.exits import exit_status
from diffusers_agdm.training_utils.checkpoints import find_checkpoints
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


# ------------------------------------------------------------------------------------------ training resumes
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _image_folder(tmp_path_factory.mktemp("data") / "images")


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

    from diffusers_agdm.training_utils.checkpoints import MANIFEST

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


# ---------------------------------------------------------------------------- signals, locks and the exit codes
def _script_command(folder, out, steps, extra=()):
    return _classifier_command(folder, out, steps, extra)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_during_training_saves_a_checkpoint_and_exits_130(tmp_path, folder, signum):
    out = tmp_path / "run"
    process = subprocess.Popen(_script_command(folder, out, 10**6), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "checkpoint-2").is_dir() and not list(out.glob("checkpoint-*")):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, "training never saved its first checkpoint"
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "interrupted; kept:" in last and "--resume_from_checkpoint latest" in last, last
    kept = last.split("kept: ")[1].split(" (step")[0]
    complete, incomplete = find_checkpoints(out)
    assert [str(p) for p in complete] == [kept] and not incomplete
    assert "Traceback" not in err


def test_a_second_training_into_a_locked_folder_exits_2_with_one_line(tmp_path, folder):
    from diffusers_agdm.utils.lock import FolderLock

    out = tmp_path / "run"
    with FolderLock(out, "training"):
        done = subprocess.run(_script_command(folder, out, 4), env=_env(), capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "in use by another training" in done.stderr and f"pid {os.getpid()}" in done.stderr
    assert "Traceback" not in done.stderr and not list(out.glob("checkpoint-*"))
    _train_classifier_in_process(folder, out, 2)  # released: the folder is usable again
    _train_classifier_in_process(folder, out, 2, ["--overwrite_output_dir"])  # and again, in the same process


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_save(tmp_path, folder, monkeypatch):
    from accelerate import Accelerator

    def full(self, output_dir=None, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(Accelerator, "save_state", full)
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError) as err:
        _train_classifier_in_process(folder, tmp_path / "run", 4)
    assert err.value.errno == errno.ENOSPC and "No space left on device while saving" in str(err.value)
    assert not list((tmp_path / "run").glob(".checkpoint-*")) and not list((tmp_path / "run").glob("checkpoint-*"))
    assert exit_status(err.value, "train") == 2


def test_the_exit_code_contract(monkeypatch, capsys):
    from diffusers_agdm import cli
    from diffusers_agdm.commands.info import InfoCommand

    for raised, status, says in [(KeyError("bug"), 3, "Traceback"), (ValueError("bad\ninput"), 2, "error: bad input"),
                                 (OSError(errno.ENOSPC, "No space left on device"), 2, "no space left on device"),
                                 (KeyboardInterrupt(), 130, "interrupted")]:
        def run(self, raised=raised):
            raise raised

        monkeypatch.setattr(InfoCommand, "run", run)
        assert cli.main(["info"]) == status
        err = capsys.readouterr().err
        assert says in err, err
        if status != 3:
            assert len(err.strip().splitlines()) == 1, err


def test_push_offline_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    done = subprocess.run([sys.executable, "-m", "diffusers_agdm.cli", "push", "--hub_model_id", "me/agdm"],
                          env=_env(HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "offline" in done.stderr, done.stderr
    # No network at all (the HTTP client's own error, not an OSError): one line too.
    import diffusers_agdm.hub as hub
    from diffusers_agdm import cli

    class ConnectError(Exception):
        pass

    def unreachable(*args, **kwargs):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub, "create_repo", unreachable)
    assert cli.main(["push", "--hub_model_id", "me/agdm"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot reach the Hugging Face Hub" in err, err


# ---------------------------------------------------------------------------------- inputs and shipped weights
def test_purify_never_writes_over_an_input_named_comparison_png(tmp_path, capsys):
    from PIL import Image

    from diffusers_agdm.cli import main

    out = tmp_path / "out"
    out.mkdir()
    image = out / "comparison.png"
    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy(), mode="L").save(image)
    before = image.read_bytes()
    assert main(["purify", str(image), "--output_dir", str(out)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert image.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["comparison.png"]


def test_a_flipped_byte_in_the_shipped_default_is_named_at_load(tmp_path):
    from diffusers_agdm import load_pipeline
    from diffusers_agdm.default_pipeline import default_pipeline_path

    copy = tmp_path / "agdm-mnist"
    shutil.copytree(default_pipeline_path(), copy)
    assert (copy / "weights.sha256.json").is_file()
    target = copy / "classifier" / "diffusion_pytorch_model.safetensors"
    _flip_byte(target, offset_from_end=1000)
    with pytest.raises(ValueError, match="differs from the SHA-256") as err:
        load_pipeline(str(copy))
    assert str(target) in str(err.value)


def test_a_second_evaluation_into_a_locked_folder_is_refused(tmp_path):
    from diffusers_agdm.utils.lock import FolderLock

    pipe = dummy_pipeline()
    with FolderLock(tmp_path / "eval", "evaluation"):
        with pytest.raises(ValueError, match="is in use by another evaluation"):
            evaluate(pipe, _data(pipe), EvaluationConfig(**TINY_EVAL), output_dir=tmp_path / "eval")
    evaluate(pipe, _data(pipe), EvaluationConfig(**TINY_EVAL), output_dir=tmp_path / "eval")  # released


def test_a_truncated_training_image_is_named(tmp_path):
    images = _image_folder(tmp_path / "images")
    broken = sorted(images.rglob("*.png"))[3]
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot be read as an image") as err:
        _train_classifier_in_process(images, tmp_path / "run", 2)
    assert str(broken) in str(err.value)


def test_a_checkpoint_of_another_script_or_architecture_is_one_line(stopped, folder, tmp_path, capsys):
    from test_training import TINY, TINY_GUIDANCE, _script

    from dummies import save_diffusion_source

    source = save_diffusion_source(tmp_path / "source")
    with pytest.raises(SystemExit) as exit_info:
        _script("train_guidance").main(["--pretrained_model_name_or_path", str(source), "--train_data_dir",
                                        str(folder), "--output_dir", str(tmp_path / "g"), "--max_train_steps", "2",
                                        *TINY, *TINY_GUIDANCE, "--resume_from_checkpoint",
                                        str(stopped / "checkpoint-2")])
    assert exit_info.value.code == 2
    assert "is a checkpoint of train_classifier.py, not of train_guidance.py" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not fit this run's model") as err:  # another width, applied
        _train_classifier_in_process(folder, stopped, 4, ["--resume_from_checkpoint", "latest", *CONSTANT_LR,
                                                          "--block_out_channels", "6", "--allow_changed_args"])
    assert "checkpoint-2" in str(err.value)
