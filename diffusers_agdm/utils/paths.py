"""The output-folder check every entry point runs before any work (the CLI commands, the training scripts,
`evaluate`): a bad location must not cost a run."""

import os
import tempfile
from pathlib import Path


def check_output_dir(path: str | os.PathLike, flag: str = "--output_dir", create: bool = True) -> Path:
    """
    Return `path` as a `Path` if it is, or can be created as, a writable folder; otherwise raise a `ValueError`
    naming `flag`: an existing file there, a file in the way of creating it, or no permission to write.

    With `create=True` the folder is created and a temporary file written and removed in it (the proof that works
    on every file system); with `create=False` nothing is created (a parse-time check, before a run decides to
    start) and the nearest existing folder above it must allow writing.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is an existing file, not a folder.")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {folder} cannot be created: {existing} is a file, not a folder.")
    if not create:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {folder} is not a writable folder ({existing} does not allow writing).")
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise ValueError(f"{flag} {folder} is not a writable folder ({err.strerror or err}).") from err
    return folder
