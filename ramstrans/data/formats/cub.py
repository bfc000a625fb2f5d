"""CUB-200-2011 as distributed: images/, images.txt, classes.txt, image_class_labels.txt, train_test_split.txt,
bounding_boxes.txt (1-based ids, one record per line, boxes as x y width height in pixels).

The five files are cross-checked: every image id in every file, no duplicate ids or paths, labels among the class ids,
split flags 0/1, paths inside the root. Labels become 0..K-1 in the order of the class ids. NABirds ships the same five
files (UUID image ids, non-contiguous class ids, parent classes without images) and shares ``index_records``.
"""

from pathlib import Path

import pandas as pd

from ramstrans.data.dataset import DataError, DatasetIndex, check_inside_root, data_folder

__all__ = ["load_cub", "index_records", "read_records"]

FILES = ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")


def read_records(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read '<id> <value ...>' lines; the last column keeps any spaces (class names, paths). Ids stay strings."""
    if not path.is_file():
        raise DataError(f"{path.name} is missing from {path.parent}")
    lines = pd.read_csv(
        path,
        header=None,
        names=["line"],
        sep="\x01",
        dtype=str,
        engine="python",
        skip_blank_lines=True,
        keep_default_na=False,
    )["line"].str.strip()
    lines = lines[lines != ""]
    if lines.empty:
        return pd.DataFrame(columns=columns, dtype=str)
    parts = lines.str.split(n=len(columns) - 1, expand=True)
    if parts.shape[1] != len(columns) or parts.isna().any().any():
        bad = lines[parts.isna().any(axis=1)].iloc[0] if parts.shape[1] == len(columns) else lines.iloc[0]
        raise DataError(f"{path.name} must have {len(columns)} fields per line ({' '.join(columns)}); got '{bad}'")
    parts.columns = columns
    dup = parts[columns[0]].duplicated()
    if dup.any():
        raise DataError(f"{path.name} lists id {parts[columns[0]][dup].iloc[0]} more than once")
    return parts.reset_index(drop=True)


def _numeric(df: pd.DataFrame, cols: list[str], file: str, integer: bool) -> pd.DataFrame:
    for c in cols:
        vals = pd.to_numeric(df[c], errors="coerce")
        if vals.isna().any():
            raise DataError(f"{file}: '{df[c][vals.isna()].iloc[0]}' in column {c} is not a number")
        if integer and (vals != vals.round()).any():
            raise DataError(f"{file}: column {c} must hold integers")
        df[c] = vals.astype("int64" if integer else "float64")
    return df


def _same_ids(ids: pd.Series, other: pd.Series, file: str) -> None:
    a, b = set(ids), set(other)
    if a != b:
        missing, extra = sorted(a - b, key=str), sorted(b - a, key=str)
        what = f"misses image id {missing[0]}" if missing else f"lists image id {extra[0]} that images.txt does not"
        raise DataError(f"{file} {what} ({len(missing)} missing, {len(extra)} extra)")


def load_cub(root: Path) -> DatasetIndex:
    """Index a CUB-200-2011 folder (also CUB layouts such as the synthetic set); every class of classes.txt is kept.

    Raises:
        DataError: a file is missing or the files disagree.
    """
    return index_records(root, used_classes_only=False)


def index_records(root: Path, used_classes_only: bool) -> DatasetIndex:
    """Index a folder in the five-file layout of CUB-200-2011 / NABirds.

    Args:
        root: the folder holding images/ and the five text files.
        used_classes_only: keep only the classes some image is labelled with (NABirds' classes.txt also lists the
            parent classes of its hierarchy, which have no images); labels are 0..K-1 in the order of the kept ids.

    Raises:
        DataError: a file is missing or the files disagree.
    """
    root = data_folder(root)
    images = read_records(root / "images.txt", ["id", "path"])
    classes = _numeric(read_records(root / "classes.txt", ["cid", "name"]), ["cid"], "classes.txt", True)
    labels = _numeric(
        read_records(root / "image_class_labels.txt", ["id", "cid"]), ["cid"], "image_class_labels.txt", True
    )
    split = _numeric(
        read_records(root / "train_test_split.txt", ["id", "is_train"]), ["is_train"], "train_test_split.txt", True
    )
    has_boxes = (root / "bounding_boxes.txt").is_file()
    if images["path"].duplicated().any():
        raise DataError(f"images.txt lists the image {images['path'][images['path'].duplicated()].iloc[0]} twice")
    check_inside_root(root, images["path"], "images.txt")
    for df, file in ((labels, "image_class_labels.txt"), (split, "train_test_split.txt")):
        _same_ids(images["id"], df["id"], file)
    bad = ~labels["cid"].isin(classes["cid"])
    if bad.any():
        raise DataError(
            f"image_class_labels.txt gives image {labels['id'][bad].iloc[0]} the label "
            f"{labels['cid'][bad].iloc[0]}, which classes.txt does not define"
        )
    if not split["is_train"].isin([0, 1]).all():
        raise DataError("train_test_split.txt must flag each image 1 (train) or 0 (test)")
    if used_classes_only:
        classes = classes[classes["cid"].isin(labels["cid"])]
    classes = classes.sort_values("cid").reset_index(drop=True)
    table = images.merge(labels, on="id").merge(split, on="id")
    table["label"] = table["cid"].map(pd.Series(classes.index, index=classes["cid"])).astype("int64")
    if has_boxes:
        boxes = _numeric(
            read_records(root / "bounding_boxes.txt", ["id", "x", "y", "w", "h"]),
            ["x", "y", "w", "h"],
            "bounding_boxes.txt",
            False,
        )
        _same_ids(images["id"], boxes["id"], "bounding_boxes.txt")
        table = table.merge(boxes, on="id")
        table["x0"], table["y0"] = table["x"], table["y"]
        table["x1"], table["y1"] = table["x"] + table["w"], table["y"] + table["h"]
    table["path"] = "images/" + table["path"]  # images.txt paths are relative to images/
    keep = ["path", "label"] + (["x0", "y0", "x1", "y1"] if has_boxes else [])
    table["_order"] = pd.to_numeric(table["id"], errors="coerce")
    table = table.sort_values(["_order", "id"])
    splits = {
        name: table[table["is_train"] == flag][keep].reset_index(drop=True)
        for name, flag in (("train", 1), ("test", 0))
    }
    return DatasetIndex(root=root, class_names=classes["name"].tolist(), splits=splits)
