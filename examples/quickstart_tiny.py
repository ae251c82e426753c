"""Build an AGDM purification pipeline from tiny random components, purify a batch, save and reload it.

Runs in seconds on a CPU. With random weights the images are meaningless; the point is the API.
"""

import tempfile

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel

import diffusers_agdm  # noqa: F401  (registers the pipeline with diffusers)
from diffusers_agdm import AdversarialGuidedPurificationPipeline, GuidanceModel, SmallImageClassifier

torch.manual_seed(0)
unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(16, 32), norm_num_groups=8,
                   layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "UpBlock2D"))
guidance = GuidanceModel(in_channels=1, sample_size=28, num_classes=10, block_out_channels=(16, 32))
classifier = SmallImageClassifier(in_channels=1, sample_size=28, num_classes=10)
pipe = AdversarialGuidedPurificationPipeline(unet, DDIMScheduler(), guidance, classifier,
                                             strength=0.2, num_inference_steps=10, guidance_scale=30.0)

images = torch.rand(4, 1, 28, 28)
for mode in ("none", "pixel", "latent"):
    out = pipe(images, guidance=mode, generator=torch.Generator().manual_seed(0), output_type="pt")
    print(f"guidance={mode:6s} purified {tuple(out.images.shape)}  labels {out.labels.tolist()}")

with tempfile.TemporaryDirectory() as folder:
    pipe.save_pretrained(folder)
    reloaded = DiffusionPipeline.from_pretrained(folder)
    print("reloaded:", type(reloaded).__name__, "with", sorted(k for k, v in reloaded.components.items() if v))
