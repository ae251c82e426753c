"""Crash-safe training checkpoints.

A checkpoint is written into a hidden temporary folder (`.checkpoint-<step>.partial`), completed with a marker
(`checkpoint_complete.json`, listing every file and its size), and only then renamed to `checkpoint-<step>`; older
checkpoints are pruned after that rename. A process killed at any point of a save therefore leaves the previous
checkpoints intact, and `--resume_from_checkpoint latest` picks the newest *complete* one.

Resume is exact only when every process's RNG state comes back; accelerate's `load_state` swallows a missing or
unreadable `random_states_<i>.pkl`, so it is checked here first: an error, or with `--allow_inexact_resume` a loud
warning.
"""

import json
import os
import shutil
from pathlib import Path

import torch
from accelerate.logging import get_logger

logger = get_logger(__name__, log_level="INFO")

PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"
MARKER = "checkpoint_complete.json"
RNG_STATE = "random_states_{}.pkl"


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


def resume_problems(path: Path, num_processes: int) -> list[str]:
    """Why resuming from the complete checkpoint `path` with `num_processes` processes would not be exact (empty when
    it would be). Raises a `ValueError` naming the file when a file it needs beyond the RNG states is gone."""
    marker = _read_marker(path)
    if marker is None:
        raise ValueError(f"{path}: not a complete checkpoint (no readable {MARKER}).")
    rng_files = {RNG_STATE.format(i) for i in range(int(marker.get("num_processes", 1)))}
    problems = []
    for name, size in marker["files"].items():
        file = path / name
        if name in rng_files:
            continue
        if not file.is_file():
            raise ValueError(f"{file}: missing from a checkpoint that was saved complete; resume from another one.")
        if file.stat().st_size != size:
            raise ValueError(f"{file}: {file.stat().st_size} bytes, but {size} were saved; the checkpoint is "
                             "damaged, resume from another one.")
    for name in sorted(rng_files):
        file = path / name
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


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None) -> Path:
    """Save the training state to `<output_dir>/checkpoint-<step>` crash-safely (see the module docstring), then keep
    only the `total_limit` newest complete checkpoints. Every process calls this."""
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
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    _pause_point("after_state", step)
    if accelerator.is_main_process:
        files = {str(p.relative_to(partial)): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
        for name in files:  # on disk before the marker says they are
            _fsync(partial / name)
        _write_synced(partial / MARKER, json.dumps({"step": step, "num_processes": accelerator.num_processes,
                                                     "torch": torch.__version__, "files": files}, indent=1))
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
        if total_limit is not None:
            complete, _ = find_checkpoints(root)
            for old in [p for p in complete if p != final][: max(len(complete) - total_limit, 0)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info(f"Saved state to {final}")
    return final


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
