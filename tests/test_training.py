import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_agdm import AdversarialGuidedPurificationPipeline, GuidanceModel
from diffusers_agdm.training_utils.trades import _kl, diffuse01, kl_pgd
from dummies import dummy_guidance, dummy_pipeline, save_diffusion_source

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "training" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image_folder(root: Path, size=8, mode="L", per_class=6, classes=4) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size), np.float32)
            base[:, c * size // classes:(c + 1) * size // classes] = 1.0  # a class-coded stripe
            pixels = np.clip(base + 0.2 * rng.standard_normal((size, size)), 0, 1)
            image = Image.fromarray((pixels * 255).astype(np.uint8), mode="L").convert(mode)
            image.save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _image_folder(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny diffusion pipeline (UNet + DDIM, no guidance) to train guidance on."""
    return save_diffusion_source(tmp_path_factory.mktemp("source"))


TINY = ["--train_batch_size", "4", "--report_to", "none", "--learning_rate", "1e-2", "--lr_warmup_steps", "0",
        "--image_log_steps", "0"]
TINY_GUIDANCE = ["--block_out_channels", "4,8", "--feature_dim", "8", "--norm_num_groups", "4", "--pgd_steps", "2",
                 "--eval_samples", "8"]


def _guidance_args(source, folder, out, steps, extra=()):
    return ["--pretrained_model_name_or_path", str(source), "--train_data_dir", str(folder), "--output_dir", str(out),
            "--max_train_steps", str(steps), *TINY, *TINY_GUIDANCE, *extra]


def test_diffusion_classifier_guidance_end_to_end(tmp_path, folder):
    _script("train_diffusion").main(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / "ddpm"),
                                     "--max_train_steps", "3", "--block_out_channels", "4,8", "--norm_num_groups",
                                     "4", "--num_train_timesteps", "100", *TINY])
    _script("train_classifier").main(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / "clf"),
                                      "--max_train_steps", "3", "--block_out_channels", "4", "--hidden_dim", "8",
                                      "--eval_samples", "8", *TINY])
    _script("train_guidance").main(_guidance_args(tmp_path / "ddpm", folder, tmp_path / "agdm", 3,
                                                  ["--classifier_name_or_path", str(tmp_path / "clf"),
                                                   "--guidance_scale", "7"]))
    out = tmp_path / "agdm"
    pipe = AdversarialGuidedPurificationPipeline.from_pretrained(out)
    assert isinstance(pipe.guidance, GuidanceModel) and pipe.classifier is not None
    assert pipe.config.guidance_scale == 7 and pipe.config.guidance_mode == "latent"
    assert pipe.guidance.config.num_classes == 4
    images = pipe(torch.rand(2, 1, 8, 8), output_type="pt", generator=torch.Generator().manual_seed(0))
    assert images.images.shape == (2, 1, 8, 8) and images.labels.shape == (2,)
    card = (out / "README.md").read_text()
    assert "train_guidance.py" in card and "--max_train_steps 3" in card and "adversarial_accuracy" in card
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["global_step"] == 3 and "adversarial_accuracy" in metrics["final"]
    assert not list(out.rglob("*.bin")) or all("checkpoint-" in str(p) for p in out.rglob("*.bin"))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "guidance" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("accumulation", ["1", "2"])
def test_resume_is_exact(tmp_path, source, folder, accumulation):
    """N steps in one go equal N/2 steps, a stop, `--resume_from_checkpoint latest` and N/2 more (EMA, optimizer,
    lr schedule, data order and the loss's random draws all restored); the resume starts mid-epoch."""
    train = _script("train_guidance").main
    common = ["--checkpointing_steps", "3", "--gradient_accumulation_steps", accumulation, "--eval_steps", "100"]
    train(_guidance_args(source, folder, tmp_path / "one_go", 4, common))
    train(_guidance_args(source, folder, tmp_path / "split", 4, [*common, "--stop_after_steps", "2"]))
    assert not (tmp_path / "split" / "model_index.json").exists()  # stopped runs save checkpoints, not results
    train(_guidance_args(source, folder, tmp_path / "split", 4, [*common, "--resume_from_checkpoint", "latest"]))
    one_go, split = _weights(tmp_path / "one_go"), _weights(tmp_path / "split")
    assert one_go.keys() == split.keys()
    for name in one_go:
        torch.testing.assert_close(split[name], one_go[name], rtol=0, atol=0, msg=name)
    # and training did move the weights
    fresh = _weights(tmp_path / "split" / "checkpoint-2")
    assert any(not torch.equal(fresh[k], one_go[k]) for k in one_go)


def test_checkpoints_total_limit(tmp_path, source, folder):
    _script("train_guidance").main(_guidance_args(source, folder, tmp_path / "run", 4,
                                                  ["--checkpointing_steps", "1", "--checkpoints_total_limit", "2"]))
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


def test_kl_pgd_increases_the_kl_it_maximises():
    torch.manual_seed(0)
    guidance = dummy_guidance()
    pipe = dummy_pipeline()
    alphas = pipe.scheduler.alphas_cumprod
    x = torch.rand(6, 1, 8, 8)
    noise = torch.randn_like(x)
    t = torch.randint(0, 30, (6,))

    def kl(adv):
        with torch.no_grad():
            clean = guidance(diffuse01(x, noise, alphas, t), t).logits
            return _kl(clean, guidance(diffuse01(adv, noise, alphas, t), t).logits).item()

    for norm, eps in (("Linf", 0.3), ("L2", 2.0)):
        adv = kl_pgd(guidance, x, noise, t, alphas, norm=norm, eps=eps, step_size=0.1 if norm == "Linf" else 0.5,
                     steps=5)
        random = (x + (torch.rand_like(x) * 2 - 1) * 0.001).clamp(0, 1)
        assert kl(adv) > 10 * max(kl(random), 1e-6)
        delta = (adv - x).flatten(1)
        if norm == "Linf":
            assert delta.abs().max() <= eps + 1e-6
        else:
            assert delta.norm(dim=1).max() <= eps + 1e-5
        assert adv.min() >= 0 and adv.max() <= 1


def test_two_process_run_finishes_and_saves_one_loadable_pipeline(tmp_path, source, folder):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "29517", str(ROOT / "training" / "train_guidance.py"),
               *_guidance_args(source, folder, out, 2, ["--checkpointing_steps", "1"])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    pipe = AdversarialGuidedPurificationPipeline.from_pretrained(out)
    assert isinstance(pipe.guidance, GuidanceModel)
    assert json.loads((out / "training_metrics.json").read_text())["global_step"] == 2
    assert "--num_processes 2" in (out / "README.md").read_text()
    marker = json.loads((out / "checkpoint-2" / "checkpoint_complete.json").read_text())
    assert marker["num_processes"] == 2 and {"random_states_0.pkl", "random_states_1.pkl"} <= set(marker["files"])


def test_bad_dataset_inputs(tmp_path, source, folder):
    train = _script("train_guidance").main
    with pytest.raises(ValueError, match="image column 'img' is not in"):
        train(_guidance_args(source, folder, tmp_path / "a", 1, ["--image_column", "img"]))
    with pytest.raises(ValueError, match="label column 'cls' is not in"):
        train(_guidance_args(source, folder, tmp_path / "a", 1, ["--label_column", "cls"]))
    big = _image_folder(tmp_path / "big", size=16)
    with pytest.raises(ValueError, match="16x16 images but the UNet expects 8x8"):
        train(_guidance_args(source, big, tmp_path / "b", 1))
    rgb = _image_folder(tmp_path / "rgb", mode="RGB")
    with pytest.raises(ValueError, match="3-channel images but the UNet expects 1 channels"):
        train(_guidance_args(source, rgb, tmp_path / "c", 1))
    args = _guidance_args(source, folder, tmp_path / "d", 1)
    args[args.index("--train_data_dir"):args.index("--train_data_dir") + 2] = ["--dataset_name", "mnist",
                                                                                "--split", "test"]
    with pytest.raises(SystemExit):  # refused at parse time, before any model is loaded
        train(args)


def test_fashion_mnist_missing_is_a_clear_error(monkeypatch):
    from diffusers_agdm.data import datasets, load_labelled_images

    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", Path("/nonexistent/fashion-mnist"))
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_labelled_images("fashion-mnist", "train")
