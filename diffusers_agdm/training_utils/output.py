"""The end of every training script: save the result with a model card, and push it when asked."""

import json
import os
import shlex
from pathlib import Path

from ..hub import make_model_card, push_folder_to_hub
from ..utils.io import atomic_write_text, markdown_table
from .loop import release_output_dir


def training_command(accelerator, args) -> str:
    """The command line of this run, as a person would type it again."""
    return _invocation_command(accelerator, args, {"argv": args.argv, "num_processes": accelerator.num_processes})


def _invocation_command(accelerator, args, invocation: dict) -> str:
    script = shlex.join(["training/" + args.script, *invocation.get("argv", [])])
    processes = invocation.get("num_processes", accelerator.num_processes)
    if processes > 1:
        return f"accelerate launch --num_processes {processes} {script}"
    return f"accelerate launch {script}"


def invocations_markdown(accelerator, args, invocations: list) -> str:
    """Every invocation of a resumed run, with its steps, its wall time and what it changed (--allow_changed_args)."""
    rows = []
    for i, run in enumerate(invocations, 1):
        changed = "; ".join(f"{flag} {old!r} -> {new!r}" for flag, (old, new) in run.get("changed", {}).items())
        rows.append([i, f"{run.get('from_step', '?')} -> {run.get('to_step', '?')}",
                     f"{run.get('wall_time_s', 0) / 60:.1f} min", changed or "-",
                     f"`{_invocation_command(accelerator, args, run)}`"])
    return markdown_table(["invocation", "steps", "wall time", "changed settings", "command"], rows)


def training_markdown(command: str, args, result, wall_time_s: float, extra: str = "",
                      accelerator=None) -> str:
    config = {k: v for k, v in sorted(vars(args).items()) if k not in ("hub_token", "argv", "script")}
    invocations = getattr(result, "invocations", None) or []
    if len(invocations) > 1:  # the whole run's wall time, not the last invocation's
        wall_time_s = sum(run.get("wall_time_s", 0) for run in invocations[:-1]) + wall_time_s
    lines = [
        "Trained with this project's own script (the diffusion model and the classifier, when present, frozen):",
        "", "```bash", command, "```", "",
        f"Steps: {result.global_step}; wall time: {wall_time_s / 60:.1f} min; seed: {args.seed}.", "",
    ]
    if len(invocations) > 1 and accelerator is not None:
        lines += ["The run was resumed; its invocations (the command above is the last):", "",
                  invocations_markdown(accelerator, args, invocations), ""]
    if result.metrics:
        lines += ["Final metrics on the images held back from training (`--eval_samples`):", "",
                  markdown_table(["metric", "value"], [[k, f"{v:.4f}"] for k, v in result.metrics.items()]), ""]
    if len(result.history) > 1:
        keys = list(result.history[0].keys())
        lines += ["Over training:", "",
                  markdown_table(keys, [[f"{row[k]:.4f}" if isinstance(row[k], float) else row[k] for k in keys]
                                        for row in result.history]), ""]
    if extra:
        lines += [extra, ""]
    lines += ["<details><summary>Full configuration</summary>", "", "```json", json.dumps(config, indent=2,
              default=str), "```", "", "</details>"]
    return "\n".join(lines)


def save_and_push(accelerator, args, obj, result, wall_time_s: float, *, description: str, dataset: str | None,
                  base_model: str | None = None, extra: str = "") -> None:
    """Save `obj` (a pipeline or a model) to `--output_dir` with its README.md card; upload with --push_to_hub.
    Runs on the main process only; ends this process's hold on `--output_dir` (`loop.lock_output_dir`)."""
    try:
        _save_and_push(accelerator, args, obj, result, wall_time_s, description=description, dataset=dataset,
                       base_model=base_model, extra=extra)
    finally:
        release_output_dir(args.output_dir)


def _save_and_push(accelerator, args, obj, result, wall_time_s: float, *, description: str, dataset: str | None,
                   base_model: str | None = None, extra: str = "") -> None:
    if not accelerator.is_main_process or not result.finished:
        return
    obj.save_pretrained(args.output_dir, safe_serialization=True)
    repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
    card = make_model_card(obj, repo_id, description=description, dataset=dataset, base_model=base_model,
                           training=training_markdown(training_command(accelerator, args), args, result, wall_time_s,
                                                      extra, accelerator=accelerator))
    atomic_write_text(os.path.join(args.output_dir, "README.md"), str(card))
    atomic_write_text(os.path.join(args.output_dir, "training_metrics.json"), json.dumps(
        {"global_step": result.global_step, "final": result.metrics, "history": result.history,
         "wall_time_s": wall_time_s, "command": training_command(accelerator, args), "seed": args.seed,
         "invocations": result.invocations}, indent=2))
    if args.push_to_hub:
        push_folder_to_hub(args.output_dir, repo_id, token=args.hub_token, private=args.hub_private_repo or None,
                           commit_message=f"Upload {type(obj).__name__} trained with diffusers-agdm")
