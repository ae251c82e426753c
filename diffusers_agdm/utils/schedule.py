"""The reverse-process schedule of purification: which timesteps, computed from the schedule's length alone (no
scheduler is touched), and a private scheduler set up to run them."""

import copy
import functools
import inspect

from .validation import check_finite, check_int


def start_timestep(strength: float, num_train_timesteps: int) -> int:
    """t*: the timestep `strength` names, round(strength x T), kept inside the schedule (at most T - 1)."""
    return min(int(round(strength * num_train_timesteps)), num_train_timesteps - 1)


@functools.lru_cache(maxsize=8)
def fixed_strides(num_train_timesteps: int) -> tuple[int, ...]:
    """The strides a fixed-stride scheduler (DDIM) can take: its `step` moves by `T // num_inference_steps`."""
    return tuple(sorted({num_train_timesteps // n for n in range(1, num_train_timesteps + 1)}))


def purification_timesteps(strength: float, num_inference_steps: int, num_train_timesteps: int,
                           fixed_stride: bool = False) -> tuple[int, ...]:
    """
    The reverse-process timesteps, highest first: `num_inference_steps` of them starting at t* = round(strength x T)
    (at most T - 1), whatever the number of steps; the input is diffused to the first one, and the step from the
    last one lands on the clean sample.

    With `fixed_stride=False` (schedulers that take a custom `timesteps` list, such as [`DDPMScheduler`]) they are
    spread evenly over [0, t*] and end at 0. With `fixed_stride=True` ([`DDIMScheduler`], whose `step` moves by
    `T // scheduler.num_inference_steps`), each gap is the stride DDIM can take that is nearest the even spacing,
    so the last timestep may lie a little above 0 (e.g. 600 -> 100 for 2 steps on T = 1000); the pipeline sets
    DDIM's stride before each step and jumps from the last timestep to the clean sample.

    Raises a `ValueError` naming both numbers when there are more steps than timesteps in [0, t*].
    """
    check_finite("strength", strength, minimum=0, maximum=1, inclusive_min=False)
    steps = check_int("num_inference_steps", num_inference_steps)
    total = check_int("num_train_timesteps", num_train_timesteps)
    t_star = start_timestep(strength, total)
    if steps > t_star + 1:
        raise ValueError(f"strength={strength:g} starts the reverse process at t={t_star} (of {total} training "
                         f"timesteps), which leaves room for at most {t_star + 1} steps, but num_inference_steps="
                         f"{steps}; use fewer steps or a larger strength.")
    if not fixed_stride:
        if steps == 1:
            return (t_star,)
        # Integer rounding of t* (n-1-i)/(n-1): gaps of at least 1, so strictly decreasing, ending at 0.
        return tuple((t_star * (steps - 1 - i) + (steps - 1) // 2) // (steps - 1) for i in range(steps))
    strides, timesteps, remaining = fixed_strides(total), [t_star], t_star
    for left in range(steps - 1, 0, -1):  # `left` gaps still to place, this one included
        room = remaining - (left - 1)  # leave at least 1 per later gap
        ideal = remaining / left
        stride = min((d for d in strides if d <= room), key=lambda d: (abs(d - ideal), d))
        remaining -= stride
        timesteps.append(remaining)
    return tuple(timesteps)


def fixed_stride_scheduler_steps(timesteps: tuple[int, ...], index: int, num_train_timesteps: int) -> int:
    """The `num_inference_steps` to give a fixed-stride scheduler (DDIM) before its step from `timesteps[index]`, so
    that it lands on the next timestep (from the last one, a stride of T: the clean sample)."""
    stride = timesteps[index] - timesteps[index + 1] if index + 1 < len(timesteps) else num_train_timesteps
    count = num_train_timesteps // stride
    if num_train_timesteps // count != stride:
        raise ValueError(f"A stride of {stride} is not one a {num_train_timesteps}-step DDIM schedule can take.")
    return count


def takes_custom_timesteps(scheduler) -> bool:
    """Whether `scheduler.set_timesteps` accepts a custom `timesteps` list (DDPM and most newer schedulers)."""
    return "timesteps" in inspect.signature(scheduler.set_timesteps).parameters


def is_fixed_stride(scheduler) -> bool:
    """Whether `scheduler` steps by one fixed stride `T // num_inference_steps` and takes no custom list (DDIM)."""
    from diffusers import DDIMScheduler

    return isinstance(scheduler, DDIMScheduler) and not takes_custom_timesteps(scheduler)


def check_scheduler(scheduler) -> None:
    """
    Raise a `ValueError` unless purification can run `scheduler`: a variance-preserving DDPM or DDIM scheduler
    (or a subclass). The forward process (`diffuse`) and the guidance correction assume x_t = sqrt(abar_t) x_0 +
    sqrt(1 - abar_t) eps, which sigma-space schedulers (Euler, Heun, ...) do not use, and starting at any t* needs
    custom timesteps (DDPM) or a stride per step (DDIM).
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    if not isinstance(scheduler, (DDPMScheduler, DDIMScheduler)):
        raise ValueError(f"{type(scheduler).__name__} cannot run purification: it needs a variance-preserving "
                         "scheduler that can start the reverse process at an arbitrary t*, DDPMScheduler or "
                         "DDIMScheduler (build one with `DDIMScheduler.from_config(scheduler.config)`).")


def scheduler_for(scheduler, timesteps: tuple[int, ...], device=None):
    """A private copy of `scheduler` set up to run `timesteps`, so the shared one is never mutated and a replayed
    step (gradient checkpointing) finds the same state. A fixed-stride copy gets its stride before each step, from
    `fixed_stride_scheduler_steps`."""
    private = copy.deepcopy(scheduler)
    if is_fixed_stride(private):
        private.set_timesteps(fixed_stride_scheduler_steps(timesteps, 0, private.config.num_train_timesteps),
                              device=device)
    else:
        private.set_timesteps(timesteps=list(timesteps), device=device)
    return private
