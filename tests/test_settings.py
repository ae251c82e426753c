import dataclasses
import json
from unittest import mock

import pytest
import torch

from diffusers_agdm import GuidanceSettings, PurificationSettings
from dummies import dummy_images, dummy_pipeline


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_resolve_settings_fills_from_config_and_computes_t_star():
    pipe = dummy_pipeline("ddpm", strength=0.4, num_inference_steps=4, guidance_scale=6.0, pixel_guidance_scale=2.0)
    settings = pipe.resolve_settings()
    assert isinstance(settings, PurificationSettings)
    assert (settings.strength, settings.num_inference_steps, settings.first_timestep) == (0.4, 4, 40)
    assert settings.timesteps == (40, 27, 13, 0)
    assert settings.guidance == GuidanceSettings(mode="latent", scale=6.0, feature_weight=1.0, class_guidance=True,
                                                 target="diffused")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.strength = 0.5


def test_each_mode_defaults_to_its_own_scale():
    pipe = dummy_pipeline(guidance_scale=6.0, pixel_guidance_scale=2.0)
    assert pipe.resolve_settings(guidance="latent").guidance.scale == 6.0
    assert pipe.resolve_settings(guidance="pixel").guidance.scale == 2.0
    assert pipe.resolve_settings(guidance="pixel", pixel_guidance_scale=0.5).guidance.scale == 0.5
    assert pipe.resolve_settings(guidance="none").guidance.scale == 0.0


def test_guidance_scale_with_pixel_guidance_points_to_pixel_guidance_scale():
    pipe = dummy_pipeline()
    with pytest.raises(ValueError, match="for guidance='pixel' pass `pixel_guidance_scale`"):
        pipe(dummy_images(), guidance="pixel", guidance_scale=10.0, output_type="pt")
    with pytest.raises(ValueError, match="pixel_guidance_scale"):
        pipe.purify(dummy_images(), guidance="pixel", guidance_scale=10.0)
    with pytest.raises(ValueError, match="for guidance='latent' pass `guidance_scale`"):
        pipe.resolve_settings(guidance="latent", pixel_guidance_scale=1.0)
    with pytest.raises(ValueError, match="`pixel_guidance_scale` must be a finite number >= 0"):
        pipe.resolve_settings(guidance="pixel", pixel_guidance_scale=-1.0)


def test_replace_revalidates_and_recomputes_timesteps():
    settings = dummy_pipeline("ddim").resolve_settings(strength=0.3, num_inference_steps=3)
    other = settings.replace(strength=0.5)
    assert other.first_timestep == 50 and other.num_inference_steps == 3 and settings.first_timestep == 30
    with pytest.raises(ValueError, match="strength"):
        settings.replace(strength=1.5)
    with pytest.raises(ValueError, match="at most 11 steps"):
        settings.replace(strength=0.1, num_inference_steps=20)
    with pytest.raises(ValueError, match="guidance_scale"):
        settings.replace(guidance=dataclasses.replace(settings.guidance, scale=float("nan")))
    with pytest.raises(ValueError, match="do not match"):
        PurificationSettings(0.3, 3, settings.guidance, num_train_timesteps=100, timesteps=(30, 20, 0))


def test_to_dict_is_json_ready_and_round_trips():
    settings = dummy_pipeline().resolve_settings(guidance="pixel", pixel_guidance_scale=2.5)
    data = json.loads(json.dumps(settings.to_dict()))
    assert data["first_timestep"] == settings.first_timestep and data["guidance"]["scale"] == 2.5
    assert PurificationSettings.from_dict(data) == settings


def test_as_overrides_resolves_back_to_the_same_settings():
    pipe = dummy_pipeline()
    for mode in ("latent", "pixel", "none"):
        settings = pipe.resolve_settings(guidance=mode, strength=0.2, num_inference_steps=2)
        assert pipe.resolve_settings(**settings.as_overrides()) == settings


def test_purify_uses_given_settings_as_is():
    pipe = dummy_pipeline()
    x = dummy_images()
    settings = pipe.resolve_settings(guidance="pixel", pixel_guidance_scale=3.0)
    expected = pipe.purify(x, guidance="pixel", pixel_guidance_scale=3.0, generator=_gen())
    with mock.patch.object(type(pipe), "resolve_settings", side_effect=AssertionError("re-resolved")):
        got = pipe.purify(x, settings=settings, generator=_gen())
        called = pipe(x, settings=settings, generator=_gen(), output_type="pt").images
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(called, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="either `settings` or overrides"):
        pipe.purify(x, settings=settings, strength=0.2)


def test_defended_classifier_resolves_once_and_holds_the_settings():
    pipe = dummy_pipeline()
    defended = pipe.defended_classifier(seed=0, guidance="latent", guidance_scale=2.0)
    assert defended.settings.guidance.scale == 2.0 and defended.purify_kwargs["guidance"] == "latent"
    with mock.patch.object(type(pipe), "resolve_settings", side_effect=AssertionError("re-resolved")):
        defended(dummy_images())
        defended(dummy_images())
    given = pipe.resolve_settings(guidance="none")
    assert pipe.defended_classifier(settings=given).settings is given


def test_settings_for_another_schedule_are_refused():
    settings = dummy_pipeline("ddpm").resolve_settings()
    with pytest.raises(ValueError, match="resolved for another schedule"):
        dummy_pipeline("ddim").purify(dummy_images(), settings=settings)


def test_latent_settings_need_a_guidance_model():
    from diffusers_agdm import AdversarialGuidedPurificationPipeline
    from dummies import dummy_scheduler, dummy_unet

    settings = dummy_pipeline().resolve_settings(guidance="latent")
    bare = AdversarialGuidedPurificationPipeline(unet=dummy_unet(), scheduler=dummy_scheduler())
    with pytest.raises(ValueError, match="needs a guidance model"):
        bare.purify(dummy_images(), settings=settings)
