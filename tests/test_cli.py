import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_agdm.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_SANITY_FAILED, build_parser, main
from diffusers_agdm.commands.evaluate import config_from_args
from dummies import dummy_pipeline

REPO = Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--steps", "2", "--eot_samples", "1", "--rescore_runs", "3", "--batch_size", "2",
              "--sanity_images", "2", "--num_examples", "2", "--no-progress_bar"]


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


def test_help_and_version_import_neither_torch_nor_diffusers():
    """`agdm --help` and `agdm --version` stay fast (0.4 s measured) because they import no heavy library."""
    probe = ("import sys\nfrom diffusers_agdm.cli import main\n"
             "for argv in (['--help'], ['--version'], ['purify', '--help']):\n"
             "    try:\n        main(argv)\n    except SystemExit as exit:\n        assert exit.code == 0, argv\n"
             "heavy = ('torch', 'diffusers', 'transformers', 'datasets')\n"
             "print('HEAVY', sorted(m for m in heavy if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert "agdm (diffusers-agdm) 0.1.0; diffusers 0.42" in done.stdout
    for command in ("evaluate", "purify", "info", "push"):
        assert command in done.stdout


def test_every_flag_has_help_and_booleans_have_a_no_form():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"agdm {name} {action.option_strings or action.dest} has no help"
            if isinstance(action, argparse.BooleanOptionalAction):
                assert any(o.startswith("--no-") for o in action.option_strings)
            assert not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)), (name, action)
    args = parser.parse_args(["evaluate", "--no-class_guidance", "--no-random_start", "--dataset_name", "x"])
    assert args.class_guidance is False and args.random_start is False and args.dataset_name == "x"
    args = parser.parse_args(["evaluate"])
    assert args.class_guidance is None and args.random_start and args.gradient_check and args.progress_bar
    config = config_from_args(parser.parse_args(["evaluate", "--class_guidance", "--no-gradient_check"]))
    assert config.class_guidance is True and config.gradient_check is False
    for old in (["evaluate", "--dataset", "mnist"], ["purify", "a.png", "--output", "o"],
                ["push", "--repo_id", "a/b"]):
        with pytest.raises(SystemExit):
            parser.parse_args(old)


def test_demo_checks_its_arguments_and_names_the_missing_extra(capsys):
    assert main(["demo", "--attack_steps", "0"]) == EXIT_BAD_INPUT
    assert "--attack_steps" in capsys.readouterr().err
    with mock.patch.dict(sys.modules, {"gradio": None}):  # as if Gradio were not installed
        assert main(["demo"]) == EXIT_BAD_INPUT
    assert "pip install 'diffusers-agdm[demo]'" in capsys.readouterr().err


def test_thread_count_follows_the_machine_and_the_user(monkeypatch):
    from diffusers_agdm.commands import set_num_threads

    before = torch.get_num_threads()
    try:
        assert set_num_threads(3) == 3 and torch.get_num_threads() == 3  # --num_threads wins
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert set_num_threads(None) == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (5.2, 0.0, 0.0))
        torch.set_num_threads(8)
        assert set_num_threads(None) == 3  # 8 cores, 5 busy with other work
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert set_num_threads(None) == 1  # the idle cores shared by two accelerate processes
        with pytest.raises(ValueError, match="--num_threads"):
            set_num_threads(0)
    finally:
        torch.set_num_threads(before)


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
    # The per-image worst case over the attacks and the adversarial-training baseline are in every table.
    assert "worst case over all attacks" in printed and "| robust classifier (the guidance network" in printed
    assert "| latent guidance, then the robust classifier |" in printed
    for defense in ("undefended", "robust-classifier", "none", "pixel", "latent", "latent+robust-classifier"):
        assert set(report["results"][defense]["worst-case"]) == {"all", "majority", "single"}
    assert any(r["attack"] == "worst-case" and r["defense"] == "robust-classifier" for r in report["per_image"])
    # The budget is printed with the tables: iterations, EOT and gradient evaluations per image of each attack.
    assert "PGD-EOT (exact gradient): 2 steps, EOT 1 = 2 gradient evaluations per image" in printed
    assert printed.index("Attack budget:") < printed.index("| defense |")


def test_cli_fails_loudly_when_a_sanity_check_fails(saved, tmp_path, capsys):
    """An attack that cannot move leaves the undefended classifier intact: exit status 1 and a FAILED block,
    unless --allow_failed_sanity."""
    broken = ["--defenses", "undefended", "--attacks", "pgd", "--step_size", "1e-9", "--no-random_start"]
    assert main(evaluate_args(saved, tmp_path / "a", *broken)) == EXIT_SANITY_FAILED
    captured = capsys.readouterr()
    assert "SANITY CHECK FAILED" in captured.out and "FAILED" in captured.err
    # The verdict comes before the tables, so nobody quotes a number without reading it.
    assert captured.out.index("VERDICT:") < captured.out.index("| defense |")
    assert "cannot be trusted" in captured.out.split("| defense |")[0]
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


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.replace("\r", "\n")  # a data-loading progress bar may come first
    assert err.endswith("\n") and err.count("agdm evaluate: error: ") == 1, err
    last = err.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("agdm evaluate: error: "), err
    return last


def test_evaluate_checks_its_output_location_before_any_work(saved, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    for output in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        with mock.patch("diffusers_agdm.evaluation.runner.evaluate") as evaluate:
            assert main(evaluate_args(saved, output)) == EXIT_BAD_INPUT
        evaluate.assert_not_called()
        assert "not a" in _one_line_error(capsys)


@pytest.mark.parametrize("case", ["unknown dataset", "empty folder", "not a pipeline", "offline hub"])
def test_evaluate_maps_anticipated_failures_to_one_line_and_exit_2(saved, tmp_path, capsys, case):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    flags = {"unknown dataset": ["--dataset_name", "no-such-dataset"],
             "empty folder": ["--data_dir", str(tmp_path / "empty")],
             "not a pipeline": ["--pipeline", str(tmp_path / "empty")],
             "offline hub": ["--pipeline", "org/not-cached"]}[case]
    args = evaluate_args(saved, tmp_path / "out")
    if case == "unknown dataset":
        args = [a for a in args if a not in ("--data_dir", str(saved / "data"))]
    assert main(args + flags) == EXIT_BAD_INPUT
    err = _one_line_error(capsys)
    assert {"unknown dataset": "no-such-dataset", "empty folder": "empty", "not a pipeline": "model_index.json",
            "offline hub": "org/not-cached"}[case] in err


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
