import torch

from diffusers_agdm import GuidanceModel, SmallImageClassifier
from dummies import dummy_guidance


def test_guidance_model_outputs_features_and_logits():
    phi = dummy_guidance(num_classes=5)
    out = phi(torch.randn(3, 1, 8, 8), timestep=torch.tensor([0, 5, 50]))
    assert out.features.shape == (3, 8) and out.logits.shape == (3, 5)
    features, logits = phi(torch.randn(3, 1, 8, 8), timestep=7, return_dict=False)
    assert features.shape == (3, 8) and logits.shape == (3, 5)


def test_guidance_model_depends_on_timestep():
    phi = dummy_guidance()
    x = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(phi(x, 0).logits, phi(x, 60).logits)


def test_guidance_gradient_checkpointing_gives_same_gradients():
    phi = dummy_guidance()
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    grads = []
    for enabled in (False, True):
        if enabled:
            phi.enable_gradient_checkpointing()
        (g,) = torch.autograd.grad(phi(x, 3).features.pow(2).sum(), x)
        grads.append(g)
    assert phi.is_gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1])


def test_models_save_safetensors_and_reload(tmp_path):
    phi = dummy_guidance()
    phi.save_pretrained(tmp_path / "g")
    assert (tmp_path / "g" / "diffusion_pytorch_model.safetensors").exists()
    loaded = GuidanceModel.from_pretrained(tmp_path / "g")
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(phi(x, 1).logits, loaded(x, 1).logits)

    clf = SmallImageClassifier(in_channels=1, sample_size=8, num_classes=3, block_out_channels=(4,), hidden_dim=8,
                               labels=["a", "b", "c"])
    clf.save_pretrained(tmp_path / "c")
    loaded = SmallImageClassifier.from_pretrained(tmp_path / "c")
    assert loaded.config.labels == ["a", "b", "c"]
    torch.testing.assert_close(clf(x).logits, loaded(x).logits)
