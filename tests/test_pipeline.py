import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMScheduler
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


def _reference_unguided_purification(pipe, images, timesteps, seed):
    """DiffPure-style purification written from scratch: noise to `timesteps[0]`, then plain reverse steps through
    `timesteps` and from the last one to the clean sample. DDPM runs through Diffusers' scheduler with these custom
    timesteps; DDIM (eta 0) is written out, since its scheduler only takes one fixed stride.

    It follows the pipeline's documented noise protocol: the starting noise, then one seed per step, all drawn
    from the caller's generator."""
    scheduler, unet = pipe.scheduler, pipe.unet
    abar = scheduler.alphas_cumprod
    generator = _gen(seed)
    x0 = images * 2 - 1
    noise = randn_tensor(x0.shape, generator=generator)
    seeds = torch.randint(0, 2**62, (len(timesteps), 1), generator=generator)
    x = abar[timesteps[0]].sqrt() * x0 + (1 - abar[timesteps[0]]).sqrt() * noise
    if isinstance(scheduler, DDPMScheduler):
        scheduler = DDPMScheduler.from_config(scheduler.config)
        scheduler.set_timesteps(timesteps=list(timesteps))
    for i, t in enumerate(timesteps):
        eps = unet(x, torch.tensor(t)).sample
        if isinstance(scheduler, DDPMScheduler):
            x = scheduler.step(eps, t, x, generator=_gen(int(seeds[i, 0]))).prev_sample
            continue
        a_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
        pred_x0 = ((x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()).clamp(-1, 1)  # clip_sample=True
        x = a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * eps
    return ((x + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("kind, timesteps", [("ddpm", (30, 15, 0)), ("ddim", (30, 16, 0))])
def test_scale_zero_equals_reference_unguided_loop(kind, timesteps):
    """On the 100-step dummy schedule strength 0.3 starts at t = 30; DDPM spreads 3 steps evenly to 0, DDIM takes
    the strides it can (100 // n: 14 or 16, not 15)."""
    pipe = dummy_pipeline(kind)
    x = dummy_images(3)
    assert pipe.get_timesteps(3, 0.3).tolist() == list(timesteps)
    with torch.no_grad():
        expected = _reference_unguided_purification(pipe, x, timesteps, seed=11)
        got_scale0 = pipe(x, strength=0.3, num_inference_steps=3, guidance="latent", guidance_scale=0.0,
                          generator=_gen(11), output_type="pt").images
        got_none = pipe(x, strength=0.3, num_inference_steps=3, guidance="none",
                        generator=_gen(11), output_type="pt").images
    torch.testing.assert_close(got_scale0, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_none, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("guidance", ["latent", "pixel"])
def test_guidance_changes_the_purified_image(guidance):
    pipe = dummy_pipeline()
    x = dummy_images()
    plain = pipe(x, guidance="none", generator=_gen(), output_type="pt").images
    scale = {"guidance_scale" if guidance == "latent" else "pixel_guidance_scale": 50.0}
    guided = pipe(x, guidance=guidance, generator=_gen(), output_type="pt", **scale).images
    assert (plain - guided).abs().max() > 1e-3


def test_pixel_guidance_pulls_towards_the_input():
    pipe = dummy_pipeline()
    x = dummy_images(4)
    dist = {}
    for scale in (0.0, 20.0):
        out = pipe(x, guidance="pixel", pixel_guidance_scale=scale, generator=_gen(), output_type="pt").images
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


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.35, 0.71, 1.0])
def test_strength_names_the_first_timestep_whatever_the_steps(kind, strength):
    """t* = round(strength x T) for every number of steps the schedule can hold (issue: 0.35 used to start at 306
    with 10 DDIM steps, and at 999 when the steps outnumbered t*)."""
    pipe = dummy_pipeline(kind)
    t_star = min(round(strength * 100), 99)
    for steps in sorted(n for n in {1, 2, 3, 5, 10, t_star // 2, t_star, t_star + 1} if 1 <= n <= t_star + 1):
        ts = pipe.get_timesteps(steps, strength).tolist()
        assert ts[0] == t_star and len(ts) == steps
        assert all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] >= 0
        assert pipe.resolve_settings(strength=strength, num_inference_steps=steps).first_timestep == t_star
        if kind == "ddpm":
            assert ts[-1] == 0 or steps == 1


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_purification_really_starts_at_t_star(kind):
    """The noised input the first step sees is the input diffused to round(strength x T), for several step counts."""
    pipe = dummy_pipeline(kind)
    x = dummy_images(2)
    for steps in (1, 4, 9):
        seen = []
        handle = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(int(args[1])))
        try:
            pipe(x, strength=0.4, num_inference_steps=steps, guidance="none", generator=_gen(), output_type="pt")
        finally:
            handle.remove()
        assert seen[0] == 40 and len(seen) == steps


def test_full_ddpm_chain_from_t_star():
    pipe = dummy_pipeline("ddpm")
    assert pipe.get_timesteps(strength=0.3, num_inference_steps=31).tolist() == list(range(30, -1, -1))


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_more_steps_than_t_star_allows_raises(kind):
    pipe = dummy_pipeline(kind)
    with pytest.raises(ValueError, match=r"strength=0.1 .*t=10 .*at most 11 steps.*num_inference_steps=100"):
        pipe.get_timesteps(100, 0.1)
    with pytest.raises(ValueError, match="num_inference_steps=12"):
        pipe(dummy_images(), strength=0.1, num_inference_steps=12, guidance="none", output_type="pt")


def test_the_issue_example_raises_on_a_1000_step_schedule():
    from diffusers_agdm.utils.schedule import purification_timesteps

    with pytest.raises(ValueError, match=r"strength=0.1 .*t=100 .*num_inference_steps=1000"):
        purification_timesteps(0.1, 1000, 1000)
    assert purification_timesteps(0.35, 10, 1000, fixed_stride=True)[0] == 350


def test_describing_the_settings_leaves_the_scheduler_alone():
    pipe = dummy_pipeline("ddim")
    pipe.scheduler.set_timesteps(7)
    before = (pipe.scheduler.num_inference_steps, pipe.scheduler.timesteps.clone())
    pipe.resolve_settings(strength=0.5, num_inference_steps=4)
    pipe.get_timesteps(3, 0.2)
    pipe(dummy_images(), guidance="none", generator=_gen(), output_type="pt")  # runs on a private copy
    assert pipe.scheduler.num_inference_steps == before[0] and torch.equal(pipe.scheduler.timesteps, before[1])


def test_callback_on_step_end_sees_every_step_and_collects_the_trajectory():
    pipe = dummy_pipeline("ddpm")
    x = dummy_images(2)
    trajectory, steps = [], []

    def collect(p, i, t, tensors):
        assert p is pipe and set(tensors) == {"latents"}
        trajectory.append(tensors["latents"].clone())
        steps.append((i, int(t)))
        return tensors

    out = pipe(x, strength=0.3, num_inference_steps=3, generator=_gen(), output_type="pt",
               callback_on_step_end=collect, callback_on_step_end_tensor_inputs=["latents"])
    assert steps == list(enumerate(pipe.get_timesteps(3, 0.3).tolist()))
    assert len(trajectory) == 3 and all(z.shape == x.shape for z in trajectory)
    assert not torch.equal(trajectory[0], trajectory[1])
    torch.testing.assert_close(out.images, ((trajectory[-1] + 1) / 2).clamp(0, 1))
    plain = pipe(x, strength=0.3, num_inference_steps=3, generator=_gen(), output_type="pt").images
    torch.testing.assert_close(out.images, plain, rtol=0, atol=0)  # watching changes nothing


def test_callback_can_replace_the_latents_and_bad_tensor_inputs_raise():
    pipe = dummy_pipeline()
    out = pipe(dummy_images(), generator=_gen(), output_type="pt",
               callback_on_step_end=lambda p, i, t, kw: {"latents": torch.full_like(kw["latents"], -1.0)})
    assert torch.equal(out.images, torch.zeros_like(out.images))
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(dummy_images(), output_type="pt", callback_on_step_end=lambda *a: {},
             callback_on_step_end_tensor_inputs=["noise_pred"])


def test_diffuse_is_the_forward_process_of_the_scheduler():
    from diffusers_agdm.utils import diffuse

    scheduler = dummy_scheduler("ddpm")
    x0, noise = torch.randn(2, 3, 1, 8, 8).unbind(0)
    t = torch.tensor([3, 70, 99])
    torch.testing.assert_close(diffuse(x0, noise, scheduler.alphas_cumprod, t), scheduler.add_noise(x0, noise, t))
    abar = scheduler.alphas_cumprod[50]
    torch.testing.assert_close(diffuse(x0, noise, scheduler.alphas_cumprod, 50), abar.sqrt() * x0 + (1 - abar).sqrt()
                               * noise)


def test_sample_size_helper_reads_ints_and_square_pairs():
    from types import SimpleNamespace

    from diffusers_agdm.utils import sample_size

    assert sample_size(SimpleNamespace(sample_size=28)) == 28
    assert sample_size({"sample_size": [32, 32]}) == 32
    assert dummy_pipeline().sample_size == 8
    with pytest.raises(ValueError, match="square"):
        sample_size(SimpleNamespace(sample_size=(32, 16)))


def test_call_docstring_carries_the_runnable_example():
    import doctest

    from diffusers_agdm import (
        AdversarialGuidedPurificationPipeline,
        AdversarialGuidedPurificationPipelineOutput,
        AdversarialPurificationPipelineOutput,
    )

    doc = AdversarialGuidedPurificationPipeline.__call__.__doc__
    assert ">>> pipe = AdversarialGuidedPurificationPipeline(" in doc
    assert AdversarialPurificationPipelineOutput is AdversarialGuidedPurificationPipelineOutput
    code = "\n".join(line for line in doc.splitlines() if "```" not in line)  # the fences end a doctest's output
    test = doctest.DocTestParser().get_doctest(code, {}, "example", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries >= 8
