"""
Resumable evaluations: each finished unit of work is written to `<output_dir>/progress/<fingerprint>/` as it ends, so
rerunning the same command with the same output directory skips what is done. The fingerprint covers everything the
numbers depend on (settings, pipeline weights, images, the number of processes does not matter), so a changed
setting never reuses stale units. Writes are atomic (temporary file, then rename): a run killed mid-write leaves no
half unit behind.
"""

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..utils.io import atomic_write_json
from .planning import Job, Unit

# Settings that change how a run is shown or tolerated, not what it computes.
NOT_FINGERPRINTED = ("show_progress_bar", "allow_failed_sanity", "num_examples", "convergence_tolerance",
                     "convergence_alpha")


def fingerprint(config, pipeline, data, defenses: dict) -> str:
    """A hash of everything the per-unit records depend on."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_FINGERPRINTED}
    digest.update(json.dumps({"settings": settings, "defenses": defenses}, sort_keys=True, default=str).encode())
    for component in (pipeline.unet, pipeline.guidance, pipeline.classifier):
        if isinstance(component, torch.nn.Module):
            for name, tensor in sorted(component.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(data.images.cpu().contiguous().numpy().tobytes())
    digest.update(data.labels.cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


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


class ProgressStore:
    """Finished units of one evaluation, one JSON file each, under `root` (None: keep nothing). With `read=False`
    earlier units are ignored (recomputed) but new ones are still saved, so that run can be resumed in turn."""

    def __init__(self, root: str | Path | None, key: str, read: bool = True):
        self.folder = None if root is None else Path(root) / "progress" / key
        self.read = read

    def _path(self, unit: Unit) -> Path:
        name = hashlib.sha256(unit.key.encode()).hexdigest()[:24]
        return self.folder / f"{name}.json"

    def load(self, unit: Unit) -> dict | None:
        if self.folder is None or not self.read:
            return None
        path = self._path(unit)
        if not path.is_file():
            return None
        try:
            return _decode(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError):
            return None  # unreadable: run the unit again

    def save(self, unit: Unit, output: dict) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(unit)
        atomic_write_json(path, _encode(output), indent=None)
