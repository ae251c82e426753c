"""Training that survives crashes and refuses bad input early: crash-safe checkpoints (a real SIGKILL during a
save), exact-or-loud resume, argument checks at parse time, and data that is scaled and split honestly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import ROOT, TINY, _image_folder, _script

from diffusers_agdm.training.checkpoints import MARKER, PAUSE_ENV, find_checkpoints, resolve_resume

CLASSIFIER = ["--block_out_channels", "4", "--hidden_dim", "8", "--eval_samples", "0", "--use_ema",
              "--checkpointing_steps", "2", "--checkpoints_total_limit", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _image_folder(tmp_path_factory.mktemp("data") / "images")


def _classifier_command(folder, out, steps, extra=()):
    return [sys.executable, str(ROOT / "training" / "train_classifier.py"), "--train_data_dir", str(folder),
            "--output_dir", str(out), "--max_train_steps", str(steps), *TINY, *CLASSIFIER, *extra]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _run(command, **env):
    done = subprocess.run(command, env=_env(**env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kill_during_save(command, point: str, step: int, flag: Path):
    """Start a training run, wait until its save of `step` reaches `point`, and SIGKILL it there."""
    flag.unlink(missing_ok=True)
    process = subprocess.Popen(command, env=_env(**{PAUSE_ENV: f"{point}@{step}:{flag}"}),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not flag.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended (rc {process.returncode}) before its save of step {step} reached {point}:\n"
                        + process.stderr.read()[-3000:])
        assert time.time() < deadline, f"the save of step {step} never reached {point}"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _steps(out):
    complete, incomplete = find_checkpoints(out)
    return [p.name for p in complete], [p.name for p in incomplete]


def test_sigkill_during_saves_then_resume_latest_is_bit_exact(tmp_path, folder):
    """A run killed at every point of a save (with --checkpoints_total_limit 1, the worst case) resumes from the newest
    complete checkpoint, and the chain of killed and resumed runs ends with the weights of an uninterrupted run."""
    steps = 11
    _run(_classifier_command(folder, tmp_path / "one_go", steps))
    out, flag = tmp_path / "killed", tmp_path / "paused"
    command = _classifier_command(folder, out, steps, ["--resume_from_checkpoint", "latest"])
    # (point of the save of `step` where the kill lands, what is complete / incomplete afterwards)
    for point, step, complete, incomplete in [
        ("after_model", 4, ["checkpoint-2"], [".checkpoint-4.partial"]),  # weights written, no optimizer, no RNG
        ("after_state", 6, ["checkpoint-4"], [".checkpoint-6.partial"]),  # every file written, no marker yet
        ("before_rename", 8, ["checkpoint-6"], [".checkpoint-8.partial"]),  # complete, not yet in place
        ("before_prune", 10, ["checkpoint-8", "checkpoint-10"], []),  # in place, the old one not yet pruned
    ]:
        _kill_during_save(command, point, step, flag)
        assert _steps(out) == (complete, incomplete), point
        if incomplete:
            assert resolve_resume("latest", out, announce=lambda _: None).name == complete[-1]
    done = _run(command)
    assert "Resuming from" in done.stdout + done.stderr and "checkpoint-10" in done.stdout + done.stderr
    assert not list(out.glob(".checkpoint-*"))  # stale partial saves are cleaned up by the next save
    one_go = load_file(str(tmp_path / "one_go" / "diffusion_pytorch_model.safetensors"))
    resumed = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert one_go.keys() == resumed.keys()
    for name in one_go:
        torch.testing.assert_close(resumed[name], one_go[name], rtol=0, atol=0, msg=name)
    first = load_file(str(tmp_path / "one_go" / "checkpoint-10" / "classifier" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(first[k], one_go[k]) for k in one_go)  # the last step did change the weights


def _train_classifier_in_process(folder, out, steps, extra=()):
    return _script("train_classifier").main(["--train_data_dir", str(folder), "--output_dir", str(out),
                                             "--max_train_steps", str(steps), *TINY, *CLASSIFIER, *extra])


@pytest.fixture
def stopped_run(tmp_path, folder):
    """A run stopped at step 2 (a complete checkpoint-2), to resume from."""
    out = tmp_path / "run"
    _train_classifier_in_process(folder, out, 4, ["--stop_after_steps", "2"])
    assert _steps(out) == (["checkpoint-2"], [])
    return out


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_resume_without_rng_state_is_an_error_or_a_loud_warning(stopped_run, folder, capsys, damage):
    rng = stopped_run / "checkpoint-2" / "random_states_0.pkl"
    if damage == "missing":
        rng.unlink()
    else:
        rng.write_bytes(b"not a pickle")
    with pytest.raises(SystemExit) as exit_info:
        _train_classifier_in_process(folder, stopped_run, 4, ["--resume_from_checkpoint", "latest"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "random_states_0.pkl" in err and "--allow_inexact_resume" in err
    assert not (stopped_run / "diffusion_pytorch_model.safetensors").exists()
    _train_classifier_in_process(folder, stopped_run, 4, ["--resume_from_checkpoint", "latest",
                                                          "--allow_inexact_resume"])
    captured = capsys.readouterr()
    assert "NOT exact" in captured.out + captured.err
    assert (stopped_run / "diffusion_pytorch_model.safetensors").exists()


def test_bad_resume_path_is_named(tmp_path, stopped_run, folder, capsys):
    for path, says in [(tmp_path / "nowhere", "no such folder"), (folder / "class0" / "0.png", "not a folder"),
                       (folder, "not a complete checkpoint")]:
        with pytest.raises(SystemExit):
            _train_classifier_in_process(folder, tmp_path / "out", 4, ["--resume_from_checkpoint", str(path)])
        err = capsys.readouterr().err
        assert f"--resume_from_checkpoint {path}: {says}" in err and "Hub" not in err and "huggingface" not in err
    # a checkpoint whose model folder vanished after it was saved complete: named, not looked up on the Hub
    weights = stopped_run / "checkpoint-2" / "classifier" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    with pytest.raises(SystemExit):
        _train_classifier_in_process(folder, stopped_run, 4, ["--resume_from_checkpoint", "latest"])
    assert str(weights) in capsys.readouterr().err


def test_latest_skips_a_checkpoint_without_its_marker(stopped_run, folder, capsys):
    """A `checkpoint-N` folder without the marker (e.g. a copy that was cut short) is never resumed from."""
    broken = stopped_run / "checkpoint-3"
    (stopped_run / "checkpoint-2").rename(broken)
    (broken / MARKER).unlink()
    _train_classifier_in_process(folder, stopped_run, 4, ["--stop_after_steps", "2"])  # a complete checkpoint-2
    assert broken.is_dir()  # never pruned: it is not known to be one of ours
    assert resolve_resume("latest", stopped_run, announce=print).name == "checkpoint-2"
    assert "Ignoring incomplete checkpoint" in capsys.readouterr().out
    marker = json.loads((stopped_run / "checkpoint-2" / MARKER).read_text())
    assert marker["step"] == 2 and "random_states_0.pkl" in marker["files"]
