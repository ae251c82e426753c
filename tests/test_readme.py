"""Every code example of the README and of the embedded default's model card, read from the documents themselves
(so they cannot drift), runs here against the shipped default and is checked against something true: Python
examples as written; `agdm` commands with tiny budgets; training commands parsed by their own scripts (a real run
takes minutes to hours; the training tests cover what they do)."""

import argparse
import importlib.util
import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

import diffusers_agdm
from diffusers_agdm.cli import main
from diffusers_agdm.evaluation.config import DEFENSES
from dummies import put_in_hub_cache, repo_files

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CARD = diffusers_agdm.default_pipeline_path() / "README.md"
INSTALL_STEPS = ("python3 -m venv", ". .venv/bin/activate", "pip install")
TINY = {"--num_images": "2", "--steps": "1", "--eot_samples": "1", "--rescore_runs": "1", "--sanity_images": "0",
        "--seeds": "0", "--batch_size": "2", "--num_examples": "1"}


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced blocks of one language; the test command (marked `<!-- test-command -->`) is left out: it is what
    runs this file."""
    text = path.read_text()
    blocks = re.findall(r"(<!-- test-command -->\n)?^```" + language + r"\n(.*?)^```$", text, re.S | re.M)
    return [code for marker, code in blocks if not marker]


def shell_commands(block: str) -> list[str]:
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()
            and not line.strip().startswith("#")]


def accuracy(out, labels) -> float:
    return (out.labels == labels).float().mean().item()


@pytest.fixture
def digits():
    from diffusers_agdm.data import load_labelled_images

    return load_labelled_images("foolbox-mnist", "test")  # the first 20 images of the official MNIST test set


@pytest.fixture
def fake_hub():
    """`create_repo` and `upload_folder` recorded instead of reaching the Hub."""
    uploads = []

    def upload(repo_id, folder_path, **kwargs):
        uploads.append((repo_id, repo_files(folder_path)))
        return f"https://huggingface.co/{repo_id}/commit/1"

    with mock.patch("diffusers_agdm.hub.create_repo", lambda repo_id, **k: SimpleNamespace(repo_id=repo_id)), \
            mock.patch("diffusers_agdm.hub.upload_folder", upload):
        yield uploads


def test_readme_python_example_keeps_the_digits_in_every_mode(digits, fake_hub):
    pytest.importorskip("torchattacks")
    (block,) = [b for b in code_blocks(README, "python") if "default_pipeline_path()" in b]
    namespace = {}
    torch.manual_seed(0)  # the calls without a generator draw from torch's global one: reproducible here
    exec(compile(block, "README.md", "exec"), namespace)
    outputs = {name: value for name, value in namespace.items()
               if hasattr(value, "labels") and hasattr(value, "images")}
    assert len(outputs) >= 4, f"the example shows four guidance settings; found {sorted(outputs)}"
    for name, out in outputs.items():
        assert out.images.shape == (20, 1, 28, 28)
        assert accuracy(out, digits.labels) >= 0.9, name  # purification keeps what the digits are
    assert torch.isfinite(namespace["x"].grad).all() and namespace["x"].grad.abs().sum() > 0
    assert type(namespace["attack"]).__name__ == "EOTPGD"
    ((repo_id, files),) = fake_hub
    assert repo_id == "your-name/agdm-mnist" and {"README.md", "model_index.json"} <= set(files)


def _cifar_shaped_pipeline(folder: Path) -> None:
    from diffusers import DDIMScheduler

    from diffusers_agdm import AdversarialGuidedPurificationPipeline
    from dummies import dummy_guidance, dummy_unet

    unet, guidance = dummy_unet(3, size=32), dummy_guidance(10, channels=3, size=32)
    AdversarialGuidedPurificationPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100),
                                          guidance=guidance).save_pretrained(folder)


def test_readme_cifar_recipe_puts_the_resnet_in_the_pipeline(tmp_path, monkeypatch):
    (block,) = [b for b in code_blocks(README, "python") if "load_pyautoattack_resnet18" in b]
    monkeypatch.chdir(tmp_path)
    _cifar_shaped_pipeline(tmp_path / "runs" / "agdm-cifar10")  # what step 1 of the recipe trains, in miniature
    exec(compile(block, "README.md", "exec"), {})
    saved = json.loads((tmp_path / "runs" / "agdm-cifar10-resnet18" / "model_index.json").read_text())
    assert saved["classifier"] == ["diffusers_agdm", "CifarResNet"]
    pipe = diffusers_agdm.load_pipeline(str(tmp_path / "runs" / "agdm-cifar10-resnet18"))
    assert type(pipe.classifier).__name__ == "CifarResNet"


def _tiny(argv: list[str], output_dir: Path) -> list[str]:
    """The same command with a tiny budget and its outputs in a temporary folder."""
    out, i = [], 0
    while i < len(argv):
        flag = argv[i]
        if flag in TINY or flag == "--output_dir":
            values = 1
            while i + values < len(argv) and not argv[i + values].startswith("--"):
                values += 1
            out += [flag, str(output_dir) if flag == "--output_dir" else TINY[flag]]
            i += values
        else:
            out.append(flag)
            i += 1
    extra = {"--num_images", "--steps", "--eot_samples", "--rescore_runs", "--sanity_images", "--seeds",
             "--batch_size", "--num_examples"} - set(out)
    for flag in sorted(extra):
        out += [flag, TINY[flag]]
    return out + ["--output_dir", str(output_dir), "--no-gradient_check", "--no-progress_bar", "--allow_failed_sanity"]


class _Parsed(Exception):
    def __init__(self, namespace, extras):
        super().__init__("parsed")
        self.namespace, self.extras = namespace, extras


def _parse_script(script: Path, argv: list[str]):
    """The script's own parser on `argv`, stopped right after parsing (its checks of paths come later)."""
    spec = importlib.util.spec_from_file_location(f"readme_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, args=None, namespace=None):
        raise _Parsed(*original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture), pytest.raises(_Parsed) as caught:
        module.parse_args(argv)
    assert not caught.value.extras, f"{script.name} does not know {caught.value.extras}"
    return caught.value.namespace


def run_shell_example(command: str, tmp_path: Path, digits) -> None:
    argv = shlex.split(command)
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # OMP_NUM_THREADS=1 ...
        argv = argv[1:]
    if argv[:2] == ["accelerate", "launch"] and "diffusers_agdm.cli" in argv:
        run_launched_evaluate(argv, tmp_path)
        return
    if argv[:2] == ["accelerate", "launch"]:
        argv = argv[2:]
    if argv[0] == "python" and argv[1].startswith("training/"):
        argv = argv[1:]
    if argv[0].startswith("training/"):
        namespace = _parse_script(REPO / argv[0], argv[1:])
        assert vars(namespace), command
        return
    assert argv[0] == "agdm", f"no test runs this README example: {command}"
    command_name, flags = argv[1], argv[2:]
    pipeline = flags[flags.index("--pipeline") + 1] if "--pipeline" in flags else None
    if pipeline is not None and pipeline.startswith("runs/"):  # a pipeline the reader trains first: parse only
        from diffusers_agdm.cli import build_parser

        build_parser(command_name).parse_args(argv[1:])
        return
    if command_name == "evaluate":
        output = tmp_path / "evaluate"
        assert main(["evaluate", *_tiny(flags, output)]) == 0, command
        report = json.loads((output / "results.json").read_text())
        given = dict(zip(flags[::1], flags[1::1]))
        assert set(report["results"]) == {"undefended", "robust-classifier", "none", "pixel", "latent",
                                          "latent+robust-classifier"}
        if "--norm" in given:
            assert report["settings"]["threat_model"]["norm"] == given["--norm"]
        if "--dataset_name" in given:
            assert report["data"]["name"].startswith(given["--dataset_name"] + "/")
        assert report["results"]["latent"]["clean"]["all"]["mean"] >= 0.5  # the first two test digits, purified
    elif command_name == "purify":
        for name in (a for a in flags if a.endswith(".png")):
            Image.fromarray((digits.images[0, 0].numpy() * 255).astype(np.uint8), mode="L").save(tmp_path / name)
        assert main(["purify", *flags]) == 0, command
        assert (tmp_path / flags[flags.index("--output_dir") + 1] / "comparison.png").is_file()
    elif command_name == "info":
        assert main(argv[1:]) == 0, command
    else:
        raise AssertionError(f"no test runs this README example: {command}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launched_evaluate(argv: list[str], tmp_path: Path) -> None:
    """`accelerate launch ... -m diffusers_agdm.cli evaluate ...` as written (its launch flags untouched, a free port
    added so parallel runs do not collide), with a tiny budget; the report must record the processes it asked for."""
    import os
    import subprocess
    import sys

    split = argv.index("-m")
    launch, (module, command_name, *flags) = argv[2:split], argv[split + 1:]
    assert (module, command_name) == ("diffusers_agdm.cli", "evaluate"), argv
    output = tmp_path / "launched"
    tiny = _tiny(flags, output)
    tiny[tiny.index("--num_images") + 1] = "4"  # two images per process
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *launch, "--main_process_port",
                           str(_free_port()), "-m", module, command_name, *tiny], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((output / "results.json").read_text())
    assert report["run"]["num_processes"] == int(launch[launch.index("--num_processes") + 1])
    assert report["data"]["num_images"] == 4 and set(report["results"]) == set(DEFENSES)


def shell_examples() -> list:
    examples = []
    for document in (README, CARD):
        commands = [c for block in code_blocks(document, "bash") for c in shell_commands(block)]
        for i, command in enumerate(commands):
            if command.startswith("python3 -m venv"):  # the install steps (CI's own install runs them), then a job
                jobs = [part for part in command.split(" && ") if not part.startswith(INSTALL_STEPS)]
                if not jobs:
                    continue
                command = " && ".join(jobs)
            name = "README" if document == README else "card"
            examples.append(pytest.param(command, id=f"{name}-{i}-{' '.join(shlex.split(command)[:2])[:40]}"))
    return examples


@pytest.mark.parametrize("command", shell_examples())
def test_shell_example_runs(command, tmp_path, monkeypatch, capsys, digits):
    monkeypatch.chdir(tmp_path)
    run_shell_example(command, tmp_path, digits)
    printed = capsys.readouterr().out
    if command.startswith("agdm info"):
        assert "GuidanceModel" in printed and "robust accuracy" in printed
    if command.startswith("agdm purify"):
        assert "predicted" in printed


def test_every_document_has_shell_examples():
    assert len([p for p in shell_examples() if p.id.startswith("README")]) >= 8
    assert len([p for p in shell_examples() if p.id.startswith("card")]) >= 3


def test_card_usage_example_runs_from_the_hub_id_it_names(hub_cache, digits):
    (block,) = code_blocks(CARD, "python")
    repo_id = re.search(r'from_pretrained\("([^"]+)"\)', block).group(1)
    folder = diffusers_agdm.default_pipeline_path()
    put_in_hub_cache(folder, repo_id, hub_cache)  # as if downloaded: the tests never reach the network

    def listing(repo_id, revision=None, cache_dir=None, **_):
        return [SimpleNamespace(path=p) for p in repo_files(folder)]

    namespace = {"images": digits.images}  # the card leaves the images to the reader
    torch.manual_seed(0)
    with mock.patch("diffusers.pipelines.pipeline_utils.get_cached_repo_tree", listing):
        exec(compile(block, "model card", "exec"), namespace)
    # One unseeded run (the card passes no generator): 18 to 20 of the 20 digits in our runs, so the bar is 17.
    assert accuracy(namespace["out"], digits.labels) >= 0.85
    assert isinstance(namespace["defended"], torch.nn.Module)


# What each training script gets appended in the recipe test: the same command, a budget of seconds (argparse keeps
# the last value of a flag given twice).
TRAINING_TINY = {
    "train_diffusion.py": ["--max_train_steps", "2", "--block_out_channels", "4,8", "--norm_num_groups", "4"],
    "train_classifier.py": ["--max_train_steps", "2", "--block_out_channels", "4", "--hidden_dim", "8"],
    "train_guidance.py": ["--max_train_steps", "2", "--block_out_channels", "4,8", "--feature_dim", "8",
                          "--norm_num_groups", "4", "--pgd_steps", "1"],
    "tune_purification.py": ["--strengths", "0.3", "--latent_scales", "10", "--pixel_scales", "1", "--clean_images",
                             "4", "--robust_images", "2", "--steps", "1", "--rescore_runs", "1", "--batch_size", "4",
                             "--min_clean", "0", "--no-progress_bar"],
}
TRAINING_COMMON = ["--train_batch_size", "4", "--max_train_samples", "16", "--eval_samples", "4", "--report_to",
                   "none", "--image_log_steps", "0", "--lr_warmup_steps", "0"]


def training_recipe() -> list[tuple[str, list[str]]]:
    """(script, argv) of every training command of the README and the card, in document order (README first)."""
    steps = []
    for document in (README, CARD):
        for block in code_blocks(document, "bash"):
            for command in shell_commands(block):
                argv = shlex.split(command)
                while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
                    argv = argv[1:]
                if argv[:2] == ["accelerate", "launch"]:
                    argv = argv[2:]
                if argv and argv[0] == "python":
                    argv = argv[1:]
                if argv and argv[0].startswith("training/") and "--push_to_hub" not in argv:  # CIFAR: a GPU recipe
                    steps.append((argv[0], argv[1:]))
    return steps


def test_training_recipe_runs_as_written_in_a_tiny_mode(tmp_path, monkeypatch, capsys):
    """The "Train your own" chain (and the card's tuning command) as written, each command given a budget of seconds:
    every folder one command reads, an earlier one wrote."""
    monkeypatch.chdir(tmp_path)
    recipe = training_recipe()
    assert [Path(script).name for script, _ in recipe[:4]] == ["train_diffusion.py", "train_classifier.py",
                                                               "train_guidance.py", "tune_purification.py"]
    for script, argv in recipe:
        name = Path(script).name
        spec = importlib.util.spec_from_file_location(f"recipe_{Path(script).stem}", REPO / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        extra = TRAINING_TINY[name] + ([] if name == "tune_purification.py" else TRAINING_COMMON)
        module.main([*argv, *extra])
        output = Path(argv[argv.index("--output_dir") + 1])
        assert (output / ("config.json" if name == "train_classifier.py" else "model_index.json")).is_file(), script
    tuned = json.loads((tmp_path / "runs" / "agdm-mnist-tuned" / "tuning.json").read_text())
    assert tuned["chosen"]["latent"]["strength"] == 0.3
    pipe = diffusers_agdm.load_pipeline(str(tmp_path / "runs" / "agdm-mnist-tuned"))
    assert pipe.classifier is not None and pipe.guidance is not None and pipe.config.guidance_scale == 10


def _result(name: str) -> dict:
    return json.loads((REPO / "benchmarks" / "results" / f"{name}.json").read_text())["results"]


def test_readme_figures_are_the_measured_ones():
    """Every time and cost the README quotes is read here from the benchmark result that measured it."""
    text = " ".join(README.read_text().split())
    first = _result("first_success_time")
    assert first["exit_code"] == 0 and [shlex.split(c["command"])[:2] for c in first["commands"]] == \
        [["agdm", "info"], ["agdm", "purify"]]
    assert f"The two `agdm` commands took {first['wall_s']:.0f} s wall together" in text
    spec = importlib.util.spec_from_file_location("time_quickstart", REPO / "benchmarks" / "time_quickstart.py")
    timer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timer)  # what the timing script reads from the README is what was timed
    assert [command[:2] for command in timer.first_success_commands()] == [["agdm", "info"], ["agdm", "purify"]]
    assert [shlex.split(c["command"].replace("<tmp>/", "outputs/")) for c in first["commands"]] == \
        timer.first_success_commands()
    assert timer.quickstart_command()[:2] == ["agdm", "evaluate"]
    quick = _result("quickstart_time")
    assert f"It took {quick['wall_s'] / 60:.1f} minutes ({quick['cpu_s']:.0f} CPU-seconds)" in text
    convergence = _result("attack_convergence")
    per_gradient = {defense: result["cpu_s"] / (result["clean"]["num_images"]
                                                 * result["curve"][-1]["gradient_evaluations"])
                    for defense, result in convergence["margin"].items()}
    assert (f"costs ~{per_gradient['latent']:.2f} CPU-seconds per image with latent guidance and "
            f"~{per_gradient['none']:.2f} unguided") in text


def test_repository_license_citation_and_clean_default():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    for document in (README, CARD, REPO / "diffusers_agdm" / "model_card_template.md"):
        bibtex = "\n".join(code_blocks(document, "bibtex"))
        assert "2403.16067" in bibtex and "Adversarial Guided Diffusion Models for Adversarial Purification" in bibtex
        assert "@software{diffusers_agdm" in bibtex, document
    index = json.loads((diffusers_agdm.default_pipeline_path() / "model_index.json").read_text())
    assert "_name_or_path" not in index  # no path of the machine that trained it
    assert diffusers_agdm.sample_image_path().is_file()
    assert "assets/*.png" in str(project) or "assets/*.png" in (REPO / "pyproject.toml").read_text()


def test_a_saved_pipeline_does_not_leak_where_it_was_loaded_from(tmp_path):
    pipe = diffusers_agdm.load_pipeline()
    pipe.save_pretrained(tmp_path / "copy")
    assert "_name_or_path" not in json.loads((tmp_path / "copy" / "model_index.json").read_text())
