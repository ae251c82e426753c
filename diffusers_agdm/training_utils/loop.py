"""The accelerate training loop the three scripts share, shaped like Diffusers' `train_unconditional.py`:
gradient accumulation, mixed precision, an lr schedule, EMA, crash-safe `save_state` checkpoints with pruning
(`checkpoints.py`), exact resume (or a loud error), tensorboard logging and a progress bar."""

import argparse
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..data import LabelledImages
from ..distributed import needs_cpu_process_group
from ..exits import Interrupted
from ..utils.lock import FolderLock
from .checkpoints import (
    RNG_STATE,
    check_exact_resume,
    check_same_run,
    find_checkpoints,
    load_rng_state,
    pause_after_model,
    read_run,
    resolve_resume,
    run_settings,
    save_checkpoint,
    saved_step,
)

logger = get_logger(__name__, log_level="INFO")

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


@dataclass
class TrainingResult:
    model: torch.nn.Module  # unwrapped, with the EMA weights when EMA is on
    global_step: int
    metrics: dict = field(default_factory=dict)  # the last evaluation's numbers
    history: list = field(default_factory=list)  # every evaluation, with its step
    finished: bool = True  # False when --stop_after_steps ended this invocation early
    invocations: list = field(default_factory=list)  # every invocation of the run: its steps, changes, wall time


# The output folders this process holds locked (one training per folder; see `lock_output_dir`).
_LOCKS: dict[str, FolderLock] = {}


def lock_output_dir(output_dir) -> None:
    """Hold `<output_dir>/.lock` until `release_output_dir` or the process ends: a second training into the same
    folder is a one-line error instead of two runs overwriting each other's checkpoints. Re-entrant within a process;
    a crash or SIGKILL releases it (flock)."""
    key = os.path.realpath(output_dir)
    if key not in _LOCKS:
        _LOCKS[key] = FolderLock(output_dir, "training")


def release_output_dir(output_dir) -> None:
    lock = _LOCKS.pop(os.path.realpath(output_dir), None)
    if lock is not None:
        lock.release()


def build_accelerator(args: argparse.Namespace) -> Accelerator:
    """The Accelerator of a run (also seeds everything, before any model is built)."""
    report_to = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        cpu=needs_cpu_process_group(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)),
        # Shuffling seeded by (seed, epoch), so a resumed run sees the batches the uninterrupted one would.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if accelerator.is_main_process:
        lock_output_dir(args.output_dir)
    set_seed(args.seed)
    return accelerator


def _register_checkpoint_hooks(accelerator, model_name: str, model_cls, ema: EMAModel | None):
    """Checkpoints hold the model (and its EMA) in Diffusers' own format, as `train_unconditional.py` does."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            if ema is not None:
                # EMAModel.save_pretrained builds a freshly initialised model, which draws on the global RNG;
                # fork it so that saving a checkpoint never changes what the run trains next.
                with torch.random.fork_rng(devices=[]):
                    ema.save_pretrained(os.path.join(output_dir, f"{model_name}_ema"))
            for model in models:
                model.save_pretrained(os.path.join(output_dir, model_name))
        pause_after_model(output_dir)
        for _ in list(weights):
            weights.pop()

    def load_hook(models, input_dir):
        # Local folders only: a missing one must be named, not looked up on the Hub.
        for sub in [model_name] + ([f"{model_name}_ema"] if ema is not None else []):
            if not os.path.isdir(os.path.join(input_dir, sub)):
                raise ValueError(f"{os.path.join(input_dir, sub)}: missing from the checkpoint.")
        if ema is not None:
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, f"{model_name}_ema"), model_cls)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)
            del loaded
        for _ in range(len(models)):
            model = models.pop()
            loaded = model_cls.from_pretrained(input_dir, subfolder=model_name)
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def log_image_grid(accelerator, tag: str, images: torch.Tensor, step: int) -> None:
    """Images in [0, 1], (N, C, H, W), to tensorboard (or wandb) when one is in use."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(tag, images.detach().float().cpu().clamp(0, 1), step)
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(img.permute(1, 2, 0).cpu().numpy()) for img in images]}, step=step)


def train_loop(
    accelerator: Accelerator,
    args: argparse.Namespace,
    model: torch.nn.Module,
    train_data: LabelledImages,
    loss_fn: LossFn,
    *,
    model_name: str,
    project_name: str,
    eval_fn: Callable[[torch.nn.Module], dict] | None = None,
    image_fn: Callable[[torch.nn.Module], torch.Tensor] | None = None,
) -> TrainingResult:
    """
    Train `model` on `train_data` with `loss_fn(model, images, labels) -> (loss, logs)`.

    `eval_fn(model) -> metrics` runs every `--eval_steps` (and at the end) on the EMA weights, and `image_fn(model)`
    every `--image_log_steps`; both run with the RNG forked, so monitoring never changes what is trained. Checkpoints
    go to `<output_dir>/checkpoint-<step>`; `--resume_from_checkpoint latest` continues exactly where one left off.
    Ctrl-C or SIGTERM saves a checkpoint at the end of the current step, then raises `exits.Interrupted`.
    """
    try:
        with _StopOnSignal() as stop:
            return _train_loop(accelerator, args, model, train_data, loss_fn, stop, model_name=model_name,
                               project_name=project_name, eval_fn=eval_fn, image_fn=image_fn)
    except BaseException:
        release_output_dir(args.output_dir)
        raise


def _train_loop(accelerator, args, model, train_data, loss_fn, stop, *, model_name, project_name, eval_fn,
                image_fn) -> TrainingResult:
    began = time.perf_counter()
    model_cls = type(model)
    ema = None
    if args.use_ema:
        ema = EMAModel(model.parameters(), decay=args.ema_max_decay, use_ema_warmup=True,
                       inv_gamma=args.ema_inv_gamma, power=args.ema_power, model_cls=model_cls,
                       model_config=model.config)
    _register_checkpoint_hooks(accelerator, model_name, model_cls, ema)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    dataset = TensorDataset(train_data.images, train_data.labels)
    # The loader's own generator keeps iterator creation from drawing on the global RNG, whose stream (t, noise,
    # PGD starts) must continue after a resume exactly as in an uninterrupted run.
    dataloader = DataLoader(dataset, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
                            num_workers=args.dataloader_num_workers,
                            generator=torch.Generator().manual_seed(args.seed))
    if len(dataloader) == 0:
        raise ValueError(f"{len(dataset)} training images do not fill one batch of {args.train_batch_size}.")
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)

    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    if accelerator.is_main_process:
        accelerator.init_trackers(project_name, config={k: v for k, v in vars(args).items()
                                                        if isinstance(v, (int, float, str, bool))})

    global_step, first_epoch, resume_batches = 0, 0, 0
    checkpoint = resolve_resume(args.resume_from_checkpoint, args.output_dir, announce=accelerator.print)
    if checkpoint is None and getattr(args, "overwrite_output_dir", False) and accelerator.is_main_process:
        complete, incomplete = find_checkpoints(args.output_dir)
        for old in complete + incomplete:
            shutil.rmtree(old)
        if complete + incomplete:
            accelerator.print(f"Deleted {len(complete + incomplete)} checkpoint(s) of an earlier run "
                              "(--overwrite_output_dir).")
    accelerator.wait_for_everyone()
    if args.resume_from_checkpoint and checkpoint is None:
        accelerator.print(f"No complete checkpoint in {args.output_dir}; starting a new run.")
    changes, previous = {}, []
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        allow_inexact = getattr(args, "allow_inexact_resume", False)
        exact = check_exact_resume(checkpoint, accelerator.num_processes, allow_inexact, warn=accelerator.print)
        changes = check_same_run(checkpoint, args)
        try:
            accelerator.load_state(str(checkpoint))
        except (RuntimeError, KeyError, OSError) as err:  # e.g. weights of another architecture
            raise ValueError(f"{checkpoint} does not fit this run's model or optimizer: "
                             f"{' '.join(str(err).split())[:300]}") from err
        if exact:
            _check_rng_restored(checkpoint, accelerator.process_index)
        if changes:
            _apply_changed_settings(args, changes, optimizer, lr_scheduler, ema)
            accelerator.print("Resuming with changed settings (--allow_changed_args): " + ", ".join(
                f"{flag} {old!r} -> {new!r}" for flag, (old, new) in changes.items()))
        global_step = saved_step(checkpoint)
        first_epoch = global_step // steps_per_epoch
        resume_batches = (global_step % steps_per_epoch) * args.gradient_accumulation_steps
        previous = [i for i in read_run(checkpoint).get("invocations", []) if isinstance(i, dict)]
    invocation = {"argv": list(getattr(args, "argv", [])), "num_processes": accelerator.num_processes,
                  "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "from_step": global_step, "to_step": global_step, "wall_time_s": 0.0,
                  "changed": {flag: [old, new] for flag, (old, new) in changes.items()}}
    invocations = previous + [invocation]

    def run_record(step: int) -> dict:
        invocation.update(to_step=step, wall_time_s=round(time.perf_counter() - began, 3))
        return {"args": run_settings(args), "invocations": invocations}

    def save(step: int) -> None:
        _check_finite_state(accelerator, model, ema, step, args.output_dir)
        save_checkpoint(accelerator, args.output_dir, step, args.checkpoints_total_limit, run=run_record(step))

    logger.info(f"***** Training {model_name} *****  images: {len(dataset)}  epochs: {num_epochs}  "
                f"batch per process: {args.train_batch_size}  processes: {accelerator.num_processes}  "
                f"accumulation: {args.gradient_accumulation_steps}  steps: {args.max_train_steps}")
    progress = tqdm(range(args.max_train_steps), initial=global_step, disable=not accelerator.is_local_main_process,
                    desc=f"training {model_name}")
    history, metrics = [], {}

    def evaluate(step):
        nonlocal metrics
        if eval_fn is None:
            return
        unwrapped = accelerator.unwrap_model(model)
        if ema is not None:
            ema.store(unwrapped.parameters())
            ema.copy_to(unwrapped.parameters())
        unwrapped.eval()
        with torch.random.fork_rng(devices=[]):
            metrics = eval_fn(unwrapped)
        unwrapped.train()
        if ema is not None:
            ema.restore(unwrapped.parameters())
        history.append({"step": step, **metrics})
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        accelerator.print(f"step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    done = global_step >= args.max_train_steps
    for epoch in range(first_epoch, num_epochs):
        if done:
            break
        model.train()
        # The seeded shuffle of epoch e must not depend on how many epochs this process has iterated before.
        dataloader.set_epoch(epoch)
        batches = dataloader
        if epoch == first_epoch and resume_batches:
            batches = accelerator.skip_first_batches(dataloader, resume_batches)
        for images, labels in batches:
            with accelerator.accumulate(model):
                loss, logs = loss_fn(model, images, labels)
                # Acted on only as gathered, so that every process stops at the same step.
                stop_now = _check_finite_loss(accelerator, loss, global_step + 1, args, stop.requested)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(model.parameters())
            global_step += 1
            progress.update(1)
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0], **logs}
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            if global_step % args.log_steps == 0:
                accelerator.log({f"train/{k}": v for k, v in logs.items()}, step=global_step)
            stopping = args.stop_after_steps is not None and global_step >= args.stop_after_steps
            if global_step % args.checkpointing_steps == 0 or stopping or stop_now:
                save(global_step)
            if stop_now:
                progress.close()
                accelerator.end_training()
                raise Interrupted(f"{os.path.join(args.output_dir, f'checkpoint-{global_step}')} (step "
                                  f"{global_step}); continue with --resume_from_checkpoint latest")
            if stopping and global_step < args.max_train_steps:
                accelerator.print(f"Stopping at step {global_step} (--stop_after_steps); resume with "
                                  "--resume_from_checkpoint latest.")
                progress.close()
                accelerator.end_training()
                return TrainingResult(model=accelerator.unwrap_model(model), global_step=global_step,
                                      metrics=metrics, history=history, finished=False, invocations=invocations)
            if args.eval_steps and global_step % args.eval_steps == 0 and global_step < args.max_train_steps:
                evaluate(global_step)
            if image_fn is not None and args.image_log_steps and global_step % args.image_log_steps == 0 \
                    and accelerator.is_main_process:
                with torch.random.fork_rng(devices=[]):
                    log_image_grid(accelerator, "samples", image_fn(accelerator.unwrap_model(model)), global_step)
            if global_step >= args.max_train_steps:
                done = True
                break
    progress.close()
    accelerator.wait_for_everyone()
    evaluate(global_step)
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(unwrapped.parameters())
    unwrapped.eval()
    if image_fn is not None and accelerator.is_main_process:
        with torch.random.fork_rng(devices=[]):
            log_image_grid(accelerator, "samples", image_fn(unwrapped), global_step)
    accelerator.end_training()
    run_record(global_step)
    return TrainingResult(model=unwrapped, global_step=global_step, metrics=metrics, history=history,
                          invocations=invocations)


class _StopOnSignal:
    """While active, the first Ctrl-C (SIGINT) or SIGTERM only asks the loop to stop after the current step (it saves
    a checkpoint first); a second Ctrl-C interrupts at once. Signals are only handled in the main thread."""

    def __init__(self):
        self.requested, self._previous = False, {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping (Ctrl-C "
              "again to stop at once, without saving).", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _check_finite_loss(accelerator, loss: torch.Tensor, step: int, args, stop_requested: bool = False) -> bool:
    """Stop at the first non-finite loss instead of training NaN weights for hours. Every process sees every
    process's loss (and whether any was asked to stop, which is returned), so all of them stop together."""
    gathered = accelerator.gather(torch.stack([loss.detach().float().reshape(()),
                                               torch.tensor(float(stop_requested), device=loss.device)]).reshape(1, 2))
    losses = gathered[:, 0]
    if not torch.isfinite(losses).all():
        raise ValueError(f"The training loss is {losses.tolist()} at step {step}: training diverged (the learning "
                         f"rate {args.learning_rate:g} or the gradients are too large for this model). Start over "
                         "with a lower --learning_rate or --max_grad_norm (--overwrite_output_dir), or resume from "
                         "the last checkpoint with them and --allow_changed_args, which applies the new values.")
    return bool(gathered[:, 1].any())


def _check_finite_state(accelerator, model, ema, step: int, output_dir) -> None:
    """A checkpoint with NaN or infinite weights (the model's or the EMA's) is never saved: the earlier ones stay."""
    bad = [name for name, p in accelerator.unwrap_model(model).named_parameters() if not torch.isfinite(p).all()]
    where = "weights"
    if not bad and ema is not None:
        bad = [f"#{i}" for i, p in enumerate(ema.shadow_params) if not torch.isfinite(p).all()]
        where = "EMA weights"
    if bad:
        raise ValueError(f"At step {step} the {where} hold NaN or infinity ({', '.join(bad[:3])}); no checkpoint is "
                         f"saved and the earlier ones in {output_dir} are kept. Resume from the last one with a lower "
                         "--learning_rate and --allow_changed_args, or start over.")


def _apply_changed_settings(args, changes: dict, optimizer, lr_scheduler, ema) -> None:
    """Make a resume with --allow_changed_args really use the new values: the optimizer's hyper-parameters and the
    lr schedule come back from the checkpoint, so they are set again here; the seed reseeds every RNG from here on.
    (Loss weights, eps, t range and the batch size are read from `args` by the loss and the data loader anew.)"""
    from accelerate.utils import set_seed

    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
    groups = optimizer.param_groups
    for group in groups:
        group.update(initial_lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                     weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [args.learning_rate for _ in groups]
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is not None:  # the lr of the current step under the new schedule and rate
        for group, fn in zip(groups, lambdas):
            group["lr"] = args.learning_rate * fn(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in groups]
    if ema is not None:
        ema.decay, ema.inv_gamma, ema.power = args.ema_max_decay, args.ema_inv_gamma, args.ema_power
    if "--seed" in changes:
        set_seed(args.seed)




def _check_rng_restored(checkpoint, process_index: int) -> None:
    """accelerate's `load_state` ignores an RNG state it fails to apply; an exact resume must not."""
    saved = load_rng_state(checkpoint / RNG_STATE.format(process_index))["torch_manual_seed"]
    if not torch.equal(torch.get_rng_state(), saved):
        raise ValueError(f"{checkpoint / RNG_STATE.format(process_index)} was not restored; resume would not be "
                         "exact (pass --allow_inexact_resume to continue anyway).")
