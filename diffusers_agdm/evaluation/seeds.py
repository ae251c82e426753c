"""Seeds derived from names, so every random draw of an evaluation is reproducible and independent of how the work
is split between processes or interrupted and resumed."""

import hashlib


def derive_seed(*parts) -> int:
    """A 60-bit seed from any tuple of ints and strings, the same in every process and Python run (unlike hash())."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)
