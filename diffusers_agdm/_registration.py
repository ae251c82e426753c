"""Make Diffusers' generic loaders understand this package, so no `trust_remote_code` is ever needed.

Diffusers 0.42 resolves a pipeline's `_class_name` with `getattr(diffusers, name)` and, for a Hub repo id, rejects
any component library it does not know unless a `<library>.py` file ships in the repo (remote code). Declaring
`diffusers_agdm` a loadable library, the way Diffusers declares `transformers`, fixes both at the root:
`save_pretrained` then records our components as `["diffusers_agdm", "GuidanceModel"]`, the Hub check accepts that
name, and `DiffusionPipeline.from_pretrained(...)` builds our classes from this installed package.

`import diffusers_agdm` must stay cheap (the `agdm` command's `--help` would otherwise pay seconds for torch), so the
registration happens when Diffusers is (or already was) imported, not when this package is:
`register_when_diffusers_loads()` registers at once if Diffusers is loaded and otherwise waits for its import.
`diffusers_agdm.pipelines` registers its pipeline class as soon as the class exists.
"""

import importlib
import importlib.abc
import importlib.util
import sys

LIBRARY_NAME = "diffusers_agdm"


def register_with_diffusers(pipeline_classes) -> None:
    import diffusers
    from diffusers.pipelines import pipeline_loading_utils

    pipeline_loading_utils.LOADABLE_CLASSES.setdefault(
        LIBRARY_NAME, {"ModelMixin": ["save_pretrained", "from_pretrained"]})
    for cls in pipeline_classes:
        setattr(diffusers, cls.__name__, cls)


def _import_pipelines() -> None:
    # When our own pipeline module is what imported Diffusers, `diffusers_agdm.pipelines` is half-initialised
    # here; `import_module` returns it as is and it registers itself once its class exists.
    importlib.import_module(f"{LIBRARY_NAME}.pipelines")


class _RegisterAfterDiffusersImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps Diffusers' own loader so our classes are registered right after
    `import diffusers` finishes, whoever imports it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "diffusers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("diffusers")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _import_pipelines()

        spec.loader.exec_module = exec_then_register
        return spec


def register_when_diffusers_loads() -> None:
    if "diffusers" in sys.modules:
        _import_pipelines()
    elif not any(isinstance(finder, _RegisterAfterDiffusersImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterDiffusersImport())
