"""Crash-safe training checkpoints.

A checkpoint is written into a hidden temporary folder (`.checkpoint-<step>.partial`) with the run's settings and
invocations (`training_run.json`) and a manifest of every file's SHA-256 (`checkpoint_manifest.json`), completed
with a marker (`checkpoint_complete.json`, listing every file and its size), and only then renamed to
`checkpoint-<step>`; older checkpoints are pruned after that rename, and only once the new one verifies. A process
killed at any point of a save therefore leaves the previous checkpoints intact, and `--resume_from_checkpoint latest`
picks the newest *complete* one. A resume checks every file against the manifest (a flipped byte is named) and the
weights for NaN or infinity.

A resume is the same run: a setting that changes the optimisation differs from the checkpoint's only with
`--allow_changed_args`, which then applies it and records it (`changed_settings`).

Resume is exact only when every process's RNG state comes back; accelerate's `load_state` swallows a missing or
unreadable `random_states_<i>.pkl`, so it is checked here first: an error, or with `--allow_inexact_resume` a loud
warning.
"""

import errno
import json
import os
import shutil
from pathlib import Path

import torch
from accelerate.logging import get_logger

from ..utils.io import atomic_write_json, file_sha256

logger = get_logger(__name__, log_level="INFO")

PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"
MARKER = "checkpoint_complete.json"
RNG_STATE = "random_states_{}.pkl"
MANIFEST = "checkpoint_manifest.json"
RUN_FILE = "training_run.json"
# Settings a resume may change freely: where things go, how often to log, save or measure, when to stop. Every other
# setting (learning rate and schedule, seed, batch size, loss weights, eps, t range, model, data, ...) changes what
# is trained, so a resume that changes it is refused unless --allow_changed_args.
RESUME_NEUTRAL_ARGS = frozenset({
    "output_dir", "resume_from_checkpoint", "allow_inexact_resume", "allow_changed_args", "overwrite_output_dir",
    "stop_after_steps", "report_to", "logging_dir", "log_steps", "eval_steps", "image_log_steps",
    "dataloader_num_workers", "checkpointing_steps", "checkpoints_total_limit", "push_to_hub", "hub_model_id",
    "hub_token", "hub_private_repo", "argv", "script",
})


def checkpoint_step(path: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder name, else None."""
    name = Path(path).name
    if not name.startswith(PREFIX) or not name[len(PREFIX):].isdigit():
        return None
    return int(name[len(PREFIX):])


def _pause_point(point: str, step: int) -> None:
    """A named point of the save of `step` (in order: start, after_model, after_state, before_rename, before_prune).
    Does nothing; the crash tests replace it to SIGKILL a run exactly there."""


def saved_step(path: Path) -> int:
    """The step a complete checkpoint was saved at (its marker's, else its folder name's)."""
    marker = _read_marker(Path(path)) or {}
    step = marker.get("step", checkpoint_step(path))
    if not isinstance(step, int):
        raise ValueError(f"{path}: its {MARKER} names no step.")
    return step


def _read_marker(path: Path) -> dict | None:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), dict) else None


def find_checkpoints(output_dir: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) `checkpoint-<step>` folders of `output_dir`, each sorted by step; a folder is complete
    when it holds the marker its save writes last. Interrupted saves (`.checkpoint-*.partial`) count as incomplete."""
    root = Path(output_dir)
    if not root.is_dir():
        return [], []
    complete, incomplete = [], []
    for path in root.iterdir():
        if path.is_dir() and checkpoint_step(path) is not None:
            (complete if _read_marker(path) is not None else incomplete).append(path)
        elif path.is_dir() and path.name.startswith("." + PREFIX) and path.name.endswith(PARTIAL_SUFFIX):
            incomplete.append(path)
    return sorted(complete, key=checkpoint_step), sorted(incomplete, key=lambda p: p.name)


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str | os.PathLike,
                   announce=print) -> Path | None:
    """The checkpoint folder to resume from: `"latest"` is the newest complete one in `output_dir` (None when there
    is none; incomplete ones are named and skipped); any other value must be a complete checkpoint folder. Raises a
    `ValueError` naming the path otherwise."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        complete, incomplete = find_checkpoints(output_dir)
        newest = complete[-1] if complete else None
        skipped = [p for p in incomplete if newest is None or checkpoint_step(p) is None
                   or checkpoint_step(p) > checkpoint_step(newest)]
        if skipped:
            announce(f"Ignoring incomplete checkpoint(s) (an interrupted save): {', '.join(str(p) for p in skipped)}")
        return newest
    path = Path(resume_from_checkpoint)
    if not path.exists():
        raise ValueError(f"--resume_from_checkpoint {path}: no such folder.")
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {path}: not a folder.")
    if _read_marker(path) is None:
        raise ValueError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no readable {MARKER}; its "
                         "save was interrupted, or this is not a checkpoint folder).")
    return path


def load_rng_state(file: Path) -> dict:
    from accelerate.utils import load  # the loader accelerate's load_state uses (weights_only=True)

    states = load(file)
    missing = [k for k in ("random_state", "numpy_random_seed", "torch_manual_seed") if k not in states]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    return states


def _read_manifest(path: Path) -> dict | None:
    """The manifest's {file: sha256}, None for a checkpoint saved before manifests existed."""
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())["sha256"]
        if not isinstance(manifest, dict):
            raise TypeError("not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{file}: unreadable ({type(err).__name__}); the checkpoint is damaged, resume from "
                         "another one.") from None
    return manifest


def _non_finite_tensor(obj) -> str | None:
    """The name of the first floating tensor in `obj` (nested dicts and lists) with a NaN or infinity, else None."""
    if torch.is_tensor(obj):
        return "" if obj.is_floating_point() and not torch.isfinite(obj).all() else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite_tensor(value)
        if found is not None:
            return f"{key}.{found}".rstrip(".")
    return None


def check_finite_weights(path: Path) -> None:
    """Raise a `ValueError` naming the file and tensor when a checkpoint's weights (safetensors) or optimizer state
    hold a NaN or infinity: resuming from it would train garbage, or stop at once as a "divergence"."""
    from safetensors.torch import load_file

    for file in sorted(path.rglob("*.safetensors")):
        bad = _non_finite_tensor(load_file(str(file)))
        if bad is not None:
            raise ValueError(f"{file}: the tensor {bad} holds NaN or infinity; this checkpoint is not usable, resume "
                             "from an earlier one.")
    for file in sorted(path.glob("optimizer*.bin")):
        bad = _non_finite_tensor(torch.load(file, map_location="cpu", weights_only=True))
        if bad is not None:
            raise ValueError(f"{file}: the optimizer state {bad} holds NaN or infinity; this checkpoint is not "
                             "usable, resume from an earlier one.")


def verify_files(path: Path) -> dict:
    """Check every file the marker lists is there with its size and (when the checkpoint has a manifest) its SHA-256;
    raise a `ValueError` naming the first that is not, except the RNG states, whose problems are returned
    ({file name: problem}) for `resume_problems` to judge."""
    marker = _read_marker(path)
    if marker is None:
        raise ValueError(f"{path}: not a complete checkpoint (no readable {MARKER}).")
    rng_files = {RNG_STATE.format(i) for i in range(int(marker.get("num_processes", 1)))}
    manifest = _read_manifest(path)
    rng_problems = {}
    for name, size in marker["files"].items():
        file = path / name
        if not file.is_file():
            if name in rng_files:
                rng_problems[name] = f"{file} is missing"
                continue
            raise ValueError(f"{file}: missing from a checkpoint that was saved complete; resume from another one.")
        problem = None
        if file.stat().st_size != size:
            problem = f"{file.stat().st_size} bytes, but {size} were saved"
        elif manifest is not None and name != MANIFEST and manifest.get(name) != file_sha256(file):
            problem = "its content differs from what was saved (SHA-256 mismatch)"
        if problem is not None and name in rng_files:
            rng_problems[name] = f"{file}: {problem}"
        elif problem is not None:
            raise ValueError(f"{file}: {problem}; the checkpoint is damaged, resume from another one.")
    return rng_problems


def verify_checkpoint(path: Path) -> None:
    """Raise a `ValueError` naming the file when the checkpoint `path` is damaged in any way (RNG states included) or
    holds non-finite weights."""
    rng_problems = verify_files(path)
    if rng_problems:
        raise ValueError(next(iter(rng_problems.values())) + "; the checkpoint is damaged.")
    check_finite_weights(path)


def resume_problems(path: Path, num_processes: int) -> list[str]:
    """Why resuming from the complete checkpoint `path` with `num_processes` processes would not be exact (empty when
    it would be). Raises a `ValueError` naming the file when a file it needs beyond the RNG states is gone, differs
    from what was saved, or holds non-finite weights."""
    marker = _read_marker(path)
    if marker is None:
        raise ValueError(f"{path}: not a complete checkpoint (no readable {MARKER}).")
    rng_files = {RNG_STATE.format(i) for i in range(int(marker.get("num_processes", 1)))}
    rng_problems = verify_files(path)
    check_finite_weights(path)
    problems = []
    for name in sorted(rng_files):
        file = path / name
        if name in rng_problems:
            problems.append(rng_problems[name])
            continue
        if not file.is_file():
            problems.append(f"{file} is missing")
            continue
        try:
            load_rng_state(file)
        except Exception as err:  # noqa: BLE001 -- any failure means the RNG state does not come back
            problems.append(f"{file} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
    saved_processes = int(marker.get("num_processes", 1))
    if saved_processes != num_processes:
        problems.append(f"it was saved by {saved_processes} process(es) and resumes with {num_processes}")
    return problems


def check_exact_resume(path: Path, num_processes: int, allow_inexact: bool, warn=None) -> bool:
    """Raise a `ValueError` unless resuming from `path` is exact; with `allow_inexact`, warn loudly instead. Returns
    whether the resume is exact."""
    problems = resume_problems(path, num_processes)
    if not problems:
        return True
    text = "; ".join(problems)
    if not allow_inexact:
        raise ValueError(f"Resuming from {path} would not be exact: {text}. Resume from another checkpoint, or pass "
                         "--allow_inexact_resume to continue with different random draws.")
    message = (f"WARNING: resuming from {path} is NOT exact ({text}); the run continues with different random draws "
               "than an uninterrupted run and its result will differ (--allow_inexact_resume).")
    logger.warning(message)
    if warn is not None:
        warn(message)
    return False


def _plain(value):
    """`value` as JSON gives it back (tuples become lists), so saved and current settings compare equal."""
    return json.loads(json.dumps(value, default=str))


def run_settings(args) -> dict:
    """The settings of a run, as `training_run.json` records them (no token)."""
    return {k: _plain(v) for k, v in sorted(vars(args).items()) if k != "hub_token"}


def read_run(path: Path) -> dict:
    """The `training_run.json` of checkpoint `path` ({} for a checkpoint saved before it existed)."""
    file = Path(path) / RUN_FILE
    if not file.is_file():
        return {}
    try:
        run = json.loads(file.read_text())
        return run if isinstance(run, dict) else {}
    except (OSError, ValueError):
        return {}


def changed_settings(path: Path, args) -> dict:
    """{flag: (the checkpoint's value, this invocation's)} for every setting that changes what is trained."""
    saved = read_run(path).get("args")
    if not isinstance(saved, dict):
        return {}
    now = run_settings(args)
    return {f"--{k}": (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
            if k not in RESUME_NEUTRAL_ARGS and saved.get(k) != now.get(k)}


def check_same_run(path: Path, args) -> dict:
    """Raise a `ValueError` naming the flags when resuming from `path` would change what is trained, unless
    `args.allow_changed_args`; returns the changes (applied and recorded by the loop)."""
    saved_script = read_run(path).get("args", {}).get("script")
    if saved_script and getattr(args, "script", None) and saved_script != args.script:
        raise ValueError(f"{path} is a checkpoint of {saved_script}, not of {args.script}; resume it with "
                         f"{saved_script}, or give {args.script} one of its own checkpoints.")
    changes = changed_settings(path, args)
    if changes and not getattr(args, "allow_changed_args", False):
        listed = ", ".join(f"{flag} {old!r} -> {new!r}" for flag, (old, new) in changes.items())
        raise ValueError(f"Resuming from {path} with settings that change what is trained: {listed}. A resume "
                         "continues the same run: drop these flags, or pass --allow_changed_args to apply the new "
                         "values from here on (recorded in the model card).")
    return changes


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None,
                    run: dict | None = None) -> Path:
    """Save the training state to `<output_dir>/checkpoint-<step>` crash-safely (see the module docstring) with
    `run` (the settings and invocations, `training_run.json`), then, once it verifies, keep only the `total_limit`
    newest complete checkpoints. Every process calls this."""
    root = Path(output_dir)
    final = root / f"{PREFIX}{step}"
    partial = root / f".{PREFIX}{step}{PARTIAL_SUFFIX}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f".{PREFIX}*{PARTIAL_SUFFIX}"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        partial.mkdir()
    accelerator.wait_for_everyone()
    _pause_point("start", step)
    try:
        accelerator.save_state(str(partial))
    except (OSError, RuntimeError) as err:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        error = _save_error(err, final)
        if error is err:
            raise
        raise error from err
    accelerator.wait_for_everyone()
    _pause_point("after_state", step)
    if accelerator.is_main_process:
        try:
            _complete(partial, step, accelerator.num_processes, run)
        except OSError as err:  # e.g. the disk filled up: no half-complete save is left behind
            shutil.rmtree(partial, ignore_errors=True)
            raise _save_error(err, final) from err
        _pause_point("before_rename", step)
        if final.exists():  # a step saved again (a resume from an older checkpoint): replace it whole
            old = root / f".{PREFIX}{step}.replaced{PARTIAL_SUFFIX}"
            os.replace(final, old)
            os.replace(partial, final)
            shutil.rmtree(old)
        else:
            os.replace(partial, final)
        _fsync(root)
        _pause_point("before_prune", step)
        # What was written is what was meant, before an older good checkpoint is pruned.
        for problem in verify_files(final).values():
            raise ValueError(f"{problem}: the checkpoint just saved does not verify; the earlier ones are kept.")
        if total_limit is not None:
            complete, _ = find_checkpoints(root)
            for old in [p for p in complete if p != final][: max(len(complete) - total_limit, 0)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info(f"Saved state to {final}")
    return final


def _complete(partial: Path, step: int, num_processes: int, run: dict | None) -> None:
    """Write the run record, the SHA-256 manifest and, last, the marker that makes `partial` a complete save."""
    if run is not None:
        atomic_write_json(partial / RUN_FILE, run)
    names = [str(p.relative_to(partial)) for p in sorted(partial.rglob("*")) if p.is_file()]
    for name in names:  # on disk before the manifest and the marker say they are
        _fsync(partial / name)
    atomic_write_json(partial / MANIFEST, {"sha256": {name: file_sha256(partial / name) for name in names}})
    files = {str(p.relative_to(partial)): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
    _write_synced(partial / MARKER, json.dumps({"step": step, "num_processes": num_processes,
                                                 "torch": torch.__version__, "files": files}, indent=1))


def _save_error(err: BaseException, final: Path) -> BaseException:
    """A failed save as one line: a full disk says so (torch reports it as an "iostream error" or "file write
    failed"), any other OSError is named; anything else is left as it is (a bug)."""
    full = isinstance(err, OSError) and err.errno == errno.ENOSPC
    if not full and ("write" in str(err).lower() or isinstance(err, OSError)):
        try:
            full = shutil.disk_usage(final.parent).free < 16 * 2**20
        except OSError:
            pass
    if full:
        return OSError(errno.ENOSPC, f"No space left on device while saving {final}; the earlier checkpoints are "
                                     "kept. Free some space, then resume with --resume_from_checkpoint latest")
    if isinstance(err, OSError):
        return ValueError(f"cannot save {final}: {' '.join(str(err).split())}; the earlier checkpoints are kept.")
    return err


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    finally:
        os.close(fd)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def pause_after_model(save_dir: str | os.PathLike) -> None:
    """Called by the save hook once the model weights are written (before the optimizer and RNG states)."""
    name = Path(save_dir).name
    if name.startswith("." + PREFIX) and name.endswith(PARTIAL_SUFFIX):
        step = name[len(PREFIX) + 1:-len(PARTIAL_SUFFIX)]
        if step.isdigit():
            _pause_point("after_model", int(step))
