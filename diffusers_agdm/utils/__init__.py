"""Small helpers shared across the package."""

from .validation import check_finite, check_int

__all__ = ["check_finite", "check_int"]
