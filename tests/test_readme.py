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
from dummies import put_in_hub_cache, repo_files

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CARD = diffusers_agdm.default_pipeline_path() / "README.md"
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


def shell_examples() -> list:
    examples = []
    for document in (README, CARD):
        commands = [c for block in code_blocks(document, "bash") for c in shell_commands(block)]
        for i, command in enumerate(commands):
            if command.startswith("python3 -m venv"):  # command 1: the install steps, then the job it runs
                command = command.split(" && ")[-1]
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
