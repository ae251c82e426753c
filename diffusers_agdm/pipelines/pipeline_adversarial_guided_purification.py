"""AdversarialGuidedPurificationPipeline: diffusion purification steered by an adversarially trained guidance network."""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from torch import nn

from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..guided_step import GuidanceSettings, GuidedReverseStep, replayed_step
from ..hub import push_pipeline_to_hub
from ..models.guidance import GuidanceModel

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import DDIMScheduler, UNet2DModel
        >>> from diffusers_agdm import AdversarialGuidedPurificationPipeline, GuidanceModel, SmallImageClassifier

        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...                    norm_num_groups=4, layers_per_block=1,
        ...                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> guidance = GuidanceModel(in_channels=1, sample_size=8, num_classes=10, block_out_channels=(8, 16),
        ...                          feature_dim=16, norm_num_groups=4)
        >>> classifier = SmallImageClassifier(in_channels=1, sample_size=8, num_classes=10, block_out_channels=(8,))
        >>> pipe = AdversarialGuidedPurificationPipeline(unet, DDIMScheduler(), guidance, classifier)

        >>> images = torch.rand(2, 1, 8, 8)  # possibly attacked, in [0, 1]
        >>> out = pipe(images, strength=0.2, num_inference_steps=5, guidance_scale=30.0,
        ...            generator=torch.Generator().manual_seed(0), output_type="pt")
        >>> out.images.shape, out.labels.shape
        (torch.Size([2, 1, 8, 8]), torch.Size([2]))
        ```
"""


@dataclass
class AdversarialPurificationPipelineOutput(BaseOutput):
    """
    Output of [`AdversarialGuidedPurificationPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): The purified images, in [0, 1].
        logits (`torch.Tensor`, *optional*): The classifier's logits on the purified images, when it has a classifier.
        labels (`torch.Tensor`, *optional*): The predicted class of each purified image, when it has a classifier.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def _classifier_num_classes(classifier) -> int | None:
    config = getattr(classifier, "config", None)
    if config is None:
        return None
    for key in ("num_classes", "num_labels"):
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value is not None:
            return int(value)
    return None


def _logits_of(output) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


class AdversarialGuidedPurificationPipeline(DiffusionPipeline):
    r"""
    Adversarial purification with a pretrained diffusion model, steered by an adversarially trained guidance network
    (AGDM, arXiv 2403.16067). The (possibly attacked) image is diffused to t* = `strength` x the training schedule,
    then denoised back with `scheduler`, each step pulled towards images whose guidance-network features match the
    input's (`guidance="latent"`). `guidance="pixel"` pulls towards the input in pixel space (GDMP-style), and
    `guidance="none"` or `guidance_scale=0` is plain DiffPure-style purification; all three share one reverse step.

    This model inherits from [`DiffusionPipeline`]: see its documentation for the generic methods (downloading,
    saving, running on a device).

    Args:
        unet ([`UNet2DModel`]): The pretrained, frozen denoiser (epsilon-, v- or sample-prediction).
        scheduler ([`SchedulerMixin`]): A scheduler with `add_noise` and `step`, such as [`DDPMScheduler`] or
            [`DDIMScheduler`].
        guidance ([`GuidanceModel`], *optional*): The guidance network phi; needed for `guidance="latent"`.
        classifier (*optional*): The downstream classifier on [0, 1] images: a [`SmallImageClassifier`] or a
            `transformers` image-classification model (with `feature_extractor` for its normalisation).
        feature_extractor (*optional*): A `transformers` image processor whose `image_mean`/`image_std` (and `size`)
            the classifier expects.
        strength, num_inference_steps, guidance_scale, guidance_mode, feature_weight, class_guidance,
        guidance_target, eta: The purification defaults, saved in `model_index.json` so that a published pipeline
            carries the settings it was tuned and evaluated with. Each can be overridden per call.
        pixel_guidance_scale: The default scale of `guidance="pixel"` (the GDMP-style baseline); a pixel distance
            needs another scale than the latent one, so the baseline keeps its own tuned value.
    """

    model_cpu_offload_seq = "guidance->unet->classifier"
    _optional_components = ["guidance", "classifier", "feature_extractor"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        guidance: GuidanceModel | None = None,
        classifier=None,
        feature_extractor=None,
        strength: float = 0.1,
        num_inference_steps: int = 10,
        guidance_scale: float = 30.0,
        guidance_mode: str = "latent",
        pixel_guidance_scale: float = 1.0,
        feature_weight: float = 1.0,
        class_guidance: bool = True,
        guidance_target: str = "diffused",
        eta: float = 0.0,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, guidance=guidance, classifier=classifier,
                              feature_extractor=feature_extractor)
        self.register_to_config(strength=strength, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, guidance_mode=guidance_mode,
                                pixel_guidance_scale=pixel_guidance_scale,
                                feature_weight=feature_weight, class_guidance=class_guidance,
                                guidance_target=guidance_target, eta=eta)
        self._check_components()
        in_channels = unet.config.in_channels
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False, do_normalize=False,
                                                 do_convert_rgb=in_channels == 3,
                                                 do_convert_grayscale=in_channels == 1)

    # ------------------------------------------------------------------ checks
    def _check_components(self):
        unet_cfg = self.unet.config
        if not hasattr(self.scheduler, "add_noise") or not hasattr(self.scheduler, "alphas_cumprod"):
            raise ValueError(f"{type(self.scheduler).__name__} has no `add_noise`/`alphas_cumprod`; purification "
                             "needs a variance-preserving scheduler such as DDPMScheduler or DDIMScheduler.")
        if self.guidance is not None:
            g = self.guidance.config
            if (g.in_channels, g.sample_size) != (unet_cfg.in_channels, self._sample_size()):
                raise ValueError(f"The guidance model sees {g.in_channels}x{g.sample_size}x{g.sample_size} images "
                                 f"but the UNet works on {unet_cfg.in_channels}x{self._sample_size()}x"
                                 f"{self._sample_size()}.")
        if self.classifier is not None and self.guidance is not None:
            n_clf, n_guid = _classifier_num_classes(self.classifier), self.guidance.config.num_classes
            if n_clf is not None and n_clf != n_guid:
                raise ValueError(f"The classifier predicts {n_clf} classes but the guidance model {n_guid}; their "
                                 "labels must match.")

    def _sample_size(self) -> int:
        size = self.unet.config.sample_size
        return size if isinstance(size, int) else size[0]

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a `ValueError` naming the problem unless `images` is a (B, C, H, W) float batch in [0, 1]."""
        if not torch.is_tensor(images):
            raise ValueError(f"Expected a torch.Tensor batch, got {type(images).__name__}.")
        if not images.is_floating_point():
            raise ValueError(f"Images must be floating point in [0, 1], got dtype {images.dtype}.")
        if images.ndim != 4:
            raise ValueError(f"Images must have shape (batch, channels, height, width), got {tuple(images.shape)}.")
        if images.shape[0] == 0:
            raise ValueError("The image batch is empty.")
        channels, size = self.unet.config.in_channels, self._sample_size()
        if images.shape[1] != channels:
            raise ValueError(f"The UNet expects {channels}-channel images, got {images.shape[1]} channels.")
        if tuple(images.shape[2:]) != (size, size):
            raise ValueError(f"The UNet expects {size}x{size} images, got {images.shape[2]}x{images.shape[3]}.")
        if not torch.isfinite(images).all():
            raise ValueError("Images contain NaN or inf values.")
        lo, hi = images.min().item(), images.max().item()
        if lo < 0 or hi > 1:
            raise ValueError(f"Images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}].")

    def resolve_settings(self, strength=None, num_inference_steps=None, guidance=None, guidance_scale=None,
                         feature_weight=None, class_guidance=None, guidance_target=None):
        """Fill unset purification arguments from the pipeline's config and validate them all."""
        cfg = self.config
        strength = cfg.strength if strength is None else strength
        num_inference_steps = cfg.num_inference_steps if num_inference_steps is None else num_inference_steps
        if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"`strength` must be in (0, 1], got {strength!r}.")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        mode = cfg.guidance_mode if guidance is None else guidance
        if guidance_scale is None:
            guidance_scale = cfg.get("pixel_guidance_scale", cfg.guidance_scale) if mode == "pixel" \
                else cfg.guidance_scale
        settings = GuidanceSettings(
            mode=mode,
            scale=guidance_scale,
            feature_weight=cfg.feature_weight if feature_weight is None else feature_weight,
            class_guidance=cfg.class_guidance if class_guidance is None else class_guidance,
            target=cfg.guidance_target if guidance_target is None else guidance_target,
        )
        settings.validate(has_guidance_model=self.guidance is not None)
        return strength, num_inference_steps, settings

    # ------------------------------------------------------------------ schedule
    def get_timesteps(self, strength: float, num_inference_steps: int, device=None) -> torch.Tensor:
        """
        The reverse-process timesteps: `num_inference_steps` steps spread evenly over [0, t*], t* = `strength` x
        `num_train_timesteps` (the img2img convention, so `strength=0.1, num_inference_steps=100` on a 1000-step
        DDPM is DiffPure's full chain from t = 99). Returns them highest first; x is noised to the first one.
        """
        total = max(int(round(num_inference_steps / strength)), num_inference_steps)
        total = min(total, self.scheduler.config.num_train_timesteps)
        self.scheduler.set_timesteps(total, device=device)
        order = getattr(self.scheduler, "order", 1)
        start = max(total - num_inference_steps, 0) * order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return self.scheduler.timesteps[start:]

    @staticmethod
    def _draw_step_seeds(generator, num_steps: int, batch_size: int) -> torch.Tensor:
        """One seed per reverse step (and per image for a list of generators), so a step can be replayed exactly."""
        high = 2**62
        if generator is None:
            return torch.randint(0, high, (num_steps, 1))
        if isinstance(generator, list):
            if len(generator) != batch_size:
                raise ValueError(f"Got {len(generator)} generators for a batch of {batch_size} images.")
            return torch.stack([torch.randint(0, high, (num_steps,), generator=g, device=g.device).cpu()
                                for g in generator], dim=1)
        return torch.randint(0, high, (num_steps, 1), generator=generator, device=generator.device).cpu()

    @staticmethod
    def _step_generator(seeds: torch.Tensor, device):
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        return generators if len(generators) > 1 else generators[0]

    # ------------------------------------------------------------------ the differentiable core
    def purify(
        self,
        images: torch.Tensor,
        strength: float | None = None,
        num_inference_steps: int | None = None,
        guidance: str | None = None,
        guidance_scale: float | None = None,
        feature_weight: float | None = None,
        class_guidance: bool | None = None,
        guidance_target: str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        gradient_checkpointing: bool = False,
        show_progress_bar: bool = False,
    ) -> torch.Tensor:
        r"""
        Purify a batch of images: diffuse to t*, then run the (guided) reverse process. Differentiable end to end
        when called with gradients enabled (adaptive attacks): through the forward noising, every reverse step, the
        guidance gradient itself (second order through the guidance network) and the reference x'_t.

        Args:
            images (`torch.Tensor` of shape `(B, C, H, W)`): Images in [0, 1] (the attacker's space).
            strength (`float`, *optional*): t* as a fraction of the training schedule, in (0, 1].
            num_inference_steps (`int`, *optional*): Reverse steps from t* to 0.
            guidance (`str`, *optional*): `"latent"`, `"pixel"` or `"none"`.
            guidance_scale (`float`, *optional*): The guidance scale s (0 = unguided).
            feature_weight (`float`, *optional*): lambda, the weight of the distance term.
            class_guidance (`bool`, *optional*): Add the class term log p_phi(y_hat | x_t) (latent mode).
            guidance_target (`str`, *optional*): x'_t is the input `"diffused"` to t, or the `"input"` itself.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Makes purification deterministic.
            gradient_checkpointing (`bool`, defaults to `False`): Recompute each reverse step in the backward pass,
                replaying the same noise, so the memory of an exact gradient does not grow with the number of steps.
                Gradients then flow to the inputs (images), not to model parameters. Needs a scheduler whose `step`
                keeps no state between calls (DDPM, DDIM).
            show_progress_bar (`bool`, defaults to `False`): Show a progress bar over the reverse steps.

        Returns:
            `torch.Tensor`: The purified images in [0, 1], same shape as `images`.
        """
        strength, num_inference_steps, settings = self.resolve_settings(
            strength, num_inference_steps, guidance, guidance_scale, feature_weight, class_guidance, guidance_target)
        self.check_images(images)
        if gradient_checkpointing and not isinstance(self.scheduler, (DDPMScheduler, DDIMScheduler)):
            raise ValueError(f"Per-step gradient checkpointing replays scheduler steps, which needs a stateless "
                             f"scheduler (DDPMScheduler, DDIMScheduler), not {type(self.scheduler).__name__}.")
        device = self._execution_device
        dtype = self.unet.dtype
        reference = (images.to(device=device, dtype=dtype) * 2 - 1)

        timesteps = self.get_timesteps(strength, num_inference_steps, device=device)
        start_noise = randn_tensor(reference.shape, generator=generator, device=device, dtype=dtype)
        step_seeds = self._draw_step_seeds(generator, len(timesteps), reference.shape[0])
        generator_device = generator[0].device if isinstance(generator, list) else (
            generator.device if generator is not None else torch.device("cpu"))
        sample = self.scheduler.add_noise(reference, start_noise, timesteps[:1].repeat(reference.shape[0]))

        target_label = None
        if settings.active and settings.mode == "latent" and settings.class_guidance:
            with torch.no_grad():  # y_hat is a discrete choice: nothing to differentiate
                target_label = self.guidance(reference, torch.zeros_like(timesteps[:1])).logits.argmax(-1)

        step = GuidedReverseStep(self.unet, self.scheduler, self.guidance, settings, eta=self.config.eta)
        iterator = self.progress_bar(timesteps) if show_progress_bar else timesteps
        for i, t in enumerate(iterator):
            if gradient_checkpointing and torch.is_grad_enabled():
                sample = replayed_step(self._replayable(step, t, target_label, step_seeds[i], generator_device),
                                       sample, reference, start_noise)
            else:
                sample = step(sample, t, reference, start_noise, target_label,
                              self._step_generator(step_seeds[i], generator_device))
        return ((sample + 1) / 2).clamp(0, 1)

    def _replayable(self, step, t, target_label, seeds, generator_device):
        # A fresh generator from the same seed on every call, so the replay in the backward pass draws the same noise.
        def run(sample, reference, start_noise):
            return step(sample, t, reference, start_noise, target_label,
                        self._step_generator(seeds, generator_device))

        return run

    # ------------------------------------------------------------------ classification
    def classifier_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The registered classifier's logits on [0, 1] images (differentiable), applying `feature_extractor`'s
        normalisation and size for `transformers` classifiers."""
        if self.classifier is None:
            raise ValueError("This pipeline has no classifier; register one with `pipe.register_modules("
                             "classifier=...)` or pass `classifier=` to `from_pretrained`.")
        pixel_values = images
        processor = self.feature_extractor
        if processor is not None:
            size = getattr(processor, "size", None) or {}
            height, width = size.get("height"), size.get("width")
            if height and width and (height, width) != tuple(images.shape[2:]):
                pixel_values = nn.functional.interpolate(pixel_values, size=(height, width), mode="bilinear",
                                                         align_corners=False)
            if getattr(processor, "do_normalize", False):
                mean = torch.tensor(processor.image_mean, device=images.device, dtype=images.dtype)
                std = torch.tensor(processor.image_std, device=images.device, dtype=images.dtype)
                pixel_values = (pixel_values - mean[:, None, None]) / std[:, None, None]
        return _logits_of(self.classifier(pixel_values))

    @torch.no_grad()
    def classify(self, image, **kwargs) -> AdversarialPurificationPipelineOutput:
        """Purify `image` (any input `__call__` takes) and classify the result; `.labels` holds the predictions."""
        if self.classifier is None:
            raise ValueError("`classify` needs a classifier; this pipeline has none.")
        kwargs.setdefault("output_type", "pt")
        return self(image, **kwargs)

    def defended_classifier(self, seed: int | None = 0, gradient_checkpointing: bool = True, **purify_kwargs):
        """
        The whole defense as a plain `torch.nn.Module` mapping [0, 1] images to the classifier's logits, for
        torchattacks, AutoAttack and RobustBench-style code. Every call purifies with fresh noise from the module's
        own generator (seeded with `seed`), so attacks see the real stochastic defense; gradients are exact.
        """
        from .defended_classifier import PurifiedClassifier

        if self.classifier is None:
            raise ValueError("`defended_classifier` needs a classifier; this pipeline has none.")
        self.resolve_settings(**{k: v for k, v in purify_kwargs.items() if k in (
            "strength", "num_inference_steps", "guidance", "guidance_scale", "feature_weight", "class_guidance",
            "guidance_target")})
        return PurifiedClassifier(self, seed=seed, gradient_checkpointing=gradient_checkpointing, **purify_kwargs)

    # ------------------------------------------------------------------ the user-facing call
    def prepare_images(self, image) -> torch.Tensor:
        """Turn PIL images, numpy arrays (BHWC) or tensors (BCHW) in [0, 1] into a validated [0, 1] tensor batch."""
        if isinstance(image, (list, tuple)) and len(image) == 0:
            raise ValueError("The image batch is empty.")
        arrays = image if isinstance(image, (list, tuple)) else [image]
        for item in arrays:
            if isinstance(item, np.ndarray) and not np.issubdtype(item.dtype, np.floating):
                raise ValueError(f"numpy images must be floating point in [0, 1], got dtype {item.dtype}.")
            if torch.is_tensor(item) and not item.is_floating_point():
                raise ValueError(f"Images must be floating point in [0, 1], got dtype {item.dtype}.")
            if isinstance(item, np.ndarray) and item.size and (not np.isfinite(item).all()):
                raise ValueError("Images contain NaN or inf values.")
            if isinstance(item, np.ndarray) and item.size and (item.min() < 0 or item.max() > 1):
                raise ValueError(f"Images must lie in [0, 1], got values in [{item.min():.3g}, {item.max():.3g}].")
            if isinstance(item, np.ndarray) and item.ndim >= 1 and item.shape[0] == 0:
                raise ValueError("The image batch is empty.")
        if torch.is_tensor(image):
            images = image[None] if image.ndim == 3 else image
        else:
            images = self.image_processor.preprocess(image)
        self.check_images(images)
        return images

    @torch.no_grad()
    def __call__(
        self,
        image,
        strength: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance: str | None = None,
        feature_weight: float | None = None,
        class_guidance: bool | None = None,
        guidance_target: str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> AdversarialPurificationPipelineOutput | tuple:
        r"""
        Purify (and, with a classifier, classify) possibly attacked images.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them): Images in [0, 1]
                (numpy `(B, H, W, C)`, torch `(B, C, H, W)`), of the UNet's size and channels.
            strength (`float`, *optional*, defaults to `pipe.config.strength`): t* as a fraction of the training
                schedule, in (0, 1]. Larger removes stronger perturbations and more of the image's detail.
            num_inference_steps (`int`, *optional*, defaults to `pipe.config.num_inference_steps`): Reverse steps.
            guidance_scale (`float`, *optional*, defaults to `pipe.config.guidance_scale`): 0 = unguided.
            guidance (`str`, *optional*, defaults to `pipe.config.guidance_mode`): `"latent"` (AGDM), `"pixel"`
                (GDMP-style) or `"none"` (DiffPure-style).
            feature_weight, class_guidance, guidance_target: See [`~AdversarialGuidedPurificationPipeline.purify`].
            generator (`torch.Generator`, *optional*): For deterministic purification.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to `True`): Return an [`AdversarialPurificationPipelineOutput`] or a tuple.

        Returns:
            [`AdversarialPurificationPipelineOutput`] or `tuple`: purified images, plus logits and labels when the
            pipeline has a classifier.
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}.")
        images = self.prepare_images(image)
        purified = self.purify(images, strength=strength, num_inference_steps=num_inference_steps,
                               guidance=guidance, guidance_scale=guidance_scale, feature_weight=feature_weight,
                               class_guidance=class_guidance, guidance_target=guidance_target, generator=generator,
                               show_progress_bar=True)
        logits = labels = None
        if self.classifier is not None:
            logits = self.classifier_logits(purified)
            labels = logits.argmax(-1)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            out_images = purified
        else:
            out_images = purified.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                out_images = self.numpy_to_pil(out_images)
        if not return_dict:
            return (out_images,) if logits is None else (out_images, logits, labels)
        return AdversarialPurificationPipelineOutput(images=out_images, logits=logits, labels=labels)

    # ------------------------------------------------------------------ Hub
    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, model_card: str | None = None,
                    **kwargs) -> str:
        """Upload this pipeline (safetensors) with a model card to the Hub; returns the commit URL."""
        return push_pipeline_to_hub(self, repo_id, commit_message=commit_message, private=private, token=token,
                                    create_pr=create_pr, model_card=model_card)
