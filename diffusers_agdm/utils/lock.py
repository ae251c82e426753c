"""One run per output folder: `<folder>/.lock`, held with `fcntl.flock` for as long as the run lives. The kernel drops
the lock when the process ends in any way (SIGKILL included), so a crashed run never blocks its own resume; a stale
`.lock` file left behind is harmless."""

import os
from pathlib import Path

LOCK_NAME = ".lock"


class FolderLock:
    """Hold `<folder>/.lock` (created with `folder`) or raise a one-line `ValueError` naming the process that holds
    it. Released by `release()`, on garbage collection, or when the process ends."""

    def __init__(self, folder: str | os.PathLike, what: str, flag: str = "--output_dir"):
        self.path = Path(folder) / LOCK_NAME
        self._file = None
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ValueError(f"{flag} {folder} is in use by another {what} ({holder}); wait for it to end or choose "
                             f"another {flag}.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        self.release()
