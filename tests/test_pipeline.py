import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from diffusers_agdm.guided_step import GuidanceSettings, guidance_gradient, noise_to_output_factor
from dummies import dummy_images, dummy_pipeline, dummy_scheduler


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("guidance", ["latent", "pixel", "none"])
def test_same_generator_same_output(kind, guidance):
    pipe = dummy_pipeline(kind)
    x = dummy_images()
    a = pipe(x, guidance=guidance, generator=_gen(3), output_type="pt")
    b = pipe(x, guidance=guidance, generator=_gen(3), output_type="pt")
    c = pipe(x, guidance=guidance, generator=_gen(4), output_type="pt")
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == x.shape and a.labels.shape == (2,)
    assert a.images.min() >= 0 and a.images.max() <= 1


def _reference_unguided_purification(pipe, images, strength, steps, seed):
    """DiffPure-style purification written from scratch: noise to t*, then the scheduler's plain reverse steps.

    It follows the pipeline's documented noise protocol: the starting noise, then one seed per step, all drawn
    from the caller's generator."""
    scheduler, unet = pipe.scheduler, pipe.unet
    total = round(steps / strength)
    scheduler.set_timesteps(total)
    timesteps = scheduler.timesteps[total - steps:]
    generator = _gen(seed)
    x0 = images * 2 - 1
    noise = randn_tensor(x0.shape, generator=generator)
    seeds = torch.randint(0, 2**62, (steps, 1), generator=generator)
    x = scheduler.add_noise(x0, noise, timesteps[:1])
    for i, t in enumerate(timesteps):
        eps = unet(x, t).sample
        x = scheduler.step(eps, t, x, generator=_gen(int(seeds[i, 0]))).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_scale_zero_equals_reference_unguided_loop(kind):
    pipe = dummy_pipeline(kind)
    x = dummy_images(3)
    with torch.no_grad():
        expected = _reference_unguided_purification(pipe, x, strength=0.3, steps=3, seed=11)
        got_scale0 = pipe(x, strength=0.3, num_inference_steps=3, guidance="latent", guidance_scale=0.0,
                          generator=_gen(11), output_type="pt").images
        got_none = pipe(x, strength=0.3, num_inference_steps=3, guidance="none", guidance_scale=7.0,
                        generator=_gen(11), output_type="pt").images
    torch.testing.assert_close(got_scale0, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_none, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("guidance", ["latent", "pixel"])
def test_guidance_changes_the_purified_image(guidance):
    pipe = dummy_pipeline()
    x = dummy_images()
    plain = pipe(x, guidance="none", generator=_gen(), output_type="pt").images
    guided = pipe(x, guidance=guidance, guidance_scale=50.0, generator=_gen(), output_type="pt").images
    assert (plain - guided).abs().max() > 1e-3


def test_pixel_guidance_pulls_towards_the_input():
    pipe = dummy_pipeline()
    x = dummy_images(4)
    dist = {}
    for scale in (0.0, 20.0):
        out = pipe(x, guidance="pixel", guidance_scale=scale, generator=_gen(), output_type="pt").images
        dist[scale] = (out - x).pow(2).sum().item()
    assert dist[20.0] < dist[0.0]


def test_guidance_gradient_pixel_mode_is_the_gradient_of_the_pixel_objective():
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    ref = torch.randn(2, 1, 8, 8)
    settings = GuidanceSettings(mode="pixel", scale=1.0, feature_weight=0.7)
    (expected,) = torch.autograd.grad(-0.7 * (x - ref).pow(2).sum(), x)
    torch.testing.assert_close(guidance_gradient(None, x, 5, ref, None, settings), expected)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_noise_correction_in_other_parametrisations_matches_epsilon(prediction_type):
    """A guided step in v- or x0-parametrisation must land where the epsilon-parametrised guided step lands."""
    torch.manual_seed(0)
    eps_sched = dummy_scheduler("ddim", "epsilon", clip_sample=False)
    other = dummy_scheduler("ddim", prediction_type, clip_sample=False)
    for s in (eps_sched, other):
        s.set_timesteps(10)
    t = eps_sched.timesteps[3]
    abar = eps_sched.alphas_cumprod[t]
    x_t, eps, delta = torch.randn(3, 2, 1, 4, 4).unbind(0)
    x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
    out = (abar.sqrt() * eps - (1 - abar).sqrt() * x0) if prediction_type == "v_prediction" else x0
    factor = noise_to_output_factor(prediction_type, abar.reshape(1))
    expected = eps_sched.step(eps + delta, t, x_t).prev_sample
    got = other.step(out + factor * delta, t, x_t).prev_sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_pipeline_runs_with_other_prediction_types(prediction_type):
    pipe = dummy_pipeline("ddpm", prediction_type)
    out = pipe(dummy_images(), generator=_gen(), output_type="pt")
    assert torch.isfinite(out.images).all()


def test_output_types_and_inputs():
    pipe = dummy_pipeline()
    x = dummy_images(2)
    as_np = x.permute(0, 2, 3, 1).numpy()
    pil = [PIL.Image.fromarray((a[..., 0] * 255).round().astype(np.uint8), mode="L") for a in as_np]
    out_pt = pipe(x, generator=_gen(), output_type="pt")
    out_np = pipe(as_np, generator=_gen(), output_type="np")
    out_pil = pipe(pil, generator=_gen(), output_type="pil")
    assert isinstance(out_np.images, np.ndarray) and out_np.images.shape == (2, 8, 8, 1)
    np.testing.assert_allclose(out_np.images, out_pt.images.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert len(out_pil.images) == 2 and isinstance(out_pil.images[0], PIL.Image.Image)
    images, logits, labels = pipe(x, generator=_gen(), output_type="pt", return_dict=False)
    torch.testing.assert_close(logits, out_pt.logits)
    single = pipe(x[0], generator=_gen(), output_type="pt")  # one (C, H, W) tensor
    assert single.images.shape == (1, 1, 8, 8)


def test_without_classifier_no_logits():
    pipe = dummy_pipeline(with_classifier=False)
    out = pipe(dummy_images(), generator=_gen(), output_type="pt")
    assert out.logits is None and out.labels is None
    with pytest.raises(ValueError, match="classifier"):
        pipe.classify(dummy_images())


def test_classify_and_defended_classifier_agree_with_call():
    pipe = dummy_pipeline()
    x = dummy_images(3)
    labels = pipe.classify(x, generator=_gen(5)).labels
    purified = pipe.purify(x, generator=_gen(5))
    torch.testing.assert_close(pipe.classifier_logits(purified).argmax(-1), labels)
    defended = pipe.defended_classifier(seed=0)
    assert isinstance(defended, torch.nn.Module) and len(list(defended.parameters())) > 0
    logits_a = defended(x)
    defended.reseed(0)
    torch.testing.assert_close(defended(x), logits_a)
    assert logits_a.shape == (3, 4)


def test_timesteps_follow_the_img2img_convention():
    pipe = dummy_pipeline("ddpm")
    ts = pipe.get_timesteps(strength=0.3, num_inference_steps=30)  # 100-step schedule: the full chain from t=29
    assert ts.tolist() == list(range(29, -1, -1))
    ts = pipe.get_timesteps(strength=0.2, num_inference_steps=5)
    assert len(ts) == 5 and ts[-1] == 0 and ts[0] < 20
