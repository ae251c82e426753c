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


# ------------------------------------------------------------------ the settings table


def _purification_parser(**kwargs):
    import argparse

    from diffusers_agdm.settings_table import add_purification_arguments

    parser = argparse.ArgumentParser()
    add_purification_arguments(parser, **kwargs)
    return parser


def test_the_table_builds_the_flags_the_pipeline_defaults_and_the_settings_alike():
    import inspect

    from diffusers_agdm import AdversarialGuidedPurificationPipeline
    from diffusers_agdm.settings_table import OPTIONS, UNTUNED_DEFAULTS

    parser = _purification_parser(defaults={name: option.default for name, option in OPTIONS.items()})
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert list(flags) == list(OPTIONS)  # one flag per option, named as the option
    args = parser.parse_args([])
    signature = inspect.signature(AdversarialGuidedPurificationPipeline.__init__).parameters
    call = inspect.signature(AdversarialGuidedPurificationPipeline.__call__).parameters
    for name, option in OPTIONS.items():
        assert getattr(args, name) == option.default == UNTUNED_DEFAULTS[option.key] == signature[option.key].default
        assert name in call  # every option can be set per call
    # The flags parse into what the table's type says, and a PurificationSettings built from them has the same values.
    parsed = vars(parser.parse_args(["--strength", "0.3", "--num_inference_steps", "3", "--no-class_guidance",
                                     "--guidance", "pixel", "--pixel_guidance_scale", "2", "--eta", "0.5"]))
    for name, value in parsed.items():
        assert isinstance(value, OPTIONS[name].type), name
    pipe = dummy_pipeline("ddim")
    settings = pipe.resolve_settings(**{k: v for k, v in parsed.items() if k != "guidance_scale"})
    assert (settings.strength, settings.num_inference_steps, settings.eta) == (0.3, 3, 0.5)
    assert (settings.guidance.mode, settings.guidance.scale, settings.guidance.class_guidance) == ("pixel", 2.0, False)
    expected = {k: v for k, v in parsed.items() if k != "guidance_scale"}
    assert settings.as_overrides() == expected | {"feature_weight": 1.0, "guidance_target": "diffused"}


@pytest.mark.parametrize("flag, value, message", [("--strength", "0", "> 0 and <= 1"),
                                                  ("--strength", "1.5", "> 0 and <= 1"),
                                                  ("--num_inference_steps", "0", "integer >= 1"),
                                                  ("--guidance_scale", "nan", "finite number >= 0"),
                                                  ("--eta", "-1", "finite number >= 0"),
                                                  ("--guidance", "fancy", "invalid choice")])
def test_flags_and_settings_refuse_the_same_values(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        _purification_parser().parse_args([flag, value])
    assert message in capsys.readouterr().err
    name = flag[2:]
    typed = {"num_inference_steps": int, "guidance": str}.get(name, float)(value)
    with pytest.raises(ValueError, match=message.replace("invalid choice", "choose one of")):
        dummy_pipeline("ddim").resolve_settings(**{name: typed})


def test_adding_an_option_is_one_row(monkeypatch):
    import diffusers_agdm.settings_table as table

    row = table.PurificationOption("new_weight", float, 0.5, "a new option", minimum=0)
    monkeypatch.setattr(table, "OPTIONS", {**table.OPTIONS, row.name: row})
    args = _purification_parser().parse_args(["--new_weight", "0.25"])
    assert args.new_weight == 0.25 and table.purification_overrides(args)["new_weight"] == 0.25
    with pytest.raises(ValueError, match="`new_weight` must be a finite number >= 0"):
        table.check_option("new_weight", -1.0)


def test_guidance_settings_are_validated_once_per_call():
    from diffusers_agdm import guided_step

    pipe = dummy_pipeline("ddim")
    calls = []
    original = guided_step.GuidanceSettings.__post_init__
    with mock.patch.object(guided_step.GuidanceSettings, "__post_init__",
                           lambda self: calls.append(1) or original(self)), \
            mock.patch.object(type(pipe), "check_inputs", wraps=pipe.check_inputs, autospec=True) as check_inputs:
        pipe(dummy_images(), output_type="pt", generator=_gen())
    assert len(calls) == 1 and check_inputs.call_count == 1


def test_t_star_is_one_rule_for_training_checks_and_the_pipeline():
    from diffusers_agdm.training_utils.argtypes import check_steps_fit
    from diffusers_agdm.utils.schedule import purification_timesteps, start_timestep

    # strength 1 on T = 100: t* = 99 (kept inside the schedule), so 100 steps fit and 101 do not, for both.
    assert start_timestep(1.0, 100) == 99 and len(purification_timesteps(1.0, 100, 100)) == 100
    check_steps_fit(1.0, 100, 100)
    with pytest.raises(ValueError, match="at most 100 steps"):
        purification_timesteps(1.0, 101, 100)
    with pytest.raises(ValueError, match="--num_inference_steps 101 is more than the 100 timesteps"):
        check_steps_fit(1.0, 101, 100)
    assert dummy_pipeline("ddpm").get_timesteps(3, 0.3).tolist() == list(purification_timesteps(0.3, 3, 100))


def test_return_dict_false_is_always_three_items():
    pipe = dummy_pipeline("ddim")
    images, logits, labels = pipe(dummy_images(), output_type="pt", return_dict=False, generator=_gen())
    assert logits is not None and labels.shape == (images.shape[0],)
    pipe.classifier = None
    images, logits, labels = pipe(dummy_images(), output_type="pt", return_dict=False, generator=_gen())
    assert logits is None and labels is None and images.shape[0] == 2


def test_eta_is_a_per_call_argument():
    pipe = dummy_pipeline("ddim")
    x = dummy_images()
    deterministic = pipe(x, output_type="pt", generator=_gen()).images
    assert torch.equal(pipe(x, output_type="pt", eta=0.0, generator=_gen()).images, deterministic)
    assert not torch.equal(pipe(x, output_type="pt", eta=1.0, generator=_gen()).images, deterministic)
    with pytest.raises(ValueError, match="`eta` must be a finite number >= 0"):
        pipe(x, output_type="pt", eta=-0.5)
