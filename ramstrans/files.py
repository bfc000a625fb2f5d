"""Writing files so that nothing earlier is lost: every file is written to a temp name beside it, then renamed."""
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write", "write_text_atomic"]


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
