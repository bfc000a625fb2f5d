"""The image files a user names: files, folders (walked recursively, hidden ones skipped) and globs, in order and
without repeats; a folder that cannot be listed is reported, not dropped."""

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from ramstrans.data.formats.folder import IMAGE_EXTENSIONS
from ramstrans.errors import DataError

__all__ = ["expand_paths"]


def _walk_images(folder: Path, unlistable: list[tuple[Path, str]]) -> list[Path]:
    """Image files under ``folder`` (hidden files and folders skipped), sorted; a folder that cannot be listed goes
    into ``unlistable`` with the reason instead of vanishing."""

    def failed(e: OSError) -> None:
        unlistable.append((Path(e.filename or folder), f"cannot be listed ({e.strerror or type(e).__name__})"))

    found = []
    for here, dirs, files in os.walk(folder, onerror=failed):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(here) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def expand_paths(paths: Sequence[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given, folders walked recursively for image files (hidden ones skipped), globs expanded; in order,
    without repeats.

    Returns:
        (image files, (folder, reason) of every folder that could not be listed).

    Raises:
        FileNotFoundError: a path (or glob) that matches nothing.
        DataError: a folder that holds no image files (and none it could not list).
    """
    out: dict[Path, None] = {}
    unlistable: list[tuple[Path, str]] = []
    for raw in paths:
        matches = sorted(glob.glob(raw, recursive=True)) if glob.has_magic(raw) else [raw]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise FileNotFoundError(
                f"{raw} does not exist" + (" (the pattern matches nothing)" if glob.has_magic(raw) else "")
            )
        for m in map(Path, matches):
            if m.is_dir():
                before = len(unlistable)
                found = _walk_images(m, unlistable)
                if not found and len(unlistable) == before:
                    raise DataError(f"folder {m} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
                out.update(dict.fromkeys(found))
            else:
                out[m] = None
    return list(out), unlistable
