"""A `transformers` image-classification model as the pipeline's classifier, with its image processor."""

import pytest
import torch
from diffusers import DiffusionPipeline
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from diffusers_agdm import AdversarialGuidedPurificationPipeline
from dummies import CLASSES, dummy_guidance, dummy_images, dummy_scheduler, dummy_unet


def tiny_vit(num_labels=CLASSES):
    torch.manual_seed(3)
    config = ViTConfig(image_size=16, patch_size=8, num_channels=1, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=16, num_labels=num_labels)
    processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5], image_std=[0.25])
    return ViTForImageClassification(config).eval(), processor


def test_transformers_classifier_with_processor_round_trip(tmp_path):
    vit, processor = tiny_vit()
    pipe = AdversarialGuidedPurificationPipeline(unet=dummy_unet(), scheduler=dummy_scheduler(),
                                                 guidance=dummy_guidance(), classifier=vit,
                                                 feature_extractor=processor, strength=0.3, num_inference_steps=2)
    pipe.set_progress_bar_config(disable=True)
    x = dummy_images(2)
    out = pipe(x, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.logits.shape == (2, CLASSES)
    # the processor's size and normalisation are applied, differentiably
    expected = vit(pixel_values=(torch.nn.functional.interpolate(out.images, size=(16, 16), mode="bilinear",
                                                                 align_corners=False) - 0.5) / 0.25).logits
    torch.testing.assert_close(out.logits, expected)
    x.requires_grad_(True)
    logits = pipe.defended_classifier(seed=0)(x)
    (grad,) = torch.autograd.grad(logits.sum(), x)
    assert grad.abs().sum() > 0

    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.classifier, ViTForImageClassification)
    assert isinstance(loaded.feature_extractor, ViTImageProcessor)
    loaded.set_progress_bar_config(disable=True)
    again = loaded(dummy_images(2), generator=torch.Generator().manual_seed(0), output_type="pt")
    torch.testing.assert_close(again.logits, out.logits, rtol=0, atol=1e-5)


def test_transformers_classifier_with_other_class_count_is_rejected():
    vit, processor = tiny_vit(num_labels=CLASSES + 3)
    with pytest.raises(ValueError, match=f"classifier predicts {CLASSES + 3} classes"):
        AdversarialGuidedPurificationPipeline(unet=dummy_unet(), scheduler=dummy_scheduler(),
                                              guidance=dummy_guidance(), classifier=vit)
