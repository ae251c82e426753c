"""
Resumable evaluations: each finished unit of work is written to `<output_dir>/progress/<fingerprint>/` as it ends, so
rerunning the same command with the same output directory skips what is done. The fingerprint covers everything the
numbers depend on (the resolved settings, every component's config and the scheduler's, the weights' bytes, the
package version and the images; the number of processes does not matter), so a changed setting or pipeline never
reuses stale units, and the line that says so names what changed. Writes are atomic (temporary file, then rename): a
run killed mid-write leaves no half unit behind, and a unit damaged in any other way is named and computed again.
"""

import hashlib
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..utils.io import atomic_write_json
from ..utils.lock import FolderLock
from .planning import Job, Unit

# Settings that change how a run is shown or tolerated, not what it computes.
NOT_FINGERPRINTED = ("show_progress_bar", "allow_failed_sanity", "num_examples", "convergence_tolerance",
                     "convergence_alpha")
# What each part of a fingerprint covers, in the words a "recomputing because ... changed" line uses.
PART_NAMES = {"settings": "the evaluation settings", "configs": "the pipeline's component configs",
              "weights": "the pipeline's weights", "version": "the diffusers-agdm version", "images": "the images"}
PARTS_FILE = "fingerprint.json"


def _component_configs(pipeline) -> dict:
    """Every component's config (the scheduler's too) and the pipeline's own, as JSON-ready dicts. Private keys
    (`_name_or_path`, `_diffusers_version`, ...) say where a config came from, not what it computes: left out."""
    configs = {"pipeline": getattr(pipeline, "config", {})}
    components = getattr(pipeline, "components", None) or {
        name: getattr(pipeline, name, None) for name in ("unet", "scheduler", "guidance", "classifier")}
    for name, component in sorted(components.items()):
        configs[name] = getattr(component, "config", None) if component is not None else None
    return {name: None if config is None else
            {k: v for k, v in sorted(dict(config).items()) if not k.startswith("_") or k == "_class_name"}
            for name, config in configs.items()}


def _weights_digest(pipeline) -> str:
    """A content hash of every component's state dict (names and bytes), once per evaluation."""
    digest = hashlib.sha256()
    for name in ("unet", "guidance", "classifier"):
        component = getattr(pipeline, name, None)
        if isinstance(component, torch.nn.Module):
            digest.update(name.encode())
            for key, tensor in sorted(component.state_dict().items()):
                digest.update(key.encode())
                digest.update(str(tensor.dtype).encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _digest_json(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint_parts(config, pipeline, data, defenses: dict) -> dict:
    """A digest of each thing the per-unit records depend on: the resolved settings (and the defenses as
    described), every component's config, the weights, the package version and the images."""
    from .. import __version__

    settings = {k: v for k, v in asdict(config).items() if k not in NOT_FINGERPRINTED}
    images = hashlib.sha256()
    images.update(data.images.cpu().contiguous().numpy().tobytes())
    images.update(data.labels.cpu().numpy().tobytes())
    return {"settings": _digest_json({"settings": settings, "defenses": defenses}),
            "configs": _digest_json(_component_configs(pipeline)), "weights": _weights_digest(pipeline),
            "version": __version__, "images": images.hexdigest()}


def fingerprint_key(parts: dict) -> str:
    """The progress folder name of an evaluation whose `fingerprint_parts` are `parts`."""
    return _digest_json(parts)[:16]


def fingerprint(config, pipeline, data, defenses: dict) -> str:
    """A hash of everything the per-unit records depend on (see `fingerprint_parts`)."""
    return fingerprint_key(fingerprint_parts(config, pipeline, data, defenses))


def _encode(output: dict) -> dict:
    out = dict(output)
    if "job" in out:
        out["job"] = asdict(out["job"])
    if "examples" in out:
        out["examples"] = {k: v.tolist() if torch.is_tensor(v) else v for k, v in out["examples"].items()}
    return out


def _decode(payload: dict) -> dict:
    out = dict(payload)
    if "job" in out:
        names = {f.name for f in fields(Job)}
        out["job"] = Job(**{k: v for k, v in out["job"].items() if k in names})
    if "examples" in out:
        out["examples"] = {k: torch.tensor(v) for k, v in out["examples"].items()}
    return out


def _is_list_of(values, kinds, length: int) -> bool:
    return isinstance(values, list) and len(values) == length and all(
        isinstance(v, kinds) for v in values)


def _problem(unit: Unit, output) -> str | None:
    """Why a decoded unit file cannot be the output of `unit` (None when it can): it must have the shape
    `UnitRunner.run` returns, for this very unit."""
    if not isinstance(output, dict):
        return "not a JSON object"
    if not isinstance(output.get("seconds"), (int, float)):
        return "no time taken"
    if unit.job is None:
        if output.get("gradient_check") != unit.defense or not isinstance(output.get("check"), dict):
            return f"not the gradient check of {unit.defense}"
        return None
    if output.get("job") != unit.job or output.get("start") != unit.start:
        return "the records of another unit"
    n = unit.end - unit.start
    if not (_is_list_of(output.get("correct_runs"), int, n) and _is_list_of(output.get("run0_correct"), bool, n)
            and _is_list_of(output.get("predictions"), int, n)):
        return f"not {n} per-image records"
    if "examples" in output and not isinstance(output["examples"], dict):
        return "unreadable examples"
    return None


class ProgressStore:
    """Finished units of one evaluation, one JSON file each, under `root` (None: keep nothing). With `read=False`
    earlier units are ignored (recomputed) but new ones are still saved, so that run can be resumed in turn.

    With `parts` (`fingerprint_parts`), they are kept next to the units, and an earlier evaluation's progress in the
    same `root` that is not reused is announced with what changed. With `lock`, `root` is locked against a second
    evaluation (`FolderLock`) until `release()` or the store's end."""

    def __init__(self, root: str | Path | None, key: str, read: bool = True, parts: dict | None = None,
                 announce=None, lock: bool = False):
        self.folder = None if root is None else Path(root) / "progress" / key
        # One evaluation per folder (the main process of a launch holds it for all its ranks) while the store lives.
        self.lock = FolderLock(root, "evaluation") if lock and root is not None else None
        self.read = read
        self.parts = parts
        self.announce = announce or (lambda message: print(message, file=sys.stderr))
        if self.folder is not None and read and parts is not None and not self.folder.is_dir():
            self._explain_new_fingerprint()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _explain_new_fingerprint(self) -> None:
        earlier = [p for p in self.folder.parent.iterdir() if p.is_dir()] if self.folder.parent.is_dir() else []
        if not earlier:
            return
        newest = max(earlier, key=lambda p: p.stat().st_mtime)
        try:
            old = json.loads((newest / PARTS_FILE).read_text())
            changed = [PART_NAMES[k] for k in PART_NAMES if not isinstance(old, dict) or old.get(k) != self.parts[k]]
        except (OSError, ValueError):
            changed = []
        why = " and ".join(changed) if changed else "the pipeline or the settings"
        self.announce(f"Not reusing the earlier progress in {newest}: {why} changed; every unit is computed anew "
                      f"(into {self.folder}).")

    def _path(self, unit: Unit) -> Path:
        name = hashlib.sha256(unit.key.encode()).hexdigest()[:24]
        return self.folder / f"{name}.json"

    def load(self, unit: Unit) -> dict | None:
        """The saved output of `unit`, or None when there is none or it is damaged (any bytes at all: then the unit
        is named in a warning and run again)."""
        if self.folder is None or not self.read:
            return None
        path = self._path(unit)
        if not path.is_file():
            return None
        try:
            output = _decode(json.loads(path.read_bytes().decode("utf-8")))
            problem = _problem(unit, output)
        except Exception as err:  # noqa: BLE001 -- whatever the bytes, a damaged unit is recomputed, never fatal
            problem = f"unreadable ({type(err).__name__})"
        if problem is None:
            return output
        print(f"WARNING: the saved progress {path} ({unit.job.describe() if unit.job else unit.key}) is "
                      f"damaged ({problem}); computing it again.", file=sys.stderr)
        return None

    def save(self, unit: Unit, output: dict) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.parts is not None and not (self.folder / PARTS_FILE).is_file():
            atomic_write_json(self.folder / PARTS_FILE, self.parts)
        path = self._path(unit)
        atomic_write_json(path, _encode(output), indent=None)
