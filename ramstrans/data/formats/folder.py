"""Generic data sets: an image folder tree, or a CSV table.

Folder: ``root/train/<class>/<image>``, ``root/test/<class>/<image>`` and optionally ``root/val/<class>/<image>``
(images may sit in sub-folders of their class folder). The classes are the class folders of ``train/``, sorted by name
(labels 0..K-1); a class folder in ``test/`` or ``val/`` that ``train/`` lacks is an error. Files whose extension is not
an image's are skipped, as are hidden files.

CSV: ``root`` is a ``.csv`` file, or a folder holding ``train.csv`` and ``test.csv`` (and optionally ``val.csv``), or a
folder holding exactly one ``.csv`` file. Columns: ``path`` (relative to the CSV's folder), ``label`` (a class name or
integer class id), ``split`` (train / val / test; not needed in per-split files) and optionally ``x0 y0 x1 y1`` (a box
in pixels). Classes are the distinct labels, sorted numerically when all are integers, else by name.
"""

import os
from pathlib import Path

import pandas as pd

from ramstrans.data.dataset import BOX_COLUMNS, DataError, DatasetIndex, check_inside_root, data_folder
from ramstrans.deploy.images import IMAGE_EXTENSIONS

__all__ = ["load_folder", "load_csv", "IMAGE_EXTENSIONS"]

SPLITS = ("train", "val", "test")


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan_split(root: Path, split: str) -> pd.DataFrame:
    """(path, class) of every image under ``root/split/<class>/``, sorted by path."""
    top = root / split
    rows = []
    stray = sorted(p.name for p in top.iterdir() if p.is_file() and _is_image(p.name))
    if stray:
        raise DataError(f"{top} holds the image {stray[0]} outside any class folder ({split}/<class>/<image>)")
    classes = sorted(p.name for p in top.iterdir() if p.is_dir() and not p.name.startswith("."))
    # real folders not to enter through a symlink: the split folder and every class folder (a symlink up the tree, a
    # loop, or into another class would count images twice or under the wrong class), and those already walked
    seen = {os.path.realpath(top)} | {os.path.realpath(top / cls) for cls in classes}
    for cls in classes:
        for dirpath, dirnames, filenames in os.walk(top / cls, followlinks=True):
            seen.add(os.path.realpath(dirpath))
            dirnames[:] = sorted(d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in seen)
            rel = Path(dirpath).relative_to(root).as_posix()
            rows += [(f"{rel}/{name}", cls) for name in sorted(filenames) if _is_image(name)]
    return pd.DataFrame(rows, columns=["path", "class"])


def load_folder(root: Path) -> DatasetIndex:
    """Index an image folder tree ``root/{train,test[,val]}/<class>/<image>``.

    Raises:
        DataError: train/ or test/ is missing, train/ has no classes or an empty class folder, or another split has a
            class folder train/ lacks.
    """
    root = data_folder(root)
    tables = {}
    for split in SPLITS:
        if (root / split).is_dir():
            tables[split] = _scan_split(root, split)
        elif split != "val":
            raise DataError(f"{root} has no {split}/ folder (expected {split}/<class>/<image>)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders (expected train/<class>/<image>)")
    empty = sorted(set(classes) - set(tables["train"]["class"]))
    if empty:
        raise DataError(f"{root / 'train' / empty[0]} holds no images")
    for split, table in tables.items():
        extra = sorted(set(table["class"]) - set(classes))
        if extra:
            raise DataError(f"{root / split / extra[0]} is a class folder that train/ does not have")
    label_of = {c: i for i, c in enumerate(classes)}
    splits = {
        s: pd.DataFrame({"path": t["path"], "label": t["class"].map(label_of).astype("int64")})
        for s, t in tables.items()
    }
    return DatasetIndex(root=root, class_names=classes, splits=splits)


def _csv_files(root: Path) -> dict[str | None, Path]:
    """split -> CSV file (split None: one file with a split column)."""
    if root.is_file():
        return {None: root}
    per_split: dict[str | None, Path] = {s: root / f"{s}.csv" for s in SPLITS if (root / f"{s}.csv").is_file()}
    if per_split:
        for need in ("train", "test"):
            if need not in per_split:
                raise DataError(f"{root} has {', '.join(p.name for p in per_split.values())} but no {need}.csv")
        return per_split
    found = sorted(root.glob("*.csv"))
    if len(found) != 1:
        raise DataError(f"{root} must hold train.csv and test.csv, or exactly one .csv file (it holds {len(found)})")
    return {None: found[0]}


def _read_csv(path: Path, split: str | None) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path.name} is not a readable CSV file ({str(e).splitlines()[0]})") from e
    table.columns = [str(c).strip() for c in table.columns]
    need = ["path", "label"] + (["split"] if split is None else [])
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise DataError(
            f"{path.name} has no '{missing[0]}' column (columns: path,label"
            f"{',split' if split is None else ''}[,x0,y0,x1,y1])"
        )
    if split is not None:
        table["split"] = split
    empty = (table[need] == "").any(axis=1)
    if empty.any():
        raise DataError(f"{path.name}: row {int(empty.to_numpy().argmax()) + 2} has an empty path, label or split")
    bad = ~table["split"].isin(SPLITS)
    if bad.any():
        raise DataError(f"{path.name}: split '{table['split'][bad].iloc[0]}' is not one of {', '.join(SPLITS)}")
    return table.assign(source=path.name)


def _class_order(labels: pd.Series) -> list[str]:
    """Distinct labels, numerically sorted when all are integers, else by name."""
    distinct = pd.Series(labels.unique())
    numbers = pd.to_numeric(distinct, errors="coerce")
    if numbers.notna().all() and (numbers == numbers.round()).all():
        return distinct.iloc[numbers.argsort()].tolist()
    return sorted(distinct)


def load_csv(root: Path) -> DatasetIndex:
    """Index a CSV data set (see the module doc for where the CSV may be and its columns).

    Raises:
        DataError: no or several CSV files, a column is missing, a row is empty, a split is unknown, a box is not
            numeric, an image is listed twice or a path leaves the CSV's folder.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data set root {root} does not exist")
    files = _csv_files(root)
    table = pd.concat([_read_csv(p, s) for s, p in files.items()], ignore_index=True)
    base = next(iter(files.values())).parent
    for source, part in table.groupby("source", sort=False):
        check_inside_root(base, part["path"], source)
    dup = table["path"].map(os.path.normpath).duplicated()
    if dup.any():
        raise DataError(f"{table['source'][dup].iloc[0]} lists the image {table['path'][dup].iloc[0]} twice")
    classes = _class_order(table["label"])
    table["label"] = table["label"].map({c: i for i, c in enumerate(classes)}).astype("int64")
    keep = ["path", "label"]
    if set(BOX_COLUMNS) <= set(table.columns):
        for c in BOX_COLUMNS:
            values = pd.to_numeric(table[c], errors="coerce")
            if values.isna().any():
                raise DataError(f"{table['source'][values.isna()].iloc[0]}: box column {c} must hold numbers")
            table[c] = values
        keep += BOX_COLUMNS
    splits = {s: table[table["split"] == s][keep].reset_index(drop=True) for s in SPLITS if (table["split"] == s).any()}
    for need in ("train", "test"):
        if need not in splits:
            raise DataError(f"there are no {need} rows in {', '.join(p.name for p in files.values())}")
    return DatasetIndex(root=base, class_names=[str(c) for c in classes], splits=splits)
