"""Small helpers shared across the package. The names below load on first use, so that the standard-library-only
helpers (`validation`, `paths`, `io`, `flags`) can be imported without torch (`agdm <command> --help`)."""

from .lazy import lazy_names

_LAZY = {
    "diffuse": ".diffusion",
    "diffuse01": ".diffusion",
    "sample_size": ".models",
    "check_output_dir": ".paths",
    "check_finite": ".validation",
    "check_int": ".validation",
}


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)


__all__ = list(_LAZY)
