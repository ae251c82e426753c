"""The CIFAR-10 recipe's code path, offline: a UNet of exactly google/ddpm-cifar10-32's configuration (random
weights) in a hand-built Hub cache, the real CIFAR-10 ResNet-18 of the pyautoattack wheel, and the 20 real CIFAR-10
test images of the foolbox wheel."""

import json
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from diffusers_agdm import (
    AdversarialGuidedPurificationPipeline,
    CifarResNet,
    GuidanceModel,
    load_pyautoattack_resnet18,
)
from diffusers_agdm.data import load_labelled_images
from diffusers_agdm.loading import load_diffusion_source
from diffusers_agdm.models.public_configs import DDPM_CIFAR10_SCHEDULER, DDPM_CIFAR10_UNET, init_kwargs
from dummies import put_in_hub_cache, repo_files


@pytest.fixture(scope="module")
def cifar_repo(tmp_path_factory, hub_cache):
    folder = tmp_path_factory.mktemp("ddpm-cifar10-32")
    torch.manual_seed(0)
    unet = UNet2DModel(**init_kwargs(DDPM_CIFAR10_UNET))
    unet.save_pretrained(folder)  # config.json + diffusion_pytorch_model.safetensors at the root, as on the Hub
    (folder / "scheduler_config.json").write_text(json.dumps(DDPM_CIFAR10_SCHEDULER))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1",
        "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}))
    put_in_hub_cache(folder, "google/ddpm-cifar10-32", hub_cache)

    def listing(repo_id, revision=None, cache_dir=None, **_):
        return [SimpleNamespace(path=p) for p in repo_files(folder)]

    with mock.patch("diffusers.pipelines.pipeline_utils.get_cached_repo_tree", listing):
        yield "google/ddpm-cifar10-32"


def test_cifar10_purification_end_to_end(cifar_repo, tmp_path):
    source = load_diffusion_source(cifar_repo)
    unet_config = {k: v for k, v in dict(source.unet.config).items() if k in DDPM_CIFAR10_UNET}
    for key, value in DDPM_CIFAR10_UNET.items():
        if not key.startswith("_"):
            expected = tuple(value) if isinstance(value, list) else value
            got = tuple(unet_config[key]) if isinstance(unet_config[key], (list, tuple)) else unet_config[key]
            assert got == expected, key
    assert isinstance(source.scheduler, DDPMScheduler)
    assert 35_000_000 < sum(p.numel() for p in source.unet.parameters()) < 36_500_000

    classifier = load_pyautoattack_resnet18()
    data = load_labelled_images("foolbox-cifar10", "test")
    assert data.images.shape == (20, 3, 32, 32)
    with torch.no_grad():
        assert (classifier(data.images).logits.argmax(1) == data.labels).all()  # the real classifier, 20/20

    guidance = GuidanceModel(in_channels=3, sample_size=32, num_classes=10, block_out_channels=(16, 32),
                             feature_dim=32)
    pipe = AdversarialGuidedPurificationPipeline(
        unet=source.unet, scheduler=DDIMScheduler.from_config(source.scheduler.config), guidance=guidance,
        classifier=classifier, strength=0.07, num_inference_steps=2, guidance_scale=10.0)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(data.images, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (20, 3, 32, 32) and out.images.min() >= 0 and out.images.max() <= 1
    assert out.logits.shape == (20, 10) and out.labels.shape == (20,)
    assert set(out.labels.tolist()) <= set(range(10))

    pipe.save_pretrained(tmp_path / "agdm-cifar10")
    index = json.loads((tmp_path / "agdm-cifar10" / "model_index.json").read_text())
    assert index["classifier"] == ["diffusers_agdm", "CifarResNet"]
    from diffusers import DiffusionPipeline

    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "agdm-cifar10")
    assert isinstance(reloaded.classifier, CifarResNet)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.classifier(data.images[:4]).logits, classifier(data.images[:4]).logits)
