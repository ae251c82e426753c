"""`agdm purify`, `agdm info` and `agdm push` on a tiny saved pipeline."""

import json
import shutil
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from diffusers_agdm.cli import main
from dummies import dummy_pipeline, put_in_hub_cache, repo_files


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    dummy_pipeline().save_pretrained(path)
    return path


def _pngs(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        pixels = (np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"digit{i}.png")
        files.append(str(folder / f"digit{i}.png"))
    return files


def test_purify_writes_images_and_a_comparison(saved, tmp_path, capsys):
    files = _pngs(tmp_path / "in")
    out = str(tmp_path / "out")
    assert main(["purify", *files, "--output_dir", out, "--pipeline", str(saved), "--seed", "1"]) == 0
    for i in range(3):
        image = Image.open(tmp_path / "out" / f"digit{i}_purified.png")
        assert image.size == (8, 8)
    comparison = Image.open(tmp_path / "out" / "comparison.png")
    assert comparison.size[0] > comparison.size[1] > 100  # a real figure, inputs above purified
    printed = capsys.readouterr().out
    assert "predicted" in printed and "comparison.png" in printed


def test_purify_is_deterministic_for_a_seed(saved, tmp_path):
    files = _pngs(tmp_path / "in", 2)
    for run in ("a", "b"):
        main(["purify", *files, "--output_dir", str(tmp_path / run), "--pipeline", str(saved), "--seed", "3"])
    a = np.asarray(Image.open(tmp_path / "a" / "digit0_purified.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "digit0_purified.png"))
    np.testing.assert_array_equal(a, b)


def test_purify_rejects_missing_files_and_resizes_others_saying_so(saved, tmp_path, capsys):
    assert main(["purify", str(tmp_path / "nope.png"), "--output_dir", str(tmp_path / "o"), "--pipeline",
                 str(saved)]) == 2
    assert "No such image file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # Another size is no longer refused (it used to be, after loading the pipeline): resized, and said so.
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(tmp_path / "big.png")
    assert main(["purify", str(tmp_path / "big.png"), "--output_dir", str(tmp_path / "o"), "--pipeline",
                 str(saved)]) == 0
    assert "big.png: resized 16x16 -> 8x8" in capsys.readouterr().out
    assert Image.open(tmp_path / "o" / "big_purified.png").size == (8, 8)


def _error_line(capsys, command):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"agdm {command}: error: "), err
    return err


def test_purify_keeps_inputs_with_the_same_name_apart(saved, tmp_path, capsys):
    a, b = _pngs(tmp_path / "a", 1)[0], _pngs(tmp_path / "b", 2)[1].replace("digit1", "digit0")
    Image.fromarray(np.full((8, 8), 200, np.uint8), mode="L").save(b)  # b/digit0.png, another image
    assert main(["purify", a, b, "--output_dir", str(tmp_path / "out"), "--pipeline", str(saved)]) == 0
    written = sorted(p.name for p in (tmp_path / "out").glob("*_purified.png"))
    assert written == ["digit0_1_purified.png", "digit0_2_purified.png"]
    first, second = (np.asarray(Image.open(tmp_path / "out" / name)) for name in written)
    assert not np.array_equal(first, second)
    printed = capsys.readouterr().out
    assert f"{a} -> " in printed and f"{b} -> " in printed


@pytest.mark.parametrize("case", ["truncated", "not an image", "output under a file", "output is a file",
                                  "output overwrites input"])
def test_purify_fails_in_one_line_before_loading_the_pipeline(saved, tmp_path, capsys, case):
    image = _pngs(tmp_path / "in", 1)[0]
    output = tmp_path / "out"
    if case == "truncated":
        data = open(image, "rb").read()
        open(image, "wb").write(data[: len(data) // 2])
    elif case == "not an image":
        open(image, "w").write("hello")
    elif case == "output under a file":
        (tmp_path / "file").write_text("")
        output = tmp_path / "file" / "out"
    elif case == "output is a file":
        output = tmp_path / "file"
        output.write_text("")
    images = [image]
    if case == "output overwrites input":  # x.png's output would be the other input, x_purified.png
        images = [str(tmp_path / "in" / name) for name in ("x.png", "x_purified.png")]
        for name in images:
            shutil.copy(image, name)
        output = tmp_path / "in"
    with mock.patch("diffusers_agdm.default_pipeline.load_pipeline") as load:
        assert main(["purify", *images, "--output_dir", str(output), "--pipeline", str(saved)]) == 2
    load.assert_not_called()
    err = _error_line(capsys, "purify")
    expected = {"truncated": "cannot read", "not an image": "cannot read", "output under a file": "cannot be created",
                "output is a file": "not a folder", "output overwrites input": "would overwrite the input"}[case]
    assert expected in err


@pytest.mark.parametrize("case", ["folder without model_index.json", "offline hub", "not our pipeline", "a file"])
def test_info_fails_in_one_line_with_exit_2(tmp_path, capsys, case):
    if case == "folder without model_index.json":
        source, expected = str(tmp_path), "no model_index.json"
    elif case == "offline hub":
        source, expected = "org/not-cached", "org/not-cached"
    elif case == "a file":
        (tmp_path / "f").write_text("")
        source, expected = str(tmp_path / "f"), "is a file"
    else:
        from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                           norm_num_groups=8, layers_per_block=1,
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
        source, expected = str(tmp_path / "ddpm"), "holds a DDPMPipeline, not an AdversarialGuidedPurificationPipeline"
    assert main(["info", "--pipeline", source]) == 2
    assert expected in _error_line(capsys, "info")


def test_info_lists_components_config_and_card_numbers(saved, tmp_path, capsys):
    from diffusers_agdm import load_pipeline, make_model_card

    folder = tmp_path / "with_card"
    shutil.copytree(saved, folder)
    results = [{"defense": "latent", "attack": "PGD-EOT", "norm": "Linf", "eps": 0.3, "clean_accuracy": 0.9,
                "robust_accuracy": 0.55}]
    card = make_model_card(load_pipeline(str(folder)), "org/x", results=results, dataset="mnist", split="test")
    card.save(folder / "README.md")
    assert main(["info", "--pipeline", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["components"]) == {"unet", "scheduler", "guidance", "classifier"}
    assert info["components"]["guidance"]["parameters"] > 0 and info["components"]["unet"]["bytes_on_disk"] > 0
    assert info["purification_defaults"]["guidance_scale"] == 5.0
    settings = load_pipeline(str(folder)).resolve_settings()
    assert info["purification_defaults"]["effective_t_star"].startswith(
        f"{settings.first_timestep} of {settings.num_train_timesteps} (timesteps {settings.timesteps[0]}, ")
    assert any(m["value"] == 0.55 for m in info["card_results"])
    assert main(["info", "--pipeline", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "GuidanceModel" in text and "55.0%" in text


def test_push_uploads_folder_with_card_and_it_loads_back(saved, tmp_path, hub_cache):
    uploaded = tmp_path / "uploaded"

    def fake_upload(repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, uploaded)
        return "https://huggingface.co/org/agdm-cli/commit/1"

    created = []

    def fake_create(repo_id, **kwargs):
        created.append(kwargs)
        return SimpleNamespace(repo_id=repo_id)

    with mock.patch("diffusers_agdm.hub.create_repo", fake_create), \
            mock.patch("diffusers_agdm.hub.upload_folder", fake_upload):
        assert main(["push", "--pipeline", str(saved), "--hub_model_id", "org/agdm-cli", "--hub_token", "hf_x",
                     "--private"]) == 0
    assert created == [{"private": True, "token": "hf_x", "exist_ok": True}]
    files = repo_files(uploaded)
    assert "README.md" in files and "model_index.json" in files
    assert "org/agdm-cli" in (uploaded / "README.md").read_text()
    put_in_hub_cache(uploaded, "org/agdm-cli", hub_cache)

    def listing(repo_id, revision=None, cache_dir=None, **_):
        return [SimpleNamespace(path=p) for p in files]

    from diffusers import DiffusionPipeline

    with mock.patch("diffusers.pipelines.pipeline_utils.get_cached_repo_tree", listing):
        pipe = DiffusionPipeline.from_pretrained("org/agdm-cli")
    assert type(pipe).__name__ == "AdversarialGuidedPurificationPipeline"


# ------------------------------------------------------------------ flags and help


def _training_parsers():
    """The parser of each training script, as its `parse_args` builds it (captured before it parses)."""
    import argparse
    import importlib.util
    from pathlib import Path

    class Built(Exception):
        pass

    def capture(self, *args, **kwargs):
        raise Built(self)

    parsers = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "training").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
            try:
                module.parse_args([])
            except Built as built:
                parsers[path.stem] = built.args[0]
    return parsers


def _command_parsers():
    from diffusers_agdm.cli import build_parser, command_parser
    from diffusers_agdm.commands import COMMANDS

    parser = build_parser()
    return {f"agdm {name}": command_parser(parser, name) for name in COMMANDS}


def test_every_flag_has_help_and_shows_its_default_once():
    parsers = {**_command_parsers(), **_training_parsers()}
    assert {"agdm evaluate", "agdm purify", "train_guidance", "tune_purification", "package_default"} <= set(parsers)
    for where, parser in parsers.items():
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{where} {action.option_strings[0]} has no help"
        assert "(default: None)" not in text, where
        flat = " ".join(text.split())
        for action in parser._actions:  # each flag's help says its default at most once
            if action.help:
                rendered = " ".join(parser._get_formatter()._expand_help(action).split())
                assert rendered.count("(default") <= 1, (where, rendered)
        assert "['" not in flat, f"{where} shows a list default as a Python list"
    evaluate = " ".join(parsers["agdm evaluate"].format_help().split())
    assert "one evaluation per seed; mean and std over seeds (--seed N: just N) (default: 0)" in evaluate
    for helpless in ("--norm", "--eps", "--eot_samples"):
        assert all(a.help for p in parsers.values() for a in p._actions if helpless in a.option_strings)


def test_agdm_takes_the_training_scripts_names():
    from diffusers_agdm.cli import build_parser

    parser = build_parser()
    for old, new in (("--pipeline", "--pretrained_model_name_or_path"), ("--data_dir", "--train_data_dir"),
                     ("--seeds", "--seed")):
        a = parser.parse_args(["evaluate", old, "x" if "seed" not in old else "3"])
        b = parser.parse_args(["evaluate", new, "x" if "seed" not in new else "3"])
        assert vars(a) == vars(b), old
    assert parser.parse_args(["push", "--hub_model_id", "a/b", "--hub_private_repo"]).private is True
    assert parser.parse_args(["push", "--hub_model_id", "a/b", "--private"]).private is True
    assert parser.parse_args(["demo", "--steps", "3"]).attack_steps == 3
    tune, guidance = (_training_parsers()[name] for name in ("tune_purification", "train_guidance"))
    assert "--steps" in tune._option_string_actions and "--steps" in guidance._option_string_actions


def test_a_bad_flag_prints_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["purify", "x.png", "--no_such_flag", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: agdm purify") and "unrecognized arguments: --no_such_flag 1" in err


def test_evaluate_flags_are_generated_from_every_config_field():
    from dataclasses import fields

    from diffusers_agdm.cli import build_parser, command_parser
    from diffusers_agdm.commands.evaluate import config_from_args
    from diffusers_agdm.evaluation.config import EvaluationConfig

    parser = build_parser("evaluate")
    assert config_from_args(parser.parse_args(["evaluate"])) == EvaluationConfig()
    flags = set(command_parser(parser, "evaluate")._option_string_actions)
    for field in fields(EvaluationConfig):
        assert f"--{field.metadata.get('flag', field.name)}" in flags, field.name
    config = config_from_args(parser.parse_args(["evaluate", "--attacks", "pgd,bpda", "--eps_grid", "0.1", "0.2",
                                                 "--seed", "4", "--strength", "0.25", "--no-progress_bar"]))
    assert (config.attacks, config.eps_grid, config.seeds, config.strength) == (("pgd", "bpda"), (0.1, 0.2), (4,),
                                                                                 0.25)
    assert config.show_progress_bar is False


def test_every_commands_help_loads_no_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom diffusers_agdm.cli import build_parser\nparser = build_parser()\nparser.format_help()\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_the_loss_flag_names_every_loss():
    from diffusers_agdm.attacks import LOSSES
    from diffusers_agdm.cli import build_parser, command_parser

    loss = command_parser(build_parser("evaluate"), "evaluate")._option_string_actions["--loss"]
    assert all(name in loss.help for name in LOSSES)
    with pytest.raises(ValueError, match="Unknown loss 'hinge'"):
        from diffusers_agdm.commands.evaluate import config_from_args

        config_from_args(build_parser("evaluate").parse_args(["evaluate", "--loss", "hinge"])).validate()
