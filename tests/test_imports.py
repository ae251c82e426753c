"""`import diffusers_agdm` is cheap and still makes Diffusers understand our pipeline, in any import order; the `agdm`
command modules import no heavy library at module level and sit in no import circle."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "diffusers_agdm"
# What `DiffusionPipeline.from_pretrained` needs of a registration (test_default.py loads the real thing).
LOAD = ("import diffusers\nfrom diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES\n"
        "assert 'diffusers_agdm' in LOADABLE_CLASSES\nprint(diffusers.AdversarialGuidedPurificationPipeline.__name__)")


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_importing_the_package_loads_no_torch():
    assert _run("import sys, diffusers_agdm; print('torch' in sys.modules, 'diffusers' in sys.modules)").strip() \
        == "False False"


# Diffusers first, then us: the order of every other test module (tests import diffusers before diffusers_agdm).
@pytest.mark.parametrize("first", [
    "import diffusers_agdm\nfrom diffusers import DiffusionPipeline",      # ours first, Diffusers later
    "import diffusers_agdm.models\nfrom diffusers import DiffusionPipeline\nimport diffusers_agdm",  # ours pulls it in
])
def test_diffusion_pipeline_loads_ours_in_any_import_order(first):
    assert _run(f"{first}\n{LOAD}").strip().endswith("AdversarialGuidedPurificationPipeline")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Package modules imported when `path` is imported (not inside functions)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("diffusers_agdm"):
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("diffusers_agdm"))
    return found


def test_command_modules_are_in_no_import_circle_and_import_nothing_heavy():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _top_level_imports(path) if m in modules and m != name}
             for name, path in modules.items()}

    def reaches(start, goal, seen=()):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt))) for nxt in graph[start])

    mine = [m for m in modules if m.startswith(("diffusers_agdm.commands", "diffusers_agdm.cli", "diffusers_agdm.hub",
                                                "diffusers_agdm.demo", "diffusers_agdm._registration"))]
    assert mine
    for name in mine:
        assert not reaches(name, name), f"{name} is in an import circle"
    for name in [m for m in mine if m.startswith(("diffusers_agdm.commands", "diffusers_agdm.cli"))]:
        heavy = [n.names[0].name for n in ast.parse(modules[name].read_text()).body
                 if isinstance(n, (ast.Import, ast.ImportFrom)) and (getattr(n, "module", None) or n.names[0].name)
                 .split(".")[0] in ("torch", "diffusers", "transformers", "datasets", "gradio", "numpy")]
        assert not heavy, f"{name} imports {heavy} at module level"
