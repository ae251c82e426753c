"""The one atomic file write of the package: a reader, or a process killed mid-write, sees the old file or the new
one, never half of one. Every result, report, card and progress file is written through here."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` through a same-folder temporary file, flushed to disk, then renamed over `path`.

    The temporary name carries the process id, so two processes writing the same file never share a temporary file;
    on any failure (a full disk, an interrupt) the temporary file is removed and the old `path` is left untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text (newlines written as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, payload, indent: int | None = 2) -> Path:
    """`atomic_write_text` of `payload` as JSON (with a final newline when indented)."""
    text = json.dumps(payload, indent=indent)
    return atomic_write_text(path, text + "\n" if indent is not None else text)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table (the one table writer of reports, cards and benchmarks)."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoint manifests and the default's weight hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
