"""Image files as a user names them, decoded as every part of ramstrans decodes them: files, folders (walked
recursively, hidden ones skipped) and globs, in order and without repeats (a folder that cannot be listed is reported,
not dropped); any decodable file to (H, W, 3) uint8 RGB with OpenCV, which applies the EXIF orientation (a phone photo
taken sideways comes out upright; timm's own ``inference.py`` reads with PIL, which does not)."""

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ramstrans.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "read_image", "expand_paths"]

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
            ) from None
        raise ImageReadError(path, f"cannot be decoded (OpenCV: {str(e).strip().splitlines()[-1][:80]})") from None
    if img is None or img.size == 0:
        raise ImageReadError(path, "cannot be decoded (corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


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
