"""AdversarialGuidedPurificationPipeline: diffusion purification steered by an adversarially trained guidance
network."""

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..guided_step import GuidanceSettings, GuidedReverseStep, input_class_logits, replayed_step
from ..hub import push_pipeline_to_hub
from ..loading import check_component_folders
from ..models.guidance import GuidanceModel
from ..settings import PurificationSettings
from ..settings_table import UNTUNED_DEFAULTS, check_option, scale_option
from ..utils.diffusion import diffuse
from ..utils.models import sample_size as model_sample_size
from ..utils.schedule import is_fixed_stride, purification_timesteps, scheduler_for
from .components import COMPONENT_NAMES, check_components, logits_of
from .inputs import check_image_input, pil_images_to_tensor

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import DDIMScheduler, UNet2DModel
        >>> from diffusers_agdm import AdversarialGuidedPurificationPipeline, GuidanceModel, SmallImageClassifier

        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        ...                    norm_num_groups=4, layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...                    up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> guidance = GuidanceModel(in_channels=1, sample_size=8, num_classes=10, block_out_channels=(8, 16),
        ...                          feature_dim=16, norm_num_groups=4)
        >>> classifier = SmallImageClassifier(in_channels=1, sample_size=8, num_classes=10, block_out_channels=(8,))
        >>> pipe = AdversarialGuidedPurificationPipeline(unet, DDIMScheduler(), guidance, classifier)

        >>> images = torch.rand(2, 1, 8, 8)  # possibly attacked, in [0, 1]
        >>> out = pipe(images, strength=0.2, num_inference_steps=5, guidance_scale=30.0,
        ...            generator=torch.Generator().manual_seed(0), output_type="pt")
        >>> out.images.shape, out.labels.shape
        (torch.Size([2, 1, 8, 8]), torch.Size([2]))
        >>> pipe.resolve_settings(strength=0.2, num_inference_steps=5).first_timestep  # t* = 0.2 x 1000
        200
        ```
"""


@dataclass
class AdversarialGuidedPurificationPipelineOutput(BaseOutput):
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


AdversarialPurificationPipelineOutput = AdversarialGuidedPurificationPipelineOutput  # a shorter alias

class AdversarialGuidedPurificationPipeline(DiffusionPipeline):
    r"""
    Adversarial purification with a pretrained diffusion model, steered by an adversarially trained guidance network
    (AGDM, arXiv 2403.16067). The (possibly attacked) image is diffused to t* = round(`strength` x T) of the
    training schedule, then denoised back with `scheduler`, each step pulled towards images whose guidance-network
    features match the input's (`guidance="latent"`). `guidance="pixel"` pulls towards the input in pixel space
    (GDMP-style), and `guidance="none"` is plain DiffPure-style purification; all three share one reverse step. The
    method is described in the project's docs/method.md.

    This model inherits from [`DiffusionPipeline`]: see its documentation for the generic methods (downloading,
    saving, running on a device).

    Args:
        unet ([`UNet2DModel`]): The pretrained, frozen denoiser (epsilon-, v- or sample-prediction).
        scheduler ([`SchedulerMixin`]): A [`DDPMScheduler`] or [`DDIMScheduler`] (variance-preserving, able to start
            at any t*).
        guidance ([`GuidanceModel`], *optional*): The guidance network phi; needed for `guidance="latent"`.
        classifier (*optional*): The downstream classifier on [0, 1] images: a [`SmallImageClassifier`] or a
            `transformers` image-classification model (with `feature_extractor` for its normalisation).
        feature_extractor (*optional*): A `transformers` image processor whose `image_mean`/`image_std` (and `size`)
            the classifier expects.
        strength, num_inference_steps, guidance_mode, feature_weight, class_guidance, guidance_target, eta: The
            purification defaults, saved in `model_index.json` so that a published pipeline carries the settings it
            was tuned and evaluated with. Each can be overridden per call. Unset, they are the untuned defaults of
            [`~diffusers_agdm.settings_table.UNTUNED_DEFAULTS`].
        guidance_scale: The default scale of `guidance="latent"` (AGDM).
        pixel_guidance_scale: The default scale of `guidance="pixel"` (the GDMP-style baseline): a pixel distance
            needs another scale than the latent one, so the baseline keeps its own tuned value.
    """

    model_cpu_offload_seq = "guidance->unet->classifier"
    _optional_components = ["guidance", "classifier", "feature_extractor"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        guidance: GuidanceModel | None = None,
        classifier=None,
        feature_extractor=None,
        strength: float = UNTUNED_DEFAULTS["strength"],
        num_inference_steps: int = UNTUNED_DEFAULTS["num_inference_steps"],
        guidance_scale: float = UNTUNED_DEFAULTS["guidance_scale"],
        guidance_mode: str = UNTUNED_DEFAULTS["guidance_mode"],
        pixel_guidance_scale: float = UNTUNED_DEFAULTS["pixel_guidance_scale"],
        feature_weight: float = UNTUNED_DEFAULTS["feature_weight"],
        class_guidance: bool = UNTUNED_DEFAULTS["class_guidance"],
        guidance_target: str = UNTUNED_DEFAULTS["guidance_target"],
        eta: float = UNTUNED_DEFAULTS["eta"],
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, guidance=guidance, classifier=classifier,
                              feature_extractor=feature_extractor)
        self.register_to_config(strength=strength, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, guidance_mode=guidance_mode,
                                pixel_guidance_scale=pixel_guidance_scale,
                                feature_weight=feature_weight, class_guidance=class_guidance,
                                guidance_target=guidance_target, eta=eta)
        in_channels = unet.config.in_channels
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False, do_normalize=False,
                                                 do_convert_rgb=in_channels == 3,
                                                 do_convert_grayscale=in_channels == 1)

    # ------------------------------------------------------------------ components
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """[`DiffusionPipeline.from_pretrained`], naming a component whose folder is missing from a local pipeline
        folder. Components are checked as they are set: class, shapes, class counts and finite weights."""
        if os.path.isdir(pretrained_model_name_or_path):
            check_component_folders(pretrained_model_name_or_path, given=kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_config(self, save_directory, push_to_hub: bool = False, **kwargs):
        """[`ConfigMixin.save_config`] without `_name_or_path`: where this pipeline was loaded from is not part of
        it, and is often a path on the machine that saved it (`save_pretrained` writes `model_index.json` here)."""
        from diffusers.configuration_utils import FrozenDict

        kept = self._internal_dict
        self._internal_dict = FrozenDict({k: v for k, v in kept.items() if k != "_name_or_path"})
        try:
            return super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            self._internal_dict = kept

    @property
    def sample_size(self) -> int:
        """The height (= width) of the images the UNet works on."""
        return model_sample_size(self.unet)

    def register_modules(self, **kwargs):
        # Every way of setting a component (constructor, `register_modules`, assignment) is checked before it is set.
        current = {name: self.__dict__.get(name) for name in COMPONENT_NAMES}
        check_components({**current, **kwargs}, new=kwargs)
        self.__dict__["_registering"] = True
        try:
            super().register_modules(**kwargs)
        finally:
            self.__dict__["_registering"] = False

    def __setattr__(self, name, value):
        if name in COMPONENT_NAMES and not self.__dict__.get("_registering", False):
            current = {key: self.__dict__.get(key) for key in COMPONENT_NAMES}
            check_components({**current, name: value}, new={name: value})
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ settings and checks
    def resolve_settings(
        self,
        strength: float | None = None,
        num_inference_steps: int | None = None,
        guidance: str | None = None,
        guidance_scale: float | None = None,
        pixel_guidance_scale: float | None = None,
        feature_weight: float | None = None,
        class_guidance: bool | None = None,
        guidance_target: str | None = None,
        eta: float | None = None,
    ) -> PurificationSettings:
        """
        Fill unset purification arguments from the pipeline's config, validate them all, and compute the reverse
        timesteps (without touching the scheduler). The result is what `purify(settings=...)` and
        `defended_classifier(settings=...)` run.

        `guidance_scale` is the latent (AGDM) scale and `pixel_guidance_scale` the pixel baseline's; each mode
        defaults to its own tuned config value, and a scale given for another mode is an error. `guidance="none"`
        is unguided whatever the scale.
        """
        cfg = self.config
        mode = check_option("guidance", cfg.guidance_mode if guidance is None else guidance)
        given = {"guidance_scale": guidance_scale, "pixel_guidance_scale": pixel_guidance_scale}
        scale_name = scale_option(mode)
        other = next(name for name in given if name != scale_name)
        if given[other] is not None and mode != "none":
            raise ValueError(f"`{other}` is the {'pixel' if other.startswith('pixel') else 'latent'} guidance "
                             f"scale; for guidance={mode!r} pass `{scale_name}` (this pipeline's default: "
                             f"{cfg[scale_name]:g}).")
        scale = 0.0 if mode == "none" else cfg[scale_name] if given[scale_name] is None else given[scale_name]
        guidance_settings = GuidanceSettings(
            mode=mode,
            scale=scale,
            feature_weight=cfg.feature_weight if feature_weight is None else feature_weight,
            class_guidance=cfg.class_guidance if class_guidance is None else class_guidance,
            target=cfg.guidance_target if guidance_target is None else guidance_target,
        )  # validated as it is built
        guidance_settings.validate(has_guidance_model=self.guidance is not None)
        return PurificationSettings(
            strength=cfg.strength if strength is None else strength,
            num_inference_steps=cfg.num_inference_steps if num_inference_steps is None else num_inference_steps,
            guidance=guidance_settings,
            num_train_timesteps=self.scheduler.config.num_train_timesteps,
            fixed_stride=is_fixed_stride(self.scheduler),
            eta=cfg.eta if eta is None else eta,
        )

    def check_settings(self, settings: PurificationSettings) -> None:
        """Raise a `ValueError` unless `settings` can run on this pipeline (its schedule, its guidance model)."""
        if not isinstance(settings, PurificationSettings):
            raise ValueError(f"`settings` must be a PurificationSettings (from `pipe.resolve_settings(...)`), got "
                             f"{type(settings).__name__}.")
        total = self.scheduler.config.num_train_timesteps
        if settings.num_train_timesteps != total or settings.fixed_stride != is_fixed_stride(self.scheduler):
            raise ValueError(f"These settings were resolved for another schedule ({settings.num_train_timesteps} "
                             f"timesteps, fixed_stride={settings.fixed_stride}); this pipeline's "
                             f"{type(self.scheduler).__name__} has {total}. Resolve them with this pipeline.")
        settings.guidance.validate(has_guidance_model=self.guidance is not None)

    def check_inputs(
        self,
        image,
        settings: PurificationSettings,
        generator=None,
        output_type: str = "pt",
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        """Every check on a call's inputs, run once per call before any work: the images (any form `__call__`
        takes), the settings, the generators, the output type, the callback's tensor inputs and gradient
        checkpointing."""
        batch_size = check_image_input(image, self.unet.config.in_channels, self.sample_size)
        self.check_settings(settings)
        if isinstance(generator, list):
            if len(generator) != batch_size:
                raise ValueError(f"Got {len(generator)} generators for a batch of {batch_size} images.")
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError("`generator` must be a torch.Generator or a list of them.")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError("`generator` must be a torch.Generator or a list of them, got "
                             f"{type(generator).__name__}.")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}.")
        if callback_on_step_end_tensor_inputs is not None:
            unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if unknown:
                raise ValueError(f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, "
                                 f"but found {unknown}.")
        if gradient_checkpointing and not isinstance(self.scheduler, (DDPMScheduler, DDIMScheduler)):
            raise ValueError(f"Per-step gradient checkpointing replays scheduler steps, which needs a stateless "
                             f"scheduler (DDPMScheduler, DDIMScheduler), not {type(self.scheduler).__name__}.")

    # ------------------------------------------------------------------ schedule
    def get_timesteps(self, num_inference_steps: int, strength: float, device=None) -> torch.Tensor:
        """
        The reverse-process timesteps, highest first (img2img's argument order): `num_inference_steps` of them
        starting at t* = round(`strength` x `num_train_timesteps`) whatever the number of steps (unlike img2img,
        which runs int(`num_inference_steps` x `strength`) steps of a full schedule). `strength=0.1,
        num_inference_steps=100` on a 1000-step DDPM starts at t = 100; more steps than t* + 1 is a `ValueError`.
        The input is diffused to the first timestep. Computed without touching the scheduler; see
        [`~diffusers_agdm.utils.schedule.purification_timesteps`] for how DDIM's fixed stride is honoured.
        """
        timesteps = purification_timesteps(strength, num_inference_steps, self.scheduler.config.num_train_timesteps,
                                           is_fixed_stride(self.scheduler))
        return torch.tensor(timesteps, device=device)

    def prepare_latents(self, reference: torch.Tensor, first_timestep: int, generator=None):
        """x_{t*}: the images (in [-1, 1]) diffused to `first_timestep` with fresh noise from `generator`. Returns the
        latents and that starting noise (the diffused guidance reference x'_t reuses it)."""
        noise = randn_tensor(reference.shape, generator=generator, device=reference.device, dtype=reference.dtype)
        return diffuse(reference, noise, self.scheduler.alphas_cumprod, first_timestep), noise

    @staticmethod
    def _draw_step_seeds(generator, num_steps: int) -> torch.Tensor:
        """One seed per reverse step (and per image for a list of generators), so a step can be replayed exactly."""
        high = 2**62
        if generator is None:
            return torch.randint(0, high, (num_steps, 1))
        if isinstance(generator, list):
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
        settings: PurificationSettings | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        gradient_checkpointing: bool = False,
        show_progress_bar: bool = False,
        callback: Callable | None = None,
        **overrides,
    ) -> torch.Tensor:
        r"""
        Purify a batch of images: diffuse to t*, then run the (guided) reverse process. Differentiable end to end
        when called with gradients enabled (adaptive attacks): through the forward noising, every reverse step, the
        guidance gradient itself (second order through the guidance network) and the reference x'_t.

        Args:
            images (`torch.Tensor` of shape `(B, C, H, W)`): Images in [0, 1] (the attacker's space).
            settings ([`PurificationSettings`], *optional*): From `pipe.resolve_settings(...)`, used as is. Without
                it, `overrides` are resolved against the pipeline's config (once, here).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Makes purification deterministic.
                The starting noise is drawn first, then one seed per reverse step.
            gradient_checkpointing (`bool`, defaults to `False`): Recompute each reverse step in the backward pass,
                replaying the same noise, so the memory of an exact gradient does not grow with the number of steps.
                Gradients then flow to the inputs (images), not to model parameters. Needs DDPM or DDIM.
            show_progress_bar (`bool`, defaults to `False`): Show a progress bar over the reverse steps.
            callback (`Callable`, *optional*): Called after every reverse step as `callback(pipe, i, t,
                {"latents": x})` with x in [-1, 1]; a returned dict with `"latents"` replaces them.
            overrides: `strength`, `num_inference_steps`, `guidance`, `guidance_scale`, `pixel_guidance_scale`,
                `feature_weight`, `class_guidance`, `guidance_target`, `eta`: see [`resolve_settings`].

        Returns:
            `torch.Tensor`: The purified images in [0, 1], same shape as `images`.
        """
        if settings is None:
            settings = self.resolve_settings(**overrides)
        elif overrides:
            raise ValueError(f"Pass either `settings` or overrides ({', '.join(sorted(overrides))}), not both; "
                             "`settings.replace(...)` makes a modified copy.")
        if not torch.is_tensor(images) or images.ndim != 4:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"`purify` takes a (batch, channels, height, width) torch.Tensor in [0, 1], got {shape}; "
                             "`pipe(...)` takes PIL images and numpy arrays.")
        self.check_inputs(images, settings, generator=generator, gradient_checkpointing=gradient_checkpointing)
        return self._purify(images, settings, generator, gradient_checkpointing, show_progress_bar, callback)

    def _purify(self, images, settings, generator, gradient_checkpointing=False, show_progress_bar=False,
                callback=None) -> torch.Tensor:
        # `purify` without its checks: its callers (`purify`, `__call__`) ran `check_inputs` once already.
        device, dtype = self._execution_device, self.unet.dtype
        reference = images.to(device=device, dtype=dtype) * 2 - 1
        timesteps = self.get_timesteps(settings.num_inference_steps, settings.strength, device=device)
        scheduler = scheduler_for(self.scheduler, settings.timesteps, device=device)

        sample, start_noise = self.prepare_latents(reference, settings.first_timestep, generator)
        step_seeds = self._draw_step_seeds(generator, len(timesteps))
        generator_device = generator[0].device if isinstance(generator, list) else (
            generator.device if generator is not None else torch.device("cpu"))

        guidance = settings.guidance
        target_label = None
        if guidance.active and guidance.mode == "latent" and guidance.class_guidance:
            with torch.no_grad():  # y_hat is a discrete choice: nothing to differentiate
                target_label = input_class_logits(self.guidance, images.to(device)).argmax(-1)

        step = GuidedReverseStep(self.unet, scheduler, self.guidance, guidance, eta=settings.eta,
                                 timesteps=settings.timesteps)
        iterator = self.progress_bar(timesteps) if show_progress_bar else timesteps
        for i, t in enumerate(iterator):
            if gradient_checkpointing and torch.is_grad_enabled():
                sample = replayed_step(self._replayable(step, t, target_label, step_seeds[i], generator_device),
                                       sample, reference, start_noise)
            else:
                sample = step(sample, t, reference, start_noise, target_label,
                              self._step_generator(step_seeds[i], generator_device))
            if callback is not None:
                sample = (callback(self, i, t, {"latents": sample}) or {}).get("latents", sample)
        if not torch.isfinite(sample).all():
            cause = (f"the guidance scale {guidance.scale:g} is likely too large for this model"
                     if guidance.active else "the model's outputs are not finite")
            raise ValueError(f"Purification produced non-finite images (NaN or inf): {cause}, or its weights are "
                             "corrupted. Refusing to return them.")
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
        return logits_of(self.classifier(pixel_values))

    @torch.no_grad()
    def classify(self, image, **kwargs) -> AdversarialGuidedPurificationPipelineOutput:
        """Purify `image` (any input `__call__` takes) and classify the result; `.labels` holds the predictions."""
        if self.classifier is None:
            raise ValueError("`classify` needs a classifier; this pipeline has none.")
        kwargs.setdefault("output_type", "pt")
        return self(image, **kwargs)

    def defended_classifier(self, seed: int | None = 0, gradient_checkpointing: bool = True,
                            settings: PurificationSettings | None = None, **overrides):
        """
        The whole defense as a plain `torch.nn.Module` mapping [0, 1] images to the classifier's logits, for
        torchattacks, AutoAttack and RobustBench-style code. Its settings are resolved once, here (or `settings` is
        used as is), and held by the module. Every call purifies with fresh noise from the module's own generator
        (seeded with `seed`), so attacks see the real stochastic defense; gradients are exact.
        """
        from .defended_classifier import PurifiedClassifier

        if self.classifier is None:
            raise ValueError("`defended_classifier` needs a classifier; this pipeline has none.")
        return PurifiedClassifier(self, seed=seed, gradient_checkpointing=gradient_checkpointing, settings=settings,
                                  **overrides)

    # ------------------------------------------------------------------ the user-facing call
    def prepare_images(self, image) -> torch.Tensor:
        """Turn PIL images, numpy arrays (BHWC) or tensors (BCHW) in [0, 1] into one validated [0, 1] tensor batch."""
        check_image_input(image, self.unet.config.in_channels, self.sample_size)
        return self._to_tensor(image)

    def _to_tensor(self, image) -> torch.Tensor:
        if torch.is_tensor(image):
            return image[None] if image.ndim == 3 else image
        if isinstance(image, PIL.Image.Image) or (isinstance(image, (list, tuple)) and image
                                                  and isinstance(image[0], PIL.Image.Image)):
            return pil_images_to_tensor(image, self.unet.config.in_channels)  # scaled by pixel type (16-bit, float)
        return self.image_processor.preprocess(image)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image,
        strength: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        pixel_guidance_scale: float | None = None,
        guidance: str | None = None,
        feature_weight: float | None = None,
        class_guidance: bool | None = None,
        guidance_target: str | None = None,
        eta: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        settings: PurificationSettings | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> AdversarialGuidedPurificationPipelineOutput | tuple:
        r"""
        Purify (and, with a classifier, classify) possibly attacked images.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them): Images in [0, 1]
                (numpy `(B, H, W, C)`, torch `(B, C, H, W)`), of the UNet's size and channels.
            strength (`float`, *optional*, defaults to `pipe.config.strength`): t* as a fraction of the training
                schedule, in (0, 1]: the reverse process starts at round(strength x T). Larger removes stronger
                perturbations and more of the image's detail.
            num_inference_steps (`int`, *optional*, defaults to `pipe.config.num_inference_steps`): Reverse steps
                from t* to 0 (at most t* + 1).
            guidance_scale (`float`, *optional*, defaults to `pipe.config.guidance_scale`): The latent (AGDM)
                guidance scale; 0 = unguided. Not for `guidance="pixel"`, which takes `pixel_guidance_scale`.
            pixel_guidance_scale (`float`, *optional*, defaults to `pipe.config.pixel_guidance_scale`): The scale of
                `guidance="pixel"`.
            guidance (`str`, *optional*, defaults to `pipe.config.guidance_mode`): `"latent"` (AGDM), `"pixel"`
                (GDMP-style) or `"none"` (DiffPure-style).
            feature_weight, class_guidance, guidance_target: See [`~PurificationSettings`] and docs/method.md.
            eta (`float`, *optional*, defaults to `pipe.config.eta`): DDIM's eta (0 = deterministic reverse steps);
                ignored by DDPM.
            generator (`torch.Generator` or a list of them, *optional*): For deterministic purification.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to `True`): Return an [`AdversarialGuidedPurificationPipelineOutput`] or the
                tuple `(images, logits, labels)` (logits and labels None without a classifier).
            settings ([`PurificationSettings`], *optional*): Resolved settings (`pipe.resolve_settings(...)`), used
                as is instead of the arguments above.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): Called
                after every reverse step as `callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`,
                where `callback_kwargs` holds the tensors named in `callback_on_step_end_tensor_inputs`; a returned
                dict may replace them.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`): Which tensors
                the callback gets; `"latents"` is the current x_t, in [-1, 1].

        Examples:

        Returns:
            [`AdversarialGuidedPurificationPipelineOutput`] or `tuple`: purified images, plus logits and labels when
            the pipeline has a classifier (always three items: `(images, logits, labels)`).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        overrides = {k: v for k, v in dict(
            strength=strength, num_inference_steps=num_inference_steps, guidance=guidance,
            guidance_scale=guidance_scale, pixel_guidance_scale=pixel_guidance_scale, feature_weight=feature_weight,
            class_guidance=class_guidance, guidance_target=guidance_target, eta=eta).items() if v is not None}
        if settings is None:
            settings = self.resolve_settings(**overrides)
        elif overrides:
            raise ValueError(f"Pass either `settings` or purification arguments ({', '.join(sorted(overrides))}), "
                             "not both.")
        self.check_inputs(image, settings, generator=generator, output_type=output_type,
                          callback_on_step_end_tensor_inputs=tensor_inputs)
        images = self._to_tensor(image)  # checked above

        callback = None
        if callback_on_step_end is not None:
            def callback(pipe, i, t, tensors):
                return callback_on_step_end(pipe, i, t, {k: tensors[k] for k in tensor_inputs})

        purified = self._purify(images, settings, generator, show_progress_bar=True, callback=callback)
        logits = labels = None
        if self.classifier is not None:
            logits = self.classifier_logits(purified)
            labels = logits.argmax(-1)
        self.maybe_free_model_hooks()
        out_images = self.image_processor.postprocess(purified, output_type=output_type)
        if not return_dict:
            return out_images, logits, labels
        return AdversarialGuidedPurificationPipelineOutput(images=out_images, logits=logits, labels=labels)

    # ------------------------------------------------------------------ Hub
    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, safe_serialization: bool = True,
                    variant: str | None = None, subfolder: str | None = None,
                    model_card: str | None = None) -> str:
        """Upload this pipeline (safetensors) with a model card to the Hub, with Diffusers' `push_to_hub`
        arguments; returns the commit URL."""
        return push_pipeline_to_hub(self, repo_id, commit_message=commit_message, private=private, token=token,
                                    create_pr=create_pr, safe_serialization=safe_serialization, variant=variant,
                                    subfolder=subfolder, model_card=model_card)
