"""Stanford Dogs as distributed: ``Images/<wnid>-<breed>/*.jpg``, ``Annotation/<wnid>-<breed>/<name>`` (VOC-style
XML without extension) and ``train_list.mat`` / ``test_list.mat`` in ``lists/`` or at the root.

Each list is a MATLAB v5 file with ``file_list`` and ``annotation_list`` (N×1 cell arrays of paths relative to
``Images/`` and ``Annotation/``) and ``labels`` (N×1, 1..120), read with ``scipy.io.loadmat``. A label must name
exactly one breed folder and a folder exactly one label; labels become 0..K-1 in label order and class names are the
folder names (``n02085620-Chihuahua``). An image with several dogs gets the union of its boxes (the smallest box holding
every dog). All XML files are parsed when the index is built, on a small thread pool (20,580 files: ~1.5 s on a warm
local disk; threads overlap the file latency of cold or network storage); nothing is cached beside the data. Without
an ``Annotation/`` folder the index has no boxes; with it, a missing or box-less annotation file is an error.
"""

import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from ramstrans.data.dataset import BOX_COLUMNS, DataError, DatasetIndex, check_inside_root, data_folder

__all__ = ["load_dogs", "read_dogs_list", "union_box"]

LIST_FILES = {"train": "train_list.mat", "test": "test_list.mat"}
LIST_VARIABLES = ("file_list", "annotation_list", "labels")
XML_CHUNK, XML_THREADS = 512, 8  # annotation files per thread task; threads


def _find_list(root: Path, name: str) -> Path:
    for folder in (root / "lists", root):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{name} is missing (looked in {root / 'lists'} and {root})")


def _cell_strings(value: np.ndarray, var: str, file: str) -> list[str]:
    """The strings of an N×1 MATLAB cell array as loadmat returns it (each cell a 1-element char array)."""
    cells = np.asarray(value)
    if cells.dtype != object:
        raise DataError(f"{file}: '{var}' must be a cell array of strings, got a {cells.dtype} array")
    out = []
    for i, cell in enumerate(cells.ravel()):
        chars = np.asarray(cell).ravel()
        if chars.size != 1 or chars.dtype.kind != "U" or not str(chars[0]).strip():
            raise DataError(f"{file}: entry {i + 1} of '{var}' is not a non-empty string")
        out.append(str(chars[0]).strip())
    return out


def read_dogs_list(path: Path) -> pd.DataFrame:
    """One Stanford Dogs list file as a table with columns ``file``, ``annotation`` and ``cid`` (the 1-based label).

    Raises:
        DataError: the file is not a MATLAB v5 file, lacks a variable, or its variables disagree in length.
    """
    try:
        mat = scipy.io.loadmat(str(path))
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError, NotImplementedError) as e:
        raise DataError(f"{path.name} is not a readable MATLAB v5 .mat file ({e})") from e
    missing = [v for v in LIST_VARIABLES if v not in mat]
    if missing:
        raise DataError(f"{path.name} has no variable '{missing[0]}' (expected {', '.join(LIST_VARIABLES)})")
    files = _cell_strings(mat["file_list"], "file_list", path.name)
    annotations = _cell_strings(mat["annotation_list"], "annotation_list", path.name)
    labels = np.asarray(mat["labels"]).ravel()
    if not len(files) == len(annotations) == len(labels):
        raise DataError(
            f"{path.name} has {len(files)} files, {len(annotations)} annotations and {len(labels)} labels; "
            "the three must have one entry per image"
        )
    if labels.dtype.kind not in "iuf" or (labels.size and not np.all(labels == np.round(labels))):
        raise DataError(f"{path.name}: 'labels' must hold whole numbers")
    return pd.DataFrame({"file": files, "annotation": annotations, "cid": labels.astype(np.int64)})


def union_box(path: Path) -> tuple[float, float, float, float]:
    """The smallest box (xmin, ymin, xmax, ymax) holding every ``bndbox`` of a VOC-style XML file.

    Raises:
        DataError: the file is missing, not XML, or has no complete numeric bndbox.
    """
    try:
        tree = ET.parse(path)
    except FileNotFoundError as e:
        raise DataError(f"annotation {path} is missing") from e
    except OSError as e:
        raise DataError(f"annotation {path} cannot be read ({e.strerror or e})") from e
    except ET.ParseError as e:
        raise DataError(f"annotation {path} is not valid XML ({e})") from e
    boxes = []
    for box in tree.getroot().iter("bndbox"):
        try:
            boxes.append([float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")])
        except (TypeError, ValueError) as e:
            raise DataError(f"annotation {path} has a bndbox without numeric xmin, ymin, xmax, ymax") from e
    if not boxes:
        raise DataError(f"annotation {path} has no bndbox")
    b = np.asarray(boxes)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def _union_boxes(files: list[Path]) -> np.ndarray:
    """(N, 4) union boxes of the XML files, read in chunks on threads (overlapping file latency on cold or network
    storage; on a warm local disk 20,580 files take ~1.5 s either way, parsing holds the GIL)."""
    chunks = [files[i : i + XML_CHUNK] for i in range(0, len(files), XML_CHUNK)]
    with ThreadPoolExecutor(max_workers=XML_THREADS) as pool:
        boxes = [box for chunk in pool.map(lambda c: [union_box(f) for f in c], chunks) for box in chunk]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _who(rows: pd.DataFrame, verb: str) -> str:
    """'train_list.mat lists' or 'train_list.mat and test_list.mat list': the list files the rows come from."""
    files = list(dict.fromkeys(rows["source"]))
    return f"{files[0]} {verb}s" if len(files) == 1 else f"{' and '.join(files)} {verb}"


def _check_lists(table: pd.DataFrame) -> list[str]:
    """Refuse duplicates and labels that do not match the breed folders; return the K folder names in label order."""
    dup = table["file"].duplicated(keep=False)
    if dup.any():
        rows = table[dup & (table["file"] == table["file"][dup].iloc[0])]
        raise DataError(f"{_who(rows, 'list')} the image {rows['file'].iloc[0]} twice")
    table["folder"] = table["file"].str.rpartition("/")[0]
    folders = table["folder"].nunique()
    bad = (table["cid"] < 1) | (table["cid"] > folders)
    if bad.any():
        row = table[bad].iloc[0]
        raise DataError(
            f"{row['source']} gives {row['file']} the label {row['cid']}, outside 1..{folders} "
            f"(one label per breed folder)"
        )
    per_label = table.groupby("cid")["folder"].unique()  # K labels in 1..K, one folder each: a bijection
    mixed = per_label[per_label.map(len) > 1]
    if len(mixed):
        rows = table[table["cid"] == mixed.index[0]]
        raise DataError(
            f"{_who(rows, 'give')} the label {mixed.index[0]} to images "
            f"of the folders {mixed.iloc[0][0]} and {mixed.iloc[0][1]}; a label must be one breed folder"
        )
    return table.drop_duplicates("cid").sort_values("cid")["folder"].tolist()


def load_dogs(root: Path) -> DatasetIndex:
    """Index a Stanford Dogs folder (``Images/``, ``Annotation/``, and the two list files in ``lists/`` or the root).

    Raises:
        DataError: a list file is missing or unreadable, a label is out of range, an image is listed twice, a path
            leaves the root, or an annotation file is missing or has no box.
    """
    root = data_folder(root)
    parts = []
    for split, name in LIST_FILES.items():
        path = _find_list(root, name)
        part = read_dogs_list(path)
        check_inside_root(root, part["file"], name)
        check_inside_root(root, part["annotation"], name)
        parts.append(part.assign(split=split, source=name))
    table = pd.concat(parts, ignore_index=True)
    class_names = _check_lists(table)
    table["path"] = "Images/" + table["file"]
    table["label"] = table["cid"] - 1
    keep = ["path", "label"]
    if (root / "Annotation").is_dir():
        table[BOX_COLUMNS] = _union_boxes([root / "Annotation" / a for a in table["annotation"]])
        keep += BOX_COLUMNS
    splits = {s: table[table["split"] == s][keep].reset_index(drop=True) for s in LIST_FILES}
    return DatasetIndex(root=root, class_names=class_names, splits=splits)
