"""Image files as a user names them, decoded as every part of ramstrans decodes them: files, folders (walked
recursively, hidden ones skipped) and globs, in order and without repeats (a folder that cannot be listed is reported,
not dropped); any decodable file to (H, W, 3) uint8 RGB with OpenCV, which applies the EXIF orientation (a phone photo
taken sideways comes out upright; timm's own ``inference.py`` reads with PIL, which does not)."""

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from ramstrans.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "read_image", "check_paths", "iter_paths", "expand_paths"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


class ImageReadError(DataError):
    """An image file that cannot be used; ``reason`` says why ("cannot be decoded (the file is empty)", ...)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"image {path} {reason}")
        self.path, self.reason = path, reason


def read_image(path: str | Path) -> np.ndarray:
    """Decode any image file to (H, W, 3) uint8 RGB: grayscale, CMYK, 16-bit, RGBA, or PNG bytes behind a .jpg name.
    Every decoder failure (an empty file, corrupt bytes, a decompression bomb) becomes an ``ImageReadError``.

    Raises:
        ImageReadError: the file does not exist, or its bytes are not a decodable image, or one too large to decode.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(path, "cannot be decoded (the file is empty)")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # by content, not by name; EXIF orientation applied
    except cv2.error as e:  # OpenCV asserts instead of returning None for some inputs (e.g. a decompression bomb)
        if "MAX_IMAGE_PIXELS" in str(e):
            raise ImageReadError(
                path, "is too large to decode (more pixels than OpenCV's CV_IO_MAX_IMAGE_PIXELS)"
            ) from e
        raise ImageReadError(path, f"cannot be decoded (OpenCV: {str(e).strip().splitlines()[-1][:80]})") from e
    if img is None or img.size == 0:
        raise ImageReadError(path, "cannot be decoded (corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _walk_images(folder: Path, unlistable: list[tuple[Path, str]]) -> Iterator[Path]:
    """Image files under ``folder`` (hidden files and folders skipped, symlinked folders not entered, as ``os.walk``
    does), in the order of their sorted paths, one directory listed at a time; a folder that cannot be listed goes
    into ``unlistable`` with the reason instead of vanishing."""
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)  # files and folders by name: the order of sorted paths
    except OSError as e:
        unlistable.append((Path(e.filename or folder), f"cannot be listed ({e.strerror or type(e).__name__})"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if not entry.is_symlink():
                yield from _walk_images(folder / entry.name, unlistable)
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            yield folder / entry.name


def _matches(raw: str) -> list[Path]:
    """A path as given, or a glob's matches (sorted).

    Raises:
        FileNotFoundError: a path (or glob) that matches nothing.
    """
    matches = sorted(glob.glob(raw, recursive=True)) if glob.has_magic(raw) else [raw]
    if not matches or not all(os.path.exists(m) for m in matches):
        raise FileNotFoundError(
            f"{raw} does not exist" + (" (the pattern matches nothing)" if glob.has_magic(raw) else "")
        )
    return [Path(m) for m in matches]


def check_paths(paths: Sequence[str]) -> list[Path]:
    """The files and folders ``paths`` name (globs expanded), refused before any file is read where one does not
    exist or a folder holds no image files.

    Raises:
        FileNotFoundError: a path (or glob) that matches nothing.
        DataError: a folder that holds no image files (and none it could not list).
    """
    matches = [m for raw in paths for m in _matches(raw)]
    for m in matches:
        probe: list[tuple[Path, str]] = []
        if m.is_dir() and next(_walk_images(m, probe), None) is None and not probe:  # stops at the first image
            raise DataError(f"folder {m} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return matches


def iter_paths(matches: Sequence[Path], unlistable: list[tuple[Path, str]]) -> Iterator[Path]:
    """The image files of ``check_paths``'s ``matches``: files as given, folders walked recursively; in order, without
    repeats, listed as they are reached (a folder of any size costs one directory's listing at a time). Folders that
    cannot be listed go into ``unlistable``."""
    seen: set[str] = set()  # only where a path can come twice: several matches
    for m in matches:
        for f in _walk_images(m, unlistable) if m.is_dir() else [m]:
            if len(matches) > 1:
                if str(f) in seen:
                    continue
                seen.add(str(f))
            yield f


def expand_paths(paths: Sequence[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``check_paths``, then every image file of ``paths`` as a list (``iter_paths``).

    Returns:
        (image files, (folder, reason) of every folder that could not be listed).

    Raises:
        FileNotFoundError: a path (or glob) that matches nothing.
        DataError: a folder that holds no image files (and none it could not list).
    """
    unlistable: list[tuple[Path, str]] = []
    return list(iter_paths(check_paths(paths), unlistable)), unlistable
