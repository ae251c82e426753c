"""Argument checks shared by the pipeline, the training scripts and the CLI: one wording for each rule."""

import math
import numbers


def check_int(name: str, value, minimum: int | None = 1) -> int:
    """Return `value` if it is an integer (not a bool) >= `minimum`; otherwise raise a `ValueError` naming `name`."""
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_int or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"`{name}` must be an integer{bound}, got {value!r}.")
    return int(value)


def check_finite(name: str, value, minimum: float | None = None, maximum: float | None = None,
                 inclusive_min: bool = True) -> float:
    """Return `value` as a float if it is a finite real number within the bounds (`minimum` inclusive unless
    `inclusive_min=False`, `maximum` inclusive); otherwise raise a `ValueError` naming `name` and the bounds."""
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = is_real and math.isfinite(value)
    if ok and minimum is not None:
        ok = value >= minimum if inclusive_min else value > minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>=' if inclusive_min else '>'} {minimum:g}")
        if maximum is not None:
            bounds.append(f"<= {maximum:g}")
        raise ValueError(f"`{name}` must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}, "
                         f"got {value!r}.")
    return float(value)
