"""``ramstrans check-data``: index a data set as training would, then look at every listed image.

The report counts the images and classes of each split and lists every problem found, each a dict with ``kind``
(``structure``, ``label``, ``duplicate``, ``missing``, ``unreadable``), ``message`` (one sentence) and, where it
concerns one image, ``split`` and ``path`` (relative to the root). A structural error of the loader (a missing list
file, a label out of range, ...) stops indexing: it is the one problem reported. Otherwise every image is checked for
existence and, unless ``decode`` is off, decoded exactly as training decodes it (``read_image``), in batches on a thread
pool (OpenCV releases the GIL while decoding) behind a tqdm progress bar on stderr.
"""
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Tuple

import pandas as pd
from tqdm import tqdm

from . import DATASETS
from .dataset import DataError, DatasetIndex, read_image

__all__ = ["check_data", "format_report", "exit_code"]

BATCH = 64  # images per pool task: few futures for 579k images, a smooth progress bar
SHOWN = 50  # problems printed in text form (the JSON form lists all)


def _problem(kind: str, message: str, split: Optional[str] = None, path: Optional[str] = None) -> dict:
    out = {"kind": kind, "message": message}
    if split is not None:
        out.update(split=split, path=path)
    return out


def _label_problems(index: DatasetIndex) -> List[dict]:
    k = len(index.class_names)
    out = []
    for split, table in index.splits.items():
        bad = table[(table["label"] < 0) | (table["label"] >= k)]
        out += [_problem("label", f"{split} image {p} has the label {lab}, outside 0..{k - 1}", split, p)
                for p, lab in zip(bad["path"], bad["label"])]
    return out


def _all_rows(index: DatasetIndex) -> pd.DataFrame:
    rows = pd.concat([t[["path"]].assign(split=s) for s, t in index.splits.items()], ignore_index=True)
    rows["norm"] = rows["path"].map(os.path.normpath)
    return rows


def _duplicate_problems(rows: pd.DataFrame) -> List[dict]:
    dup = rows[rows["norm"].duplicated(keep=False)]
    return [_problem("duplicate", f"image {g['path'].iloc[0]} is listed {len(g)} times ({', '.join(g['split'])})",
                     g["split"].iloc[0], g["path"].iloc[0])
            for _, g in dup.groupby("norm", sort=False)]


def _check_files(root: Path, batch: List[Tuple[str, str]], decode: bool) -> List[dict]:
    out = []
    for split, path in batch:
        file = root / path
        if not file.is_file():
            out.append(_problem("missing", f"{split} image {path} does not exist", split, path))
            continue
        if decode:
            try:
                read_image(file)
            except Exception as e:  # whatever stops this one file from decoding is this file's problem
                why = "corrupt or not an image" if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
                out.append(_problem("unreadable", f"{split} image {path} cannot be decoded ({why})", split, path))
    return out


def _file_problems(root: Path, rows: pd.DataFrame, workers: int, decode: bool, progress: bool) -> List[dict]:
    first = rows.drop_duplicates("norm")
    items = list(zip(first["split"], first["path"]))
    batches = [items[i:i + BATCH] for i in range(0, len(items), BATCH)]
    out: List[dict] = []
    desc = "decoding images" if decode else "looking for images"
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool, \
            tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr, disable=not progress) as bar:
        for batch, found in zip(batches, pool.map(lambda b: _check_files(root, b, decode), batches)):
            out += found
            bar.update(len(batch))
    return out


def check_data(dataset: str, root: Path, workers: int = 0, decode: bool = True, progress: bool = True) -> dict:
    """Check a data set folder: ``{"dataset", "root", "splits": {split: {"images", "classes"}}, "problems": [...]}``.

    Args:
        dataset: a name of ``ramstrans.data.DATASETS`` (cub, dogs, inat17, nabirds, folder, csv, ...).
        root: the data set root as given to training (``data.root``).
        workers: threads checking images (0: one per CPU core).
        decode: decode every image (otherwise only check that the files exist).
        progress: show a progress bar on stderr.

    Raises:
        ValueError: unknown data set name.
        DataError: the root does not exist (nothing to check).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set '{dataset}' (known: {', '.join(sorted(DATASETS))})")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data set root {root} does not exist")
    report = {"dataset": dataset, "root": str(root), "splits": {}, "problems": []}
    try:
        index = DATASETS[dataset](root)
    except DataError as e:
        report["problems"].append(_problem("structure", str(e)))
        return report
    report["splits"] = {s: {"images": len(t), "classes": int(t["label"].nunique())} for s, t in index.splits.items()}
    rows = _all_rows(index)
    report["problems"] = (_label_problems(index) + _duplicate_problems(rows)
                          + _file_problems(index.root, rows, workers, decode, progress))
    return report


def exit_code(report: dict) -> int:
    """0 when the data set is clean, 1 when problems were found."""
    return 1 if report["problems"] else 0


def format_report(report: dict) -> str:
    """The report as lines for a terminal (at most ``SHOWN`` problems; the JSON form has them all)."""
    lines: List[str] = [f"{report['dataset']} at {report['root']}"]
    lines += [f"  {s}: {v['images']} images, {v['classes']} classes" for s, v in report["splits"].items()]
    problems = report["problems"]
    if not problems:
        return "\n".join(lines + ["no problems found"])
    n = len(problems)
    lines.append(f"{n} problem{'s' if n > 1 else ''}:")
    lines += [f"  {p['kind']}: {p['message']}" for p in problems[:SHOWN]]
    if n > SHOWN:
        lines.append(f"  ... and {n - SHOWN} more (--json lists them all)")
    return "\n".join(lines)
