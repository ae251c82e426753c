"""`import diffusers_agdm` is cheap and still makes Diffusers understand our pipeline, in any import order; the `agdm`
command modules import no heavy library at module level; no module of the package sits in an import circle."""

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


def _executed_at_import(body: list[ast.stmt]):
    """The import statements Python runs when the module is imported: at module level, inside top-level `try`/`if`
    /`with` blocks and class bodies, but not inside functions or under `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _executed_at_import(node.body)
            yield from _executed_at_import(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _executed_at_import(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _executed_at_import(node.body)


def _top_level_imports(path: Path) -> set[str]:
    """Package modules imported when `path` is imported (not inside functions)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in _executed_at_import(ast.parse(path.read_text()).body):
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


def _import_graph() -> dict[str, set[str]]:
    """Every package module -> the package modules that importing it runs. Importing `a.b.c` also runs `a.b` and
    `a` (their `__init__`), except those the importer sits inside: they are already running or done."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        ancestors = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        edges = set()
        for imported in _top_level_imports(path):
            parts = imported.split(".")
            edges.update(prefix for prefix in (".".join(parts[:i]) for i in range(1, len(parts)))
                         if prefix not in ancestors)
            edges.add(imported)
        graph[name] = {m for m in edges if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_in_the_package():
    graph = _import_graph()
    assert len(graph) > 40 and graph["diffusers_agdm.evaluation.runner"]  # the walk found the package's modules
    assert _cycles(graph) == [], "modules in an import circle"


def test_the_circle_finder_finds_a_circle():
    # The same finder on a graph that has one (a <-> b, c alone) and on the package with one edge added back.
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    graph = _import_graph()
    graph["diffusers_agdm.evaluation.report"].add("diffusers_agdm.evaluation.runner")
    assert any("diffusers_agdm.evaluation.runner" in cycle for cycle in _cycles(graph))


def test_command_modules_are_in_no_import_circle_and_import_nothing_heavy():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = _import_graph()

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
