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

from diffusers_agdm.training_utils.checkpoints import MARKER, find_checkpoints, resolve_resume

CLASSIFIER = ["--block_out_channels", "4", "--hidden_dim", "8", "--eval_samples", "0", "--use_ema",
              "--checkpointing_steps", "2", "--checkpoints_total_limit", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _image_folder(tmp_path_factory.mktemp("data") / "images")


def _classifier_command(folder, out, steps, extra=()):
    return [sys.executable, str(ROOT / "training" / "train_classifier.py"), "--train_data_dir", str(folder),
            "--output_dir", str(out), "--max_train_steps", str(steps), *TINY, *CLASSIFIER, *extra]


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


# Runs a training script (argv[3:]) with the save's no-op `_pause_point` replaced: at the named point of the save of
# the named step it touches the flag file and waits, so that the test can SIGKILL it exactly there.
PAUSING_RUNNER = """import runpy, sys, time
from pathlib import Path
import diffusers_agdm.training_utils.checkpoints as checkpoints
target, flag = sys.argv[1], Path(sys.argv[2])
def pause(point, step):
    if f"{point}@{step}" == target:
        flag.write_text(target)
        time.sleep(600)
checkpoints._pause_point = pause
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(command, **env):
    done = subprocess.run(command, env=_env(**env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kill_during_save(command, point: str, step: int, flag: Path):
    """Start a training run, wait until its save of `step` reaches `point`, and SIGKILL it there."""
    flag.unlink(missing_ok=True)
    process = subprocess.Popen([command[0], "-c", PAUSING_RUNNER, f"{point}@{step}", str(flag), *command[1:]],
                               env=_env(),
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
    first = load_file(str(tmp_path / "one_go" / "checkpoint-10" / "classifier" /
                          "diffusion_pytorch_model.safetensors"))
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


# ---------------------------------------------------------------------------------------------- checked before work
@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny diffusion pipeline (UNet + DDIM with 100 training steps, no guidance) to train guidance on."""
    from dummies import save_diffusion_source

    return save_diffusion_source(tmp_path_factory.mktemp("source"))


def _no_work(module, monkeypatch):
    """Make loading a model or starting the accelerator fail the test: a bad argument must stop the script first."""
    def boom(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for name in ("build_accelerator", "load_diffusion_source", "load_classifier", "load_training_data"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, boom)


def _refused(module, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]  # argparse's one line: "<script>: error: ..."


def test_guidance_script_refuses_bad_arguments_before_any_model_loads(tmp_path, folder, monkeypatch, capsys):
    from test_training import _guidance_args

    module = _script("train_guidance")
    _no_work(module, monkeypatch)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    real_source = tmp_path / "src"
    real_source.mkdir()
    (real_source / "model_index.json").write_text("{}")
    for extra, says in [
        (["--strength", "1.5"], "argument --strength: must be a finite number > 0 and <= 1, got 1.5"),
        (["--strength", "0"], "argument --strength: must be a finite number > 0"),
        (["--guidance_scale", "-1"], "argument --guidance_scale: must be a finite number >= 0, got -1.0"),
        (["--guidance_scale", "nan"], "argument --guidance_scale: must be a finite number >= 0"),
        (["--num_inference_steps", "0"], "argument --num_inference_steps: must be an integer >= 1, got 0"),
        (["--block_out_channels", "4,,8"], "argument --block_out_channels: must be a comma-separated list"),
        (["--block_out_channels", "4,x"], "argument --block_out_channels: item 'x' of '4,x'"),
        (["--norm_num_groups", "3"], "--block_out_channels 4,8: [4, 8] not divisible by --norm_num_groups 3"),
        (["--output_dir", str(a_file)], f"--output_dir {a_file} is an existing file, not a folder"),
        (["--output_dir", str(a_file / "sub")], f"--output_dir {a_file / 'sub'} cannot be created"),
        (["--pretrained_model_name_or_path", str(a_file)], "a file, not a model folder"),
        (["--pretrained_model_name_or_path", str(tmp_path / "nowhere")], "no such folder"),
        (["--pretrained_model_name_or_path", str(folder)], "holds no model_index.json"),
        (["--learning_rate", "0"], "argument --learning_rate: must be a finite number > 0"),
        (["--checkpoints_total_limit", "0"], "argument --checkpoints_total_limit: must be an integer >= 1"),
        (["--lr_scheduler", "cosin"], "argument --lr_scheduler: invalid choice: 'cosin'"),
        (["--report_to", "tensorbaord"], "--report_to must be one of tensorboard, wandb, all, none"),
        (["--dataset_name", "mnist"], "Give --dataset_name or --train_data_dir, not both"),
        (["--resume_from_checkpoint", str(tmp_path / "nowhere")], "no such folder"),
    ]:
        line = _refused(module, _guidance_args(real_source, folder, tmp_path / "out", 1, extra), capsys)
        assert says in line, (extra, line)
    assert not (tmp_path / "out").exists()


def test_purification_defaults_are_checked_before_training(tmp_path, source, folder, monkeypatch):
    """t* = round(0.01 x 100) = 1 leaves room for 2 steps, not 5: an error before the training loop, not after it."""
    from test_training import _guidance_args

    module = _script("train_guidance")
    monkeypatch.setattr(module, "train_loop", lambda *a, **k: pytest.fail("the training loop started"))
    with pytest.raises(ValueError, match=r"--num_inference_steps 5 is more than the 2 timesteps"):
        module.main(_guidance_args(source, folder, tmp_path / "out", 1, ["--strength", "0.01",
                                                                         "--num_inference_steps", "5"]))


def test_diffusion_and_classifier_scripts_refuse_bad_arguments(tmp_path, folder, monkeypatch, capsys):
    diffusion, classifier = _script("train_diffusion"), _script("train_classifier")
    _no_work(diffusion, monkeypatch)
    _no_work(classifier, monkeypatch)
    base = ["--train_data_dir", str(folder), "--output_dir", str(tmp_path / "out")]
    for module, extra, says in [
        (diffusion, ["--num_train_timesteps", "1"], "argument --num_train_timesteps: must be an integer >= 2"),
        (diffusion, ["--strength", "0.01", "--num_train_timesteps", "100", "--num_inference_steps", "10"],
         "--num_inference_steps 10 is more than the 2 timesteps"),
        (diffusion, ["--block_out_channels", "32,0"], "item '0' of '32,0': must be an integer >= 1"),
        (diffusion, ["--beta_schedule", "cosine"], "argument --beta_schedule: invalid choice"),
        (classifier, ["--augment_scale", "1"], "--augment_scale must be < 1"),
        (classifier, ["--augment_shift", "-2"], "argument --augment_shift: must be a finite number >= 0"),
        (classifier, ["--train_batch_size", "0"], "argument --train_batch_size: must be an integer >= 1"),
    ]:
        line = _refused(module, [*base, *extra], capsys)
        assert says in line, (extra, line)


def test_comma_list_is_the_one_parser_of_block_widths():
    from diffusers_agdm.training_utils.argtypes import comma_list, finite, int_at_least

    assert comma_list(int_at_least(1))("32, 64,128") == (32, 64, 128)
    assert comma_list(finite(0))("0.5,1") == (0.5, 1.0)
    assert comma_list()("a,b") == ("a", "b")
    for script, default in (("train_guidance", (32, 64, 128)), ("train_diffusion", (32, 64, 64)),
                            ("train_classifier", (32, 64))):
        source = Path(_script(script).__file__).read_text()
        assert ".split(\",\")" not in source, script  # no hand parsing left
        assert f"default={default}" in source


def test_tune_purification_refuses_bad_arguments(tmp_path, monkeypatch, capsys):
    module = _script("tune_purification")
    monkeypatch.setattr(module, "load_pipeline", lambda *a, **k: pytest.fail("the pipeline was loaded"))
    pipeline = tmp_path / "pipe"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text("{}")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["--pipeline", str(pipeline), "--output_dir", str(tmp_path / "tuned")]
    for extra, says in [
        (["--strengths", "0.2", "1.5"], "argument --strengths: must be a finite number > 0 and <= 1, got 1.5"),
        (["--latent_scales", "-3"], "argument --latent_scales: must be a finite number >= 0"),
        (["--min_clean", "98"], "argument --min_clean: must be a finite number >= 0 and <= 1"),
        (["--robust_images", "0"], "argument --robust_images: must be an integer >= 1"),
        (["--steps", "0"], "argument --steps: must be an integer >= 1"),
        (["--rescore_runs", "0"], "argument --rescore_runs: must be an integer >= 1"),
        (["--loss", "hinge"], "argument --loss: invalid choice"),
        (["--attack", "bpda"], "argument --attack: invalid choice"),
        (["--pgd_steps", "3"], "unrecognized arguments: --pgd_steps"),
        (["--work_dir", str(tmp_path / "tuned" / "work")], "lies inside --output_dir"),
        (["--output_dir", str(a_file)], "is an existing file, not a folder"),
        (["--pipeline", str(tmp_path / "nowhere")], "no such folder"),
        (["--split", "test"], "holds test images"),
        (["--dataset_name", "foolbox-mnist", "--split", "test"], "holds test images"),
    ]:
        line = _refused(module, [*base, *extra], capsys)
        assert says in line, (extra, line)


def test_tune_purification_shows_a_progress_bar(tmp_path, monkeypatch, capsys):
    from diffusers_agdm.data import LabelledImages
    from diffusers_agdm.evaluation.execution import UnitRunner
    from dummies import dummy_images, dummy_pipeline

    pipe_dir = tmp_path / "pipe"
    dummy_pipeline().save_pretrained(pipe_dir)
    module = _script("tune_purification")
    data = LabelledImages(dummy_images(4), torch.tensor([0, 1, 2, 3]), [], "tiny/validation")
    monkeypatch.setattr(module, "load_labelled_images", lambda *a, **k: data)
    tiny = ["--pipeline", str(pipe_dir), "--strengths", "0.3", "--num_inference_steps", "2", "--latent_scales", "5",
            "--pixel_scales", "1", "--robust_images", "2", "--steps", "1", "--rescore_runs", "3", "--min_clean", "0",
            "--batch_size", "2"]
    module.main([*tiny, "--output_dir", str(tmp_path / "tuned")])
    err = capsys.readouterr().err
    assert "tuning purification" in err and "3/3" in err
    tuning = json.loads((tmp_path / "tuned" / "tuning.json").read_text())
    assert tuning["rows"][-1]["defense"] == "pixel"
    assert tuning["settings"]["attack"] == "apgd" and tuning["settings"]["loss"] == "margin"
    assert "K = 3" in tuning["rule"] and "clean-correct" in tuning["rule"]
    for row in tuning["rows"]:  # the choice is made on the "all K runs" scores; robust implies clean-correct
        assert set(row["clean"]) == set(row["robust"]) == {"all", "majority", "single"}
        assert row["clean_accuracy"] == row["clean"]["all"] and row["robust_accuracy"] == row["robust"]["all"]
        assert row["robust"]["all"] <= row["robust"]["majority"]
    work = ["--work_dir", str(tmp_path / "work")]
    module.main([*tiny, *work, "--output_dir", str(tmp_path / "tuned2"), "--no-progress_bar"])
    assert "tuning purification" not in capsys.readouterr().err
    assert (tmp_path / "work" / "latent-t0.3-s5" / "results.json").is_file()

    def no_work(*args, **kwargs):
        raise AssertionError("a finished attack was computed again")

    monkeypatch.setattr(UnitRunner, "run", no_work)  # a rerun with the same --work_dir resumes every attack
    module.main([*tiny, *work, "--output_dir", str(tmp_path / "tuned3")])
    assert json.loads((tmp_path / "tuned3" / "tuning.json").read_text())["rows"] == \
        json.loads((tmp_path / "tuned2" / "tuning.json").read_text())["rows"]
    assert not list((tmp_path / "tuned3").rglob("results.json"))  # the pipeline folder holds only the pipeline


def test_tune_purification_chooses_by_the_all_runs_score_among_clean_enough_settings():
    module = _script("tune_purification")
    rows = [{"defense": "latent", "strength": 0.2, "scale": 5.0, "clean_accuracy": 0.99, "robust_accuracy": 0.4},
            {"defense": "latent", "strength": 0.3, "scale": 5.0, "clean_accuracy": 0.96, "robust_accuracy": 0.6},
            {"defense": "latent", "strength": 0.3, "scale": 1.0, "clean_accuracy": 0.98, "robust_accuracy": 0.4},
            {"defense": "pixel", "strength": 0.2, "scale": 1.0, "clean_accuracy": 1.0, "robust_accuracy": 0.9}]
    assert module.choose(rows, "latent", 0.97) is rows[0]  # 0.6 is not clean enough; the tie goes to the smaller t*
    assert module.choose(rows, "latent", 0.995) is None


# ---------------------------------------------------------------------------------------------------------- data
def _folder_of(root: Path, arrays_by_class: dict) -> Path:
    from PIL import Image

    for label, arrays in arrays_by_class.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(root / label / f"{i}.png")
    return root


def test_image_folders_are_scaled_by_pixel_type_not_by_each_images_maximum(tmp_path):
    import numpy as np

    from diffusers_agdm.data import load_labelled_images
    from diffusers_agdm.data.datasets import image_to_unit_range

    dark = np.zeros((8, 8), np.uint8)
    dark[2:4, 2:4] = 1  # a nearly black 8-bit image: must stay nearly black, not become a white square
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 16-bit, up to 63000
    data = load_labelled_images(data_dir=_folder_of(tmp_path / "dark", {"a": [dark], "b": [dark]}))
    assert data.images.max().item() == pytest.approx(1 / 255)
    data = load_labelled_images(data_dir=_folder_of(tmp_path / "deep", {"a": [deep], "b": [deep]}))
    assert data.images.max().item() == pytest.approx(63000 / 65535) and data.images.min().item() == 0
    torch.testing.assert_close(data.images[0, 0], torch.from_numpy(deep.astype(np.float32) / 65535))
    floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    assert np.array_equal(image_to_unit_range(floats), floats)
    with pytest.raises(ValueError, match=r"image 3 .* values in \[0, 2\]; floating-point images must lie in"):
        image_to_unit_range(floats * 2, where="image 3 of x")
    with pytest.raises(ValueError, match="pixel type int64"):
        image_to_unit_range(np.zeros((8, 8), np.int64))


def _parse(script, argv):
    return _script(script).parse_args(argv)


def test_a_test_split_needs_allow_test_split(tmp_path, folder, capsys):
    common = ["--output_dir", str(tmp_path / "out")]
    for data in (["--dataset_name", "foolbox-mnist", "--split", "test"],  # the official MNIST test images
                 ["--dataset_name", "some-user/some-dataset", "--split", "test[:50%]"],
                 ["--train_data_dir", str(folder), "--split", "test"]):
        with pytest.raises(SystemExit) as exit_info:
            _parse("train_classifier", [*common, *data])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "holds test images" in err and "--allow_test_split" in err
        args = _parse("train_classifier", [*common, *data, "--allow_test_split"])
        assert args.allow_test_split
    # the project's own held-out MNIST splits stay forbidden, flag or not; its train split needs no flag
    with pytest.raises(SystemExit):
        _parse("train_classifier", [*common, "--dataset_name", "mnist", "--split", "test", "--allow_test_split"])
    assert "held out for evaluation" in capsys.readouterr().err
    assert _parse("train_classifier", common).dataset_name == "mnist"


def test_flags_that_do_not_apply_to_a_dataset_are_errors(tmp_path, folder, capsys):
    from diffusers_agdm.data import load_labelled_images

    common = ["--output_dir", str(tmp_path / "out")]
    for extra, says in [(["--dataset_name", "mnist", "--label_column", "digit"], "--label_column does not apply"),
                        (["--image_column", "img"], "--image_column does not apply to the built-in dataset 'mnist'"),
                        (["--dataset_name", "mnist", "--dataset_config_name", "x"], "--dataset_config_name"),
                        (["--train_data_dir", str(folder), "--cache_dir", str(tmp_path)], "apply to Hub datasets")]:
        with pytest.raises(SystemExit):
            _parse("train_classifier", [*common, *extra])
        assert says in capsys.readouterr().err, extra
    with pytest.raises(ValueError, match="label_column='digit' does not apply"):
        load_labelled_images("foolbox-mnist", "test", label_column="digit")
    assert len(load_labelled_images("foolbox-mnist", "test", label_column="label")) == 20  # the default: harmless


def test_unknown_or_empty_datasets_are_one_line_value_errors(tmp_path, monkeypatch):
    import datasets

    from diffusers_agdm.data import load_labelled_images

    def one_line(call, *match):
        with pytest.raises(ValueError) as info:
            call()
        text = str(info.value)
        assert "\n" not in text and all(m in text for m in match), text

    one_line(lambda: load_labelled_images("no such dataset!"), "Unknown dataset 'no such dataset!'", "mnist")
    one_line(lambda: load_labelled_images("foolbox-svhn", "test"), "Unknown built-in 'foolbox-svhn'")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    one_line(lambda: load_labelled_images(data_dir=tmp_path / "empty"), f"The image folder {tmp_path / 'empty'}")
    one_line(lambda: load_labelled_images(data_dir=tmp_path / "missing"), "does not exist")
    one_line(lambda: load_labelled_images("mnist", "train", data_dir=tmp_path), "not both")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/data' on the Hub (LocalEntryNotFoundError)\nmore details")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    one_line(lambda: load_labelled_images("someone/data"), "The dataset 'someone/data'", "Couldn't reach")


def test_package_default_reads_every_input_before_touching_the_shipped_default(tmp_path, monkeypatch, capsys):
    from dummies import dummy_pipeline

    module = _script("package_default")
    target = tmp_path / "pretrained" / "agdm-mnist"
    target.mkdir(parents=True)
    (target / "model_index.json").write_text('{"shipped": true}')
    monkeypatch.setattr(module, "TARGET", target)
    dummy_pipeline().save_pretrained(tmp_path / "tuned")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "training_metrics.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--pipeline", str(tmp_path / "tuned"), "--training_runs", str(tmp_path / "run"),
                     "--evaluations", str(tmp_path / "typo.json")])
    assert exit_info.value.code == 2
    assert f"--evaluations: {tmp_path / 'typo.json'} is not a readable JSON file" in capsys.readouterr().err
    assert (target / "model_index.json").read_text() == '{"shipped": true}'  # untouched
    new = tmp_path / "pretrained" / ".agdm-mnist.partial"
    new.mkdir()
    (new / "model_index.json").write_text('{"new": true}')
    module.replace_folder(new, target)
    assert (target / "model_index.json").read_text() == '{"new": true}' and not new.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["agdm-mnist"]


def test_package_default_writes_the_card_from_the_scored_report_without_measuring(tmp_path, monkeypatch, capsys):
    from diffusers_agdm.data import LabelledImages
    from diffusers_agdm.evaluation import EvaluationConfig, evaluate
    from diffusers_agdm.evaluation.execution import UnitRunner
    from diffusers_agdm.evaluation.report import format_accuracy
    from dummies import dummy_images, dummy_pipeline

    module = _script("package_default")
    monkeypatch.setattr(module, "TARGET", tmp_path / "pretrained" / "agdm-mnist")
    pipe = dummy_pipeline()
    pipe.save_pretrained(tmp_path / "tuned")
    data = LabelledImages(dummy_images(4), torch.tensor([0, 1, 2, 3]), [], "tiny/test")
    config = EvaluationConfig(defenses=("undefended", "latent"), steps=1, rescore_runs=3, sanity_images=0,
                              gradient_check=False, num_examples=0, allow_failed_sanity=True, show_progress_bar=False)
    report = evaluate(pipe, data, config, output_dir=tmp_path / "eval", command="agdm evaluate --tiny").report
    tuning = {"command": "python training/tune_purification.py --tiny", "settings": {
        "attack": "apgd", "steps": 1, "loss": "margin", "rescore_runs": 3, "robust_images": 2},
        "rows": [{"defense": "latent", "strength": 0.3, "scale": 5.0, "clean_accuracy": 1.0, "robust_accuracy": 0.5}]}
    (tmp_path / "tuned" / "tuning.json").write_text(json.dumps(tuning))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "training_metrics.json").write_text(json.dumps(
        {"command": "train", "seed": 0, "global_step": 1, "wall_time_s": 1.0, "final": {}}))
    capsys.readouterr()

    def no_measuring(*args, **kwargs):
        raise AssertionError("packaging measured something")

    monkeypatch.setattr(UnitRunner, "run", no_measuring)
    old = json.loads((tmp_path / "eval" / "results.json").read_text())
    old["settings"].pop("attack")  # a report of the earlier `agdm evaluate` (PGD, no clean-and-robust rule)
    (tmp_path / "old.json").write_text(json.dumps(old))
    argv = ["--pipeline", str(tmp_path / "tuned"), "--training_runs", str(tmp_path / "run"), "--evaluations"]
    with pytest.raises(SystemExit) as exit_info:
        module.main([*argv, str(tmp_path / "old.json")])
    assert exit_info.value.code == 2 and "not a results.json of the current `agdm evaluate`" in capsys.readouterr().err
    module.main([*argv, str(tmp_path / "eval" / "results.json")])
    card = (tmp_path / "pretrained" / "agdm-mnist" / "README.md").read_text()
    latent = report["results"]["latent"]
    assert "both clean and attacked" in card and "K = 3" in card
    for title in ("robust in all 3 defense runs", "robust in a majority of 3 defense runs",
                  "robust in one defense run"):
        assert title in card, title
    assert format_accuracy(latent["apgd"]["majority"]) in card and "95% interval" in card
    assert f"{100 * latent['apgd']['all']['mean']:.1f}%" in card  # the conservative score heads the card
    assert "robust % (first 2, APGD-1, margin loss; clean-and-robust, correct in all K = 3 runs)" in card


def test_a_new_run_never_silently_mixes_with_an_earlier_runs_checkpoints(stopped_run, folder, capsys):
    with pytest.raises(SystemExit):  # forgot --resume_from_checkpoint: refused, the earlier run is kept
        _train_classifier_in_process(folder, stopped_run, 4)
    assert "already holds checkpoints of a run (checkpoint-2)" in capsys.readouterr().err
    assert _steps(stopped_run) == (["checkpoint-2"], [])
    _train_classifier_in_process(folder, stopped_run, 3, ["--overwrite_output_dir", "--checkpointing_steps", "3",
                                                          "--checkpoints_total_limit", "2"])
    assert _steps(stopped_run) == (["checkpoint-3"], [])


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, folder):
    with pytest.raises(ValueError, match=r"The training loss is \[(nan|inf)\] at step \d+: training diverged"):
        _train_classifier_in_process(folder, tmp_path / "run", 20, ["--learning_rate", "1e30", "--max_grad_norm", "0",
                                                                     "--lr_scheduler", "constant"])
    assert not (tmp_path / "run" / "diffusion_pytorch_model.safetensors").exists()
