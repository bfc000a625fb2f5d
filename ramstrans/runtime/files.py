"""Files that lose nothing: every file is written to a temp name beside it, then renamed; a folder that one process
works in is locked against a second one."""

import contextlib
import errno
import fcntl
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TextIO

from ramstrans.errors import UsageError

__all__ = [
    "atomic_write",
    "atomic_open",
    "write_text_atomic",
    "FileLock",
    "LockedError",
    "check_output",
    "reads_scope",
    "register_read",
    "same_file",
    "umask_mode",
    "full_disk_error",
    "is_full_disk",
]

# How a full disk shows in the messages of writers that hide the errno (torch's zip writer, safetensors).
_FULL_DISK_SIGNS = ("No space left", "file write failed", "unexpected pos")


def is_full_disk(e: BaseException) -> bool:
    """Whether an error raised while writing means the disk is full."""
    return getattr(e, "errno", None) == errno.ENOSPC or any(sign in str(e) for sign in _FULL_DISK_SIGNS)


def full_disk_error(path: str | Path) -> OSError:
    """The one sentence for a full disk, naming the file or folder being written (errno ENOSPC)."""
    error = OSError(f"no space left on device: {path}")
    error.errno = errno.ENOSPC
    return error


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` with the process's umask applied: what ``open`` / ``mkdir`` would give a new file or folder (a temp
    file from ``mkstemp`` is private, 0600, until it is given this mode)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file or folder: the same device and inode (symlinks and hard links included),
    or the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


# The files the running command has read, registered where each is opened (``register_read``): the path -> whether it
# is a folder whose every file is read (a data set's images). None outside a command (``reads_scope``).
_READS: ContextVar[dict[Path, bool] | None] = ContextVar("ramstrans_reads", default=None)


@contextlib.contextmanager
def reads_scope() -> Iterator[None]:
    """Collect, while the block runs (one command), every file the command reads, so that ``check_output`` refuses
    to write over any of them: companion graphs, temperature files, a run folder's checkpoint, data set lists."""
    token = _READS.set({})
    try:
        yield
    finally:
        _READS.reset(token)


def register_read(path: str | Path, tree: bool = False) -> None:
    """Note that the running command reads ``path`` (``tree``: every file under the folder ``path``, such as a data
    set's images, matched by resolved path); nothing outside ``reads_scope``."""
    reads = _READS.get()
    if reads is not None:
        reads[Path(path).expanduser()] = tree


def _refuse_tree(path: Path, out: str | Path, flag: str) -> None:
    """Refuse an output that is, holds, or replaces an existing file inside a folder whose every file the command
    reads (registered with ``tree``: a data set's folder), by resolved path."""
    for read, tree in (_READS.get() or {}).items():
        if not tree:
            continue
        here, root = path.resolve(), read.resolve()
        if here == root or here in root.parents:
            raise UsageError(f"{flag} {out} holds {read}, whose files the command reads: choose a folder of its own")
        if path.exists() and root in here.parents:
            raise UsageError(f"{flag} {out} is inside {read}, whose files the command reads: choose another output")


def check_output(out: str | Path, inputs: Sequence[str | Path], overwrite: bool = False, flag: str = "--out") -> Path:
    """The one guard of every writer: an output may never be one of the command's inputs (those given, and every file
    registered as read: ``register_read``), nor replace a file or a non-empty folder the user already has unless
    ``overwrite``.

    Args:
        out: the file or folder the command is about to write.
        inputs: the files and folders the command reads.
        overwrite: the user asked to replace ``out`` if it exists.
        flag: how the user named the output (for the message).

    Raises:
        UsageError: ``out`` is an input (or holds one: a folder output around an input), or exists without
            ``overwrite``.
    """
    path = Path(out).expanduser()
    _refuse_tree(path, out, flag)
    registered = [read for read, tree in (_READS.get() or {}).items() if not tree]
    for given in [*inputs, *registered]:
        inp = Path(given).expanduser()
        if same_file(path, inp):
            raise UsageError(
                f"{flag} {out} is one of the command's inputs ({given}): it would be destroyed; choose another output"
            )
        if path.is_dir() and path.resolve() in inp.resolve().parents:
            raise UsageError(f"{flag} {out} holds one of the command's inputs ({given}): choose a folder of its own")
    exists = path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))
    if exists and not overwrite:
        raise UsageError(f"{flag} {out} already exists; choose another output or pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def _temp_beside(path: Path, fsync: bool = False) -> Iterator[str]:
    """A temp file name beside ``path``, renamed onto it when the block ends without error (with the user's umask;
    flushed to disk first with ``fsync``), removed otherwise; a full disk is one sentence naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if is_full_disk(e):
            raise full_disk_error(path) from e
        raise OSError(f"cannot write {path} ({e.strerror or e})") from e  # not the temp name: the user's file
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())  # mkstemp's private 0600 would survive the rename
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and is_full_disk(e):
            raise full_disk_error(path) from e
        raise


def atomic_write(path: str | Path, write: Callable[[str], None], fsync: bool = False) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it onto ``path``: a crash at any moment leaves
    either the old file or the new one, whole.

    Args:
        path: the file to (re)place.
        write: writes the content to the file name it is given.
        fsync: flush the temp file to disk before the rename (for files a resume depends on).
    """
    path = Path(path)
    with _temp_beside(path, fsync) as tmp:
        write(tmp)
    return path


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[TextIO]:
    """A text file to write as results are made, which appears at ``path`` whole when the block ends without error
    (a temp name beside it until then; removed on an error, so ``path`` keeps what it held)."""
    with _temp_beside(Path(path)) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        yield f


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``Path.write_text`` through ``atomic_write``."""

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    return atomic_write(path, write)


class LockedError(ValueError):
    """Another live process holds the lock; the message says which."""


class FileLock:
    """An exclusive lock held through a lock file (``fcntl.flock``). The kernel drops it when the holder exits or is
    killed, so a lock file left by a dead process is never a stale lock; the file names the holder (pid, host, time).

    Args:
        path: the lock file (created if missing, never deleted).
        what: how to name the locked thing in the error, e.g. "run folder runs/x".
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> "FileLock":
        """Take the lock; with ``wait``, block until the holder releases it.

        Raises:
            LockedError: without ``wait``, another process holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as e:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.what} is in use by {holder}; wait for it to finish or use another folder") from e
        try:  # who holds it, for another process's message; the lock holds without it (a full disk)
            os.ftruncate(fd, 0)
            os.write(
                fd,
                f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(),
            )
        except OSError:
            pass
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

    def __exit__(self, *exc: object) -> None:
        self.release()
