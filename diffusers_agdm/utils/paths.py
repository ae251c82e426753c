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


def check_model_source(flag: str, name_or_path: str | os.PathLike,
                       expected_files: tuple[str, ...] = ("model_index.json",), *, class_name: str | None = None,
                       local_only: bool = False) -> Path | None:
    """
    The one answer to "is this a saved model folder or a Hub id?", before anything is downloaded or loaded (every
    command and training script asks it). Returns the folder, or None for a Hub id; raises a `ValueError` naming
    `flag` for a file, a folder holding none of `expected_files`, a pipeline folder of another class than
    `class_name`, a local-looking path that does not exist, or a string that is no Hub repo id (or any Hub id when
    `local_only`).
    """
    import json

    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {text} is a file, not a model folder; give a folder or a Hub id.")
        if not any((path / name).is_file() for name in expected_files):
            raise ValueError(f"{flag} {text}: the folder holds no {' or '.join(expected_files)}; it is not a saved "
                             "model.")
        index = path / "model_index.json"
        if class_name is not None and index.is_file():
            try:
                found = json.loads(index.read_text()).get("_class_name")
            except (OSError, ValueError, AttributeError) as err:
                raise ValueError(f"{flag} {text}: cannot read its model_index.json ({err}).") from err
            if found != class_name:
                raise ValueError(f"{flag} {text} holds a {found}, not an {class_name}.")
        return path
    looks_local = text.startswith(("/", ".", "~")) or text.count("/") > 1 or (os.sep != "/" and os.sep in text)
    if looks_local or local_only:
        raise ValueError(f"{flag} {text}: no such folder.")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise ValueError(f"{flag} {text}: neither a local folder nor a Hub repo id.") from None
    return None
