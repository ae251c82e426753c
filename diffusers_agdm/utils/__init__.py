"""Small helpers shared across the package. The names below load on first use, so that the standard-library-only
helpers (`validation`, `paths`, `io`, `flags`) can be imported without torch (`agdm <command> --help`)."""

import importlib

_LAZY = {
    "diffuse": ".diffusion",
    "diffuse01": ".diffusion",
    "sample_size": ".models",
    "check_output_dir": ".paths",
    "check_finite": ".validation",
    "check_int": ".validation",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = list(_LAZY)
