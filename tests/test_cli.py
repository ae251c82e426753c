import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_agdm.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_SANITY_FAILED, build_parser, main
from dummies import dummy_pipeline


REPO = Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--pgd_steps", "2", "--eot_samples", "1", "--rescore_runs", "3", "--batch_size", "2",
              "--sanity_images", "2", "--sanity_steps", "1", "2", "--sanity_eot", "1", "2", "--num_examples", "2",
              "--no_progress_bar"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny pipeline in a folder, and an image folder (class = sub-folder) of images its classifier gets right,
    quantised to 8 bits before labelling so the PNGs carry exactly the labelled images."""
    root = tmp_path_factory.mktemp("cli")
    pipe = dummy_pipeline()
    pipe.save_pretrained(root / "pipeline")
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    with torch.no_grad():
        labels = pipe.classifier_logits(torch.from_numpy(pixels / 255.0).float()[:, None]).argmax(-1).tolist()
    for i, (image, label) in enumerate(zip(pixels, labels)):
        folder = root / "data" / "test" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i}.png")
    assert min(labels) == 0  # image-folder labels are the sorted folder names: they must start at class 0
    return root


def evaluate_args(saved, output_dir, *extra):
    return ["evaluate", "--pipeline", str(saved / "pipeline"), "--data_dir", str(saved / "data"), "--split", "test",
            "--num_images", "4", "--output_dir", str(output_dir), *TINY_FLAGS, *extra]


def test_parser_has_evaluate_and_room_for_more_commands():
    parser = build_parser()
    args = parser.parse_args(["evaluate", "--pipeline", "x", "--attacks", "pgd,bpda", "autoattack-rand",
                              "--seeds", "0", "1"])
    assert args.command == "evaluate" and args.attacks == ["pgd,bpda", "autoattack-rand"]
    with pytest.raises(SystemExit):
        parser.parse_args([])


def test_cli_evaluate_end_to_end(saved, tmp_path, capsys):
    out = tmp_path / "eval"
    status = main(evaluate_args(saved, out, "--attacks", "pgd,bpda", "--eps_grid", "0.1", "--allow_failed_sanity"))
    printed = capsys.readouterr().out
    assert status == EXIT_OK
    assert "| latent guidance (AGDM) |" in printed and "Sanity checks:" in printed
    for name in ("results.json", "results.md", "robust_accuracy_vs_eps.png", "examples_grid.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "results.json").read_text())
    assert report["run"]["command"].startswith("agdm evaluate --pipeline")
    assert report["settings"]["attacks"] == ["pgd", "bpda"] and report["data"]["num_images"] == 4
    assert report["pipeline"] == str(saved / "pipeline")


def test_cli_fails_loudly_when_a_sanity_check_fails(saved, tmp_path, capsys):
    """An attack that cannot move leaves the undefended classifier intact: exit status 1 and a FAILED block,
    unless --allow_failed_sanity."""
    broken = ["--defenses", "undefended", "--pgd_step_size", "1e-9", "--no_random_start"]
    assert main(evaluate_args(saved, tmp_path / "a", *broken)) == EXIT_SANITY_FAILED
    captured = capsys.readouterr()
    assert "SANITY CHECK FAILED" in captured.out and "FAILED" in captured.err
    assert main(evaluate_args(saved, tmp_path / "b", *broken, "--allow_failed_sanity")) == EXIT_OK


@pytest.mark.parametrize("flags, message", [
    (["--attacks", "pgd,cw"], "Unknown attacks"),
    (["--eps", "-0.1"], "eps"),
    (["--defenses", "latent,jpeg"], "Unknown defenses"),
    (["--seeds", "0", "x"], "--seeds"),
    (["--num_images", "-1"], "num_images"),
])
def test_cli_bad_input_exits_2_with_a_message(saved, tmp_path, capsys, flags, message):
    assert main(evaluate_args(saved, tmp_path, *flags)) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_exactly_the_one_process_result(saved, tmp_path):
    """`accelerate launch --num_processes 2` (gloo on CPU) splits the images and gathers the records; with the same
    seeds every number equals the one-process run."""
    flags = ["--attacks", "pgd", "--seeds", "0", "1", "--allow_failed_sanity"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(_free_port()), "-m", "diffusers_agdm.cli"]
    done = subprocess.run(launch + evaluate_args(saved, tmp_path / "two", *flags), env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    # One thread here (the fixture) as in each launched process, so both see the same floating-point reductions.
    assert torch.get_num_threads() == 1
    assert main(evaluate_args(saved, tmp_path / "one", *flags)) == EXIT_OK

    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two["run"]["num_processes"] == 2 and one["run"]["num_processes"] == 1
    for key in ("results", "eps_curve", "sanity_checks", "per_image", "settings", "defenses", "data"):
        assert two[key] == one[key], key
