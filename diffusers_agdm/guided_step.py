"""The guided reverse step of AGDM, written once: purification calls it for every mode (latent, pixel, none), so
every attack on the pipeline differentiates through it. (Training the guidance network does not use it: see
docs/method.md.)

AGDM (arXiv 2403.16067, eq. for the conditional score) steers each reverse step with the gradient

    g_t = grad_{x_t} [ log softmax(f_phi(x_t, t))[y_hat]  -  lambda * || h_phi(x_t, t) - h_phi(x'_t, t) ||^2 ]

and applies it as a classifier-guidance correction of the predicted noise,
``eps_guided = eps_theta(x_t, t) - s * sqrt(1 - abar_t) * g_t``, which every scheduler with ``step`` accepts.
The equations and the choices fixed where the paper is silent are in docs/method.md.
"""

import contextlib
import inspect
from dataclasses import dataclass

import torch

from .settings_table import check_option, scale_option
from .utils.diffusion import diffuse
from .utils.schedule import fixed_stride_scheduler_steps, is_fixed_stride

# x_t and x'_t go through the guidance network in two calls: x_t with the graph its gradient needs, x'_t without one
# unless an attack differentiates through it. One batch of 2B (`batched_guidance_calls()`) halves the calls but
# back-propagates (and, in an attack, double-back-propagates) through the x'_t half too, which nothing needs: on the
# embedded default (CPU, one thread, batch 8, checkpointed) an exact latent gradient costs 0.33 s per image in two
# calls against 0.38 s batched, and purification is no faster batched (benchmarks/gradient_throughput.py).
_BATCHED_GUIDANCE = False


@dataclass(frozen=True)
class GuidanceSettings:
    """
    How the reverse process is steered.

    Args:
        mode: ``"latent"`` (AGDM: distance in the guidance network's features plus its class term), ``"pixel"``
            (GDMP-style: ``-lambda * ||x_t - x'_t||^2``) or ``"none"`` (DiffPure-style, unguided).
        scale: The guidance scale s; 0 is unguided purification whatever the mode.
        feature_weight: lambda, the weight of the distance term.
        class_guidance: Whether the latent mode adds ``log p_phi(y_hat | x_t)``; ``y_hat`` is the guidance
            network's prediction on the input at t = 0.
        target: What x'_t is: ``"diffused"`` (the input diffused to t with the starting noise) or ``"input"``.
    """

    mode: str = "latent"
    scale: float = 0.0
    feature_weight: float = 1.0
    class_guidance: bool = True
    target: str = "diffused"

    def __post_init__(self):
        # Validated once, when built (the table's rules); a frozen dataclass normalises its own fields this way.
        object.__setattr__(self, "mode", check_option("guidance", self.mode))
        object.__setattr__(self, "target", check_option("guidance_target", self.target))
        object.__setattr__(self, "scale", check_option(scale_option(self.mode), self.scale))
        object.__setattr__(self, "feature_weight", check_option("feature_weight", self.feature_weight))
        check_option("class_guidance", self.class_guidance)

    @property
    def active(self) -> bool:
        return self.mode != "none" and self.scale != 0

    def validate(self, has_guidance_model: bool) -> None:
        """Raise a `ValueError` if these settings need a guidance model and there is none (the values themselves
        were checked when the settings were built)."""
        if self.mode == "latent" and not has_guidance_model:
            raise ValueError("guidance='latent' needs a guidance model, but this pipeline has none; pass "
                             "`guidance=GuidanceModel(...)` when building it, or use guidance='pixel' or 'none'.")


@contextlib.contextmanager
def batched_guidance_calls():
    """Within this block, the guidance network sees x_t and x'_t in one batch of 2B (the path before it was
    measured slower): for benchmarks and tests that compare the two paths in one process. Not thread-safe."""
    global _BATCHED_GUIDANCE
    previous, _BATCHED_GUIDANCE = _BATCHED_GUIDANCE, True
    try:
        yield
    finally:
        _BATCHED_GUIDANCE = previous


def input_class_logits(guidance_model, images: torch.Tensor) -> torch.Tensor:
    """
    f_phi(x, 0): the guidance network's class logits on the input itself (mapped from [0, 1] to [-1, 1], at timestep
    0). Their argmax is y_hat, the class latent guidance pulls every reverse step towards; the guidance-target attack
    ([`AttackObjective`]) differentiates the same logits, so both must come from here.
    """
    dtype = next(guidance_model.parameters()).dtype
    reference = images.to(dtype) * 2 - 1
    timestep = torch.zeros(1, dtype=torch.long, device=images.device)
    return guidance_model(reference, timestep).logits


def _expand(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coefficient.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def reference_at(reference: torch.Tensor, start_noise: torch.Tensor, alphas_cumprod: torch.Tensor, timestep,
                 target: str):
    """x'_t: the (possibly attacked) input as the guidance compares it with x_t at step t: the input itself, or the
    input diffused to t with the noise that started the reverse process."""
    if target == "input":
        return reference
    return diffuse(reference, start_noise, alphas_cumprod, timestep)


def guidance_gradient(guidance_model, x_t, timestep, reference_t, target_label, settings: GuidanceSettings):
    """
    g_t of the module docstring, one gradient per image (the objective is summed over the batch, and images do not
    interact). When the caller records gradients (an adaptive attack), the result stays differentiable: second order
    through the guidance network with respect to x_t, and first order through h_phi(x'_t) with respect to the input.
    """
    if settings.mode == "pixel":
        # d/dx of -lambda ||x - x'||^2, in closed form.
        return -2.0 * settings.feature_weight * (x_t - reference_t)

    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        x = x_t if (create_graph and x_t.requires_grad) else x_t.detach().requires_grad_(True)
        objective = x.new_zeros(())
        if settings.feature_weight:
            # x'_t only needs a graph when the caller differentiates through it (an attack), and never the double
            # backward x_t's features need: see _BATCHED_GUIDANCE for why two calls beat one batch of 2B.
            batch = x.shape[0]
            reference_t = reference_t if create_graph else reference_t.detach()
            if _BATCHED_GUIDANCE:
                per_image = torch.is_tensor(timestep) and timestep.ndim == 1 and timestep.numel() == batch > 1
                out = guidance_model(torch.cat([x, reference_t]),
                                     torch.cat([timestep, timestep]) if per_image else timestep)
                features, ref_features, logits = out.features[:batch], out.features[batch:], out.logits[:batch]
            else:
                out = guidance_model(x, timestep)
                features, logits = out.features, out.logits
                with torch.set_grad_enabled(create_graph):
                    ref_features = guidance_model(reference_t, timestep).features
            if not create_graph:
                ref_features = ref_features.detach()
            objective = objective - settings.feature_weight * (features - ref_features).pow(2).sum()
        else:
            logits = guidance_model(x, timestep).logits
        if settings.class_guidance:
            log_probs = torch.log_softmax(logits, dim=-1)
            objective = objective + log_probs.gather(1, target_label[:, None]).sum()
        (grad,) = torch.autograd.grad(objective, x, create_graph=create_graph)
    return grad


def noise_to_output_factor(prediction_type: str, alpha_bar: torch.Tensor) -> torch.Tensor:
    """d(model output)/d(eps) at fixed x_t, so an eps correction can be expressed in the UNet's own parametrisation."""
    if prediction_type == "epsilon":
        return torch.ones_like(alpha_bar)
    if prediction_type == "v_prediction":  # v = (eps - sqrt(1 - abar) x_t) / sqrt(abar)
        return 1 / alpha_bar.sqrt()
    if prediction_type == "sample":  # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
        return -(1 - alpha_bar).sqrt() / alpha_bar.sqrt()
    raise ValueError(f"Unsupported scheduler prediction_type {prediction_type!r}.")


class GuidedReverseStep:
    """
    One reverse step x_t -> x_{t-1} of (guided) purification: UNet, guidance correction, then `scheduler.step`.

    Holding no state between calls, it can be replayed exactly, which per-step gradient checkpointing relies on.
    Give it a scheduler of its own set up for `timesteps` (`diffusers_agdm.utils.schedule.scheduler_for`): a
    fixed-stride scheduler (DDIM) gets the stride to the next of `timesteps` before each step.
    """

    def __init__(self, unet, scheduler, guidance_model, settings: GuidanceSettings, eta: float = 0.0,
                 timesteps: tuple[int, ...] | None = None):
        self.unet = unet
        self.scheduler = scheduler
        self.timesteps = tuple(int(t) for t in timesteps) if timesteps is not None else None
        self.fixed_stride = is_fixed_stride(scheduler)
        if self.fixed_stride and self.timesteps is None:
            raise ValueError(f"{type(scheduler).__name__} moves by a fixed stride: pass the `timesteps` it runs.")
        self.guidance_model = guidance_model
        self.settings = settings
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        step_params = set(inspect.signature(scheduler.step).parameters)
        self.extra_step_kwargs = {"eta": eta} if "eta" in step_params else {}
        self.accepts_generator = "generator" in step_params

    def alpha_bar(self, timestep, like: torch.Tensor) -> torch.Tensor:
        alphas_cumprod = self.scheduler.alphas_cumprod.to(like.device)
        index = torch.as_tensor(timestep, device=like.device).long().reshape(-1)
        return alphas_cumprod[index].to(torch.float32)

    def __call__(self, sample, timestep, reference, start_noise, target_label, generator=None):
        model_input = self.scheduler.scale_model_input(sample, timestep)
        model_output = self.unet(model_input, timestep).sample
        if self.settings.active:
            alpha_bar = self.alpha_bar(timestep, model_input)
            reference_t = reference_at(reference, start_noise, self.scheduler.alphas_cumprod, timestep,
                                       self.settings.target)
            grad = guidance_gradient(self.guidance_model, model_input, timestep, reference_t, target_label,
                                     self.settings)
            eps_shift = -self.settings.scale * _expand((1 - alpha_bar).sqrt(), grad) * grad
            model_output = model_output + _expand(noise_to_output_factor(self.prediction_type, alpha_bar),
                                                  grad) * eps_shift
        kwargs = dict(self.extra_step_kwargs)
        if self.fixed_stride:  # set here, not once: a replayed step must find its own stride
            self.scheduler.num_inference_steps = fixed_stride_scheduler_steps(
                self.timesteps, self.timesteps.index(int(timestep)), self.scheduler.config.num_train_timesteps)
        if self.accepts_generator:
            kwargs["generator"] = generator
        return self.scheduler.step(model_output, timestep, sample, **kwargs).prev_sample


class _ReplayedStep(torch.autograd.Function):
    """A reverse step whose activations are not kept: the forward runs without a graph, and the backward replays
    the step (same inputs, same noise) with a full graph, second order included, to return the input gradients.

    Unlike `torch.utils.checkpoint`, its memory stays flat even though the step itself calls `torch.autograd.grad`
    (the guidance gradient), and it works under both `.backward()` and `torch.autograd.grad`. It returns gradients
    for its tensor inputs only, not for model parameters: attacks need the former, and the models are frozen.
    """

    @staticmethod
    def forward(ctx, run, sample, reference, start_noise):
        ctx.run = run
        ctx.save_for_backward(sample, reference, start_noise)
        with torch.no_grad():
            return run(sample, reference, start_noise)

    @staticmethod
    def backward(ctx, grad_output):
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad():
            output = ctx.run(*inputs)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(output, wanted, grad_output, allow_unused=True) if wanted else [])
        return (None, *[next(grads) if t.requires_grad else None for t in inputs])


def replayed_step(run, sample, reference, start_noise):
    """`run(sample, reference, start_noise)` with per-step gradient checkpointing (see `_ReplayedStep`); `run` must
    draw the same noise every time it is called."""
    return _ReplayedStep.apply(run, sample, reference, start_noise)
