"""Small helpers shared across the package."""

from .diffusion import diffuse
from .models import sample_size
from .paths import check_output_dir
from .validation import check_finite, check_int

__all__ = ["check_finite", "check_int", "check_output_dir", "diffuse", "sample_size"]
