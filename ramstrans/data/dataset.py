"""The data set interface shared by every loader: an index of (path, label, box) rows and a torch Dataset over it.

A loader (``cub.py``, ...) turns a folder as distributed into a ``DatasetIndex``: class names and one pandas table per
split with columns ``path`` (relative to the root), ``label`` (0..K-1) and, where the data set has boxes,
``x0 y0 x1 y1`` (pixels). ``ImageDataset`` decodes with cv2 and applies an albumentations pipeline; augmentation is a
pure function of the per-sample seed the sampler passes in, so training resumes exactly whatever the worker count.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ramstrans.deploy.images import ImageReadError, read_image
from ramstrans.errors import DataError

__all__ = ["DataError", "ImageReadError", "DatasetIndex", "ImageDataset", "read_image", "check_inside_root", "collate"]

BOX_COLUMNS = ["x0", "y0", "x1", "y1"]


@dataclass
class DatasetIndex:
    """What a loader found: class names and, per split, a table of path / label [/ x0 y0 x1 y1]."""

    root: Path
    class_names: list[str]
    splits: dict[str, pd.DataFrame]

    def __post_init__(self) -> None:
        """Every loader ends here: an index with a split of no images is refused, naming the split."""
        if self.splits and len(self.class_names) < 2:
            raise DataError(
                f"the data set at {self.root} defines {len(self.class_names)} class(es): classification "
                "needs at least 2"
            )
        for name, table in self.splits.items():
            if len(table) == 0:
                raise DataError(f"the {name} split of the data set at {self.root} has no images")

    @property
    def has_boxes(self) -> bool:
        return all(set(BOX_COLUMNS) <= set(t.columns) for t in self.splits.values())

    def split(self, name: str) -> pd.DataFrame:
        if name not in self.splits:
            raise DataError(f"data set at {self.root} has no '{name}' split (it has {', '.join(self.splits)})")
        return self.splits[name]


def data_folder(root: str | Path) -> Path:
    """``data.root`` as a folder that exists.

    Raises:
        DataError: nothing at ``root``, or a file there (``data.root`` names the data set's folder).
    """
    root = Path(root)
    if root.is_file():
        raise DataError(f"data set root {root} is a file; data.root names the data set's folder")
    if not root.is_dir():
        raise DataError(f"data set root {root} does not exist")
    return root


def check_inside_root(root: Path, paths: pd.Series, listed_in: str) -> None:
    """Refuse relative paths that leave the data set root (absolute, or climbing with '..')."""
    for p in paths:
        norm = os.path.normpath(p)
        if os.path.isabs(p) or norm == ".." or norm.startswith(".." + os.sep):
            raise DataError(f"{listed_in} lists the path '{p}', which leaves the data set root {root}")


def missing_files(root: Path, paths: pd.Series) -> list[str]:
    """The listed relative ``paths`` that do not exist under ``root``, in order. Each folder is listed once (one
    ``scandir`` per folder instead of a ``stat`` per file: fast on an index of hundreds of thousands of images)."""
    found: dict[str, set] = {}
    missing = []
    for p in paths:
        folder, name = os.path.split(p)
        if folder not in found:
            try:
                found[folder] = {e.name for e in os.scandir(root / folder) if not e.is_dir()}
            except OSError:  # the folder is missing or unreadable: its files are missing to the run
                found[folder] = set()
        if name not in found[folder]:
            missing.append(p)
    return missing


class ImageDataset(Dataset):
    """Images of one split with their labels and (optional) boxes.

    Items are dicts: ``image`` (3, H, W) float tensor, ``label`` int, ``box`` (4,) float xyxy in the transformed
    image's pixels (NaN when the data set has none or the crop removed it), ``index`` int. With ``skip_corrupt``
    an unreadable image yields None, which ``collate`` drops and counts.

    Args:
        root: data set root; table paths are relative to it.
        table: rows with ``path``, ``label`` and optionally ``x0 y0 x1 y1``.
        class_names: K names, label k -> class_names[k].
        transform: callable(image=..., bboxes=..., seed=...) -> (tensor, box or None).
        skip_corrupt: skip undecodable images instead of raising.
    """

    def __init__(
        self,
        root: Path,
        table: pd.DataFrame,
        class_names: list[str],
        transform: Callable | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        self.root = Path(root)
        self.table = table.reset_index(drop=True)
        self.paths = self.table["path"].tolist()
        self.labels = self.table["label"].to_numpy(dtype=np.int64)
        has_boxes = set(BOX_COLUMNS) <= set(self.table.columns)
        self.boxes = self.table[BOX_COLUMNS].to_numpy(dtype=np.float32) if has_boxes else None
        self.class_names = list(class_names)
        self.transform = transform
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]) -> dict | None:
        index, seed = item if isinstance(item, tuple) else (item, index_seed(item))
        path = self.root / self.paths[index]
        try:
            image = read_image(path)
        except DataError:
            if self.skip_corrupt:
                return None
            raise
        box = None
        if self.boxes is not None:
            h, w = image.shape[:2]
            x0, y0, x1, y1 = self.boxes[index]
            box = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
            box = box if box[2] > box[0] and box[3] > box[1] else None
        if self.transform is not None:
            tensor, box = self.transform(image, box, seed)
        else:
            tensor = torch.from_numpy(image).permute(2, 0, 1).float()
        box_t = torch.tensor(box, dtype=torch.float32) if box is not None else torch.full((4,), float("nan"))
        return {"image": tensor, "label": int(self.labels[index]), "box": box_t, "index": index}


def index_seed(index: int) -> int:
    """A fixed augmentation seed for an item asked for by plain index (evaluation)."""
    return int(index)


def collate(items: list[dict | None]) -> dict:
    """Stack items; drop the None of skipped corrupt images and count them under ``skipped``."""
    kept = [it for it in items if it is not None]
    out: dict[str, object] = {"skipped": len(items) - len(kept)}
    if kept:
        out.update(
            image=torch.stack([it["image"] for it in kept]),
            label=torch.tensor([it["label"] for it in kept], dtype=torch.long),
            box=torch.stack([it["box"] for it in kept]),
            index=torch.tensor([it["index"] for it in kept], dtype=torch.long),
        )
    return out
