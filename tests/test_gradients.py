import contextlib

import pytest
import torch

from dummies import dummy_images, dummy_pipeline


def _loss(pipe, x, guidance, checkpointing=False, seed=0, with_classifier=True):
    scale = {} if guidance == "none" else {"pixel_guidance_scale" if guidance == "pixel" else "guidance_scale": 4.0}
    purified = pipe.purify(x, guidance=guidance, generator=torch.Generator().manual_seed(seed),
                           gradient_checkpointing=checkpointing, **scale)
    weights = torch.linspace(-1, 1, purified.numel(), dtype=purified.dtype).reshape(purified.shape)
    loss = (purified * weights).sum()
    if with_classifier:
        loss = loss + pipe.classifier_logits(purified)[:, 1].sum()
    return loss


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("guidance", ["latent", "pixel", "none"])
def test_purify_gradient_matches_finite_differences(kind, guidance):
    """The attack gradient is exact: forward noising, every reverse step and the guidance gradient itself (second
    order through the guidance network), against central differences in float64. The loss is a smooth function of
    the purified images: the dummy classifier's ReLU kinks would make finite differences, not the gradient, wrong."""
    pipe = dummy_pipeline(kind, clip_sample=False, strength=0.3, num_inference_steps=3).to(dtype=torch.float64)
    # keep every value inside [0, 1] after the perturbation so the final clamp is smooth here
    x = (0.25 + 0.5 * dummy_images(2, dtype=torch.float64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(_loss(pipe, x, guidance, with_classifier=False), x)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        numeric = (_loss(pipe, x + h * direction, guidance, with_classifier=False)
                   - _loss(pipe, x - h * direction, guidance, with_classifier=False)) / (2 * h)
    analytic = (grad * direction).sum()
    assert grad.abs().sum() > 0
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_second_order_term_matters():
    """Dropping the guidance gradient's own dependence on x_t (a first-order-only attack) gives a different
    gradient; the exact one is what the finite-difference test above pins down."""
    pipe = dummy_pipeline("ddpm", clip_sample=False).to(dtype=torch.float64)
    x = (0.25 + 0.5 * dummy_images(2, dtype=torch.float64)).requires_grad_(True)
    (exact,) = torch.autograd.grad(_loss(pipe, x, "latent"), x)
    import diffusers_agdm.guided_step as gs

    original = gs.guidance_gradient
    try:
        gs.guidance_gradient = lambda *a, **k: original(*a, **k).detach()
        (first_order,) = torch.autograd.grad(_loss(pipe, x, "latent"), x)
    finally:
        gs.guidance_gradient = original
    assert (exact - first_order).abs().max() > 1e-6


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("guidance", ["latent", "pixel"])
def test_checkpointed_gradients_equal_plain_gradients(kind, guidance):
    pipe = dummy_pipeline(kind)
    x = dummy_images(2).requires_grad_(True)
    (plain,) = torch.autograd.grad(_loss(pipe, x, guidance, checkpointing=False, seed=3), x)
    (ckpt,) = torch.autograd.grad(_loss(pipe, x, guidance, checkpointing=True, seed=3), x)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(ckpt, plain, rtol=1e-5, atol=1e-7)


def test_checkpointing_works_with_torch_autograd_grad_and_backward():
    pipe = dummy_pipeline("ddpm")
    defended = pipe.defended_classifier(seed=0, gradient_checkpointing=True)
    x = dummy_images(2).requires_grad_(True)
    defended(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_call_records_no_gradients():
    pipe = dummy_pipeline()
    out = pipe(dummy_images(), output_type="pt", generator=torch.Generator().manual_seed(0))
    assert not out.images.requires_grad and not out.logits.requires_grad


@pytest.mark.parametrize("target", ["diffused", "input"])
def test_one_batched_guidance_call_equals_two_separate_calls(target):
    """x_t and x'_t go through the guidance network in two calls; the older path, one batch of 2B, gives the same
    purified images and the same exact gradient (up to float rounding) for a fixed generator."""
    from diffusers_agdm.guided_step import batched_guidance_calls

    pipe = dummy_pipeline("ddim", guidance_target=target)
    x = dummy_images(3)
    outputs = []
    for batched in (False, True):
        with batched_guidance_calls() if batched else contextlib.nullcontext():
            purified = pipe.purify(x, guidance="latent", generator=torch.Generator().manual_seed(4))
            z = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(_loss(pipe, z, "latent", checkpointing=True, seed=4), z)
        outputs.append((purified, grad))
    (purified_two, grad_two), (purified_one, grad_one) = outputs
    assert grad_one.abs().sum() > 0
    torch.testing.assert_close(purified_one, purified_two, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_one, grad_two, rtol=1e-4, atol=1e-6)
    assert not torch.equal(purified_one, pipe.purify(x, guidance="none", generator=torch.Generator().manual_seed(4)))
