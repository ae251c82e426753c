"""Names that load on first use: a package's `__getattr__` and `__dir__` built from one {name: submodule} table, so
that `import diffusers_agdm` (and `agdm <command> --help`) stays cheap and torch loads only when a name needs it."""

import importlib


def lazy_names(package: str, namespace: dict, table: dict[str, str]):
    """The `__getattr__` and `__dir__` of `package` (whose globals are `namespace`) for the names in `table`, each
    imported from its relative submodule on first use and then cached in `namespace`.

    Example:

    ```py
    >>> __getattr__, __dir__ = lazy_names(__name__, globals(), {"diffuse": ".diffusion"})  # doctest: +SKIP
    ```
    """

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def __dir__():
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
