"""What every benchmark shares: the machine description, the pipeline, and writing results/<name>.json."""

import os
import platform
import sys
import time
from pathlib import Path

import torch

from diffusers_agdm.utils.io import atomic_write_json, markdown_table  # noqa: F401  (re-exported for the scripts)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = RESULTS_DIR.parents[1]


def portable(settings: dict) -> dict:
    """`settings` with paths inside the repository written relative to its root: a committed result names the
    folders of any checkout, not those of the machine that measured it."""
    root = str(REPO_ROOT) + os.sep

    def fix(value):
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str) and value.startswith(root):
            return value[len(root):]
        if isinstance(value, list | tuple):
            return [fix(v) for v in value]
        return value

    return {key: fix(value) for key, value in settings.items()}


def machine() -> dict:
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load(pipeline: str | None):
    from diffusers_agdm import load_pipeline

    pipe = load_pipeline(pipeline)
    pipe.set_progress_bar_config(disable=True)
    if torch.cuda.is_available():
        pipe.to("cuda")
    return pipe


def write_results(name: str, settings: dict, numbers, started: float, results_dir: Path = RESULTS_DIR) -> Path:
    """Write `<results_dir>/<name>.json` (atomically: a crash never leaves half a results file)."""
    import diffusers_agdm

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    payload = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "diffusers_agdm_version": diffusers_agdm.__version__, "machine": machine(),
               "settings": portable(settings),
               "wall_time_s": round(time.time() - started, 1), "results": numbers}
    atomic_write_json(path, payload)
    print(f"\nwrote {path}")
    return path
