"""Files that lose nothing: every file is written to a temp name beside it, then renamed; a folder that one process
works in is locked against a second one."""
import fcntl
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Union

__all__ = ["atomic_write", "write_text_atomic", "FileLock", "LockedError"]


def atomic_write(path: Union[str, Path], write: Callable[[str], None], fsync: bool = False) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it onto ``path``: a crash at any moment leaves
    either the old file or the new one, whole.

    Args:
        path: the file to (re)place.
        write: writes the content to the file name it is given.
        fsync: flush the temp file to disk before the rename (for files a resume depends on).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Union[str, Path], text: str) -> Path:
    """``Path.write_text`` through ``atomic_write``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class LockedError(ValueError):
    """Another live process holds the lock; the message says which."""


class FileLock:
    """An exclusive lock held through a lock file (``fcntl.flock``). The kernel drops it when the holder exits or is
    killed, so a lock file left by a dead process is never a stale lock; the file names the holder (pid, host, time).

    Args:
        path: the lock file (created if missing, never deleted).
        what: how to name the locked thing in the error, e.g. "run folder runs/x".
    """

    def __init__(self, path: Union[str, Path], what: str) -> None:
        self.path, self.what = Path(path), what
        self._fd: Optional[int] = None

    def acquire(self, wait: bool = False) -> "FileLock":
        """Take the lock; with ``wait``, block until the holder releases it.

        Raises:
            LockedError: without ``wait``, another process holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.what} is in use by {holder}; wait for it to finish or use another "
                              "folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 .encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire(wait=True)

    def __exit__(self, *exc) -> None:
        self.release()
