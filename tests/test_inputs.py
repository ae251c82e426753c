import numpy as np
import pytest
import torch

from diffusers_agdm import AdversarialGuidedPurificationPipeline
from dummies import dummy_classifier, dummy_guidance, dummy_images, dummy_pipeline, dummy_scheduler, dummy_unet


@pytest.fixture(scope="module")
def pipe():
    return dummy_pipeline()


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(2, 3, 8, 8), "1-channel images, got 3 channels"),
        (torch.rand(2, 1, 16, 16), "8x8 images, got 16x16"),
        (torch.rand(2, 1, 8, 8) * 2 - 1, r"\[0, 1\]"),
        (torch.full((1, 1, 8, 8), float("nan")), "NaN or inf"),
        (torch.full((1, 1, 8, 8), float("inf")), "NaN or inf"),
        (torch.rand(0, 1, 8, 8), "empty"),
        ([], "empty"),
        (torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8), "floating point"),
        (np.random.randint(0, 255, (2, 8, 8, 1)).astype(np.uint8), "floating point"),
        (np.full((1, 8, 8, 1), 2.0, dtype=np.float32), r"\[0, 1\]"),
        (torch.rand(2, 2, 1, 8, 8), "shape"),
    ],
)
def test_bad_images_raise(pipe, images, message):
    with pytest.raises(ValueError, match=message):
        pipe(images, output_type="pt")


def test_purify_checks_images(pipe):
    with pytest.raises(ValueError, match="channels"):
        pipe.purify(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="torch.Tensor"):
        pipe.purify(np.zeros((2, 1, 8, 8), dtype=np.float32))


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, float("nan")])
def test_bad_strength(pipe, strength):
    with pytest.raises(ValueError, match="strength"):
        pipe(dummy_images(), strength=strength, output_type="pt")


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_num_inference_steps(pipe, steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(dummy_images(), num_inference_steps=steps, output_type="pt")


def test_unknown_guidance_name(pipe):
    with pytest.raises(ValueError, match="Unknown guidance 'latnet'"):
        pipe(dummy_images(), guidance="latnet", output_type="pt")
    with pytest.raises(ValueError, match="guidance_target"):
        pipe(dummy_images(), guidance_target="nowhere", output_type="pt")


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_bad_guidance_scale(pipe, scale):
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(dummy_images(), guidance_scale=scale, output_type="pt")


def test_bad_output_type(pipe):
    with pytest.raises(ValueError, match="output_type"):
        pipe(dummy_images(), output_type="latent")


def test_latent_guidance_without_guidance_model():
    pipe = AdversarialGuidedPurificationPipeline(unet=dummy_unet(), scheduler=dummy_scheduler(), guidance=None)
    with pytest.raises(ValueError, match="needs a guidance model"):
        pipe(dummy_images(), guidance="latent", output_type="pt")
    # the baselines need none
    assert pipe(dummy_images(), guidance="pixel", output_type="pt").images.shape == (2, 1, 8, 8)
    assert pipe(dummy_images(), guidance="none", output_type="pt").images.shape == (2, 1, 8, 8)


def test_classifier_and_guidance_with_different_class_counts():
    with pytest.raises(ValueError, match="classifier predicts 7 classes but the guidance model 4"):
        AdversarialGuidedPurificationPipeline(unet=dummy_unet(), scheduler=dummy_scheduler(),
                                              guidance=dummy_guidance(4), classifier=dummy_classifier(7))


def test_guidance_model_for_other_image_size():
    with pytest.raises(ValueError, match="guidance model sees 3x8x8"):
        AdversarialGuidedPurificationPipeline(unet=dummy_unet(), scheduler=dummy_scheduler(),
                                              guidance=dummy_guidance(channels=3))


def test_wrong_number_of_generators(pipe):
    with pytest.raises(ValueError, match="generators"):
        pipe(dummy_images(2), generator=[torch.Generator().manual_seed(0)] * 3, output_type="pt")


def test_list_of_generators_makes_each_image_independent_of_the_batch(pipe):
    x = dummy_images(2)
    both = pipe(x, guidance="pixel", generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
                output_type="pt").images
    second = pipe(x[1:], guidance="pixel", generator=[torch.Generator().manual_seed(2)], output_type="pt").images
    torch.testing.assert_close(both[1:], second)


def test_non_finite_output_is_refused_naming_the_scale(pipe):
    with pytest.raises(ValueError, match=r"non-finite images.*guidance scale 1e\+30 is likely too large"):
        pipe(dummy_images(), guidance_scale=1e30, output_type="pt")


def test_non_finite_output_is_refused_whatever_its_cause():
    pipe = dummy_pipeline()
    handle = pipe.unet.register_forward_hook(lambda module, args, out: type(out)(sample=out.sample * float("nan")))
    try:
        with pytest.raises(ValueError, match="non-finite images.*weights are corrupted"):
            pipe(dummy_images(), guidance="none", output_type="pt")
        with pytest.raises(ValueError, match="non-finite images"):
            pipe.purify(dummy_images(), guidance="none")
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "images, message",
    [
        ([torch.rand(1, 8, 8), torch.rand(1, 16, 16)], "8x8 images, got 16x16"),
        ([torch.rand(1, 8, 8), np.random.rand(8, 8, 1).astype(np.float32)], "one kind of image"),
        ("digit.png", "Expected a torch.Tensor, numpy array or PIL image"),
    ],
)
def test_mixed_or_unknown_inputs_raise(pipe, images, message):
    with pytest.raises(ValueError, match=message):
        pipe(images, output_type="pt")


def test_bad_generators(pipe):
    with pytest.raises(ValueError, match="Got 0 generators for a batch of 2"):
        pipe(dummy_images(2), generator=[], output_type="pt")
    with pytest.raises(ValueError, match="torch.Generator"):
        pipe(dummy_images(2), generator=0, output_type="pt")


def test_wrong_component_classes_raise():
    with pytest.raises(ValueError, match="`guidance` must be a GuidanceModel, got SmallImageClassifier"):
        AdversarialGuidedPurificationPipeline(unet=dummy_unet(), scheduler=dummy_scheduler(),
                                              guidance=dummy_classifier())
    with pytest.raises(ValueError, match="`unet` must be a UNet2DModel"):
        AdversarialGuidedPurificationPipeline(unet=dummy_guidance(), scheduler=dummy_scheduler())


@pytest.mark.parametrize("name", ["PNDMScheduler", "EulerDiscreteScheduler"])
def test_unsupported_scheduler_raises(name):
    import diffusers

    scheduler = getattr(diffusers, name)(num_train_timesteps=100)
    with pytest.raises(ValueError, match=f"{name} cannot run purification.*DDPMScheduler or DDIMScheduler"):
        AdversarialGuidedPurificationPipeline(unet=dummy_unet(), scheduler=scheduler)


@pytest.mark.parametrize("value", ["false", 0, 1.0])
def test_class_guidance_must_be_a_bool(pipe, value):
    with pytest.raises(ValueError, match="`class_guidance` must be True or False"):
        pipe(dummy_images(), class_guidance=value, output_type="pt")


# ---------------------------------------------------------------- images as users have them (one dtype scaling)
def test_pil_images_are_scaled_by_their_pixel_type(pipe):
    from PIL import Image

    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    expected = torch.from_numpy(values)[None, None]
    eight = Image.fromarray(np.round(values * 255).astype(np.uint8))
    sixteen = Image.fromarray(np.round(values * 65535).astype(np.uint16))  # mode I;16: not clipped to 0/1
    floats = Image.fromarray(values, mode="F")  # a float TIFF as PIL opens it: taken as given
    assert sixteen.mode == "I;16" and floats.mode == "F"
    for image, tolerance in ((eight, 0.5 / 255), (sixteen, 0.5 / 65535), (floats, 0)):
        torch.testing.assert_close(pipe.prepare_images(image), expected, atol=tolerance + 1e-7, rtol=0)
    rgb = Image.fromarray(np.repeat(np.round(values * 255).astype(np.uint8)[..., None], 3, -1))
    torch.testing.assert_close(pipe.prepare_images([rgb]), expected, atol=0.5 / 255 + 1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"floating-point images must lie in \[0, 1\]"):
        pipe.prepare_images(Image.fromarray(values * 2, mode="F"))


def test_prepare_user_image_resizes_pads_inverts_and_says_so():
    from PIL import Image

    from diffusers_agdm.pipelines.inputs import prepare_user_image

    paper = np.ones((300, 200), np.float32)
    paper[60:240, 90:110] = 0  # a dark upright bar on light paper, taller than wide
    tensor, notes = prepare_user_image(Image.fromarray(paper, mode="F"), 28, 1)
    assert tensor.shape == (1, 28, 28) and notes == [
        "inverted (dark digit on light background)", "resized 200x300 -> 28x28 (digit centred in a 20x20 box)"]
    assert tensor[0, :, :4].max() < 0.05 and tensor[0, 14, 13:15].min() > 0.9  # aspect kept: a bar, not a block
    assert tensor[0, 4:24, 14].min() > 0.9  # the digit fills MNIST's 20-pixel box
    mnist_like = np.zeros((28, 28), np.uint8)
    mnist_like[4:24, 12:16] = 255
    same, notes = prepare_user_image(Image.fromarray(mnist_like), 28, 1)
    assert notes == [] and torch.equal(same[0], torch.from_numpy(mnist_like / 255.0).float())  # left as it is
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[5:35, 18:22] = (200, 0, 0, 255)  # a red stroke on a transparent canvas
    colour, _ = prepare_user_image(Image.fromarray(rgba, "RGBA"), 28, 3)
    assert colour.shape == (3, 28, 28) and colour[0, 14, 14] > 0.7 and colour[1, 14, 14] < 0.1  # colour kept
    with pytest.raises(ValueError, match="digit.tif is a floating-point image"):
        prepare_user_image(np.full((8, 8), 3.0, np.float32), 28, 1, where="digit.tif")


def test_purify_reads_any_digit_a_user_has(tmp_path, capsys):
    """A real held-out digit as a 280x280 dark-on-white PNG, a 16-bit PNG and a float TIFF: each purifies, with the
    embedded default, to the digit it is (`agdm purify` used to say 8 for the first, 1 for the float 7)."""
    from PIL import Image

    from diffusers_agdm.cli import main
    from diffusers_agdm.data import load_labelled_images

    digits = load_labelled_images("foolbox-mnist", "test")
    x = digits.images[:, 0].numpy()
    files = {"paper.png": 1, "deep.png": 4, "float.tiff": 0}  # index of the digit each file holds
    paper = Image.fromarray(((1 - x[1]) * 255).astype(np.uint8)).resize((280, 280), Image.BILINEAR)
    paper.save(tmp_path / "paper.png")
    Image.fromarray(np.round(x[4] * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(x[0], mode="F").save(tmp_path / "float.tiff")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I") and Image.open(tmp_path / "float.tiff").mode == "F"
    assert main(["purify", *(str(tmp_path / f) for f in files), "--output_dir", str(tmp_path / "out"),
                 "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "paper.png: inverted (dark digit on light background), resized 280x280 -> 28x28" in printed
    for name, index in files.items():
        (line,) = [line for line in printed.splitlines() if f"{name} ->" in line]
        assert f"predicted {digits.labels[index].item()} " in line, line


def test_a_failed_purify_leaves_no_empty_output_folder(tmp_path):
    from diffusers_agdm.cli import main

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    assert main(["purify", str(bad), "--output_dir", str(tmp_path / "never")]) == 2
    float_range = tmp_path / "bright.tiff"
    from PIL import Image

    Image.fromarray(np.full((28, 28), 2.0, np.float32), mode="F").save(float_range)  # readable, out of range
    from unittest import mock

    with mock.patch("diffusers_agdm.default_pipeline.load_pipeline") as load:  # refused before the pipeline loads
        assert main(["purify", str(float_range), "--output_dir", str(tmp_path / "never")]) == 2
    load.assert_not_called()
    assert not (tmp_path / "never").exists()
    assert main(["purify", "--output_dir", str(tmp_path / "never")]) == 2  # nothing named, no --sample
    assert not (tmp_path / "never").exists()
