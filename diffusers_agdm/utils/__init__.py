"""Small helpers shared across the package."""

from .diffusion import diffuse
from .models import sample_size
from .validation import check_finite, check_int

__all__ = ["check_finite", "check_int", "diffuse", "sample_size"]
