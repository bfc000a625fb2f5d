"""``ramstrans check-data``: index a data set as training would, then look at every listed image.

The report counts the images and classes of each split and lists every problem found, each a dict with ``kind``
(``structure``, ``label``, ``duplicate``, ``box``, ``missing``, ``unreadable``), ``message`` (one sentence) and, where
it concerns one image, ``split`` and ``path`` (relative to the root). A structural error of the loader (a missing list
file, a label out of range, a split without images, ...) stops indexing: it is the one problem reported. Otherwise
every box is checked for a positive size inside the image, and every image for existence and, unless ``decode`` is off,
decoded exactly as training decodes it (``read_image``), in batches on a thread pool (OpenCV releases the GIL while
decoding) behind a tqdm progress bar on stderr.
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from ramstrans.data import DATASETS
from ramstrans.data.dataset import BOX_COLUMNS, DataError, DatasetIndex, ImageReadError, read_image
from ramstrans.errors import UsageError

__all__ = ["check_data", "format_report", "exit_code"]

BATCH = 64  # images per pool task: few futures for 579k images, a smooth progress bar
SHOWN = 50  # problems printed in text form (the JSON form lists all)
BOX_SLACK = 1.0  # pixels a box may end past the image (annotation tools round outwards)


def _problem(kind: str, message: str, split: str | None = None, path: str | None = None) -> dict:
    out: dict[str, str | None] = {"kind": kind, "message": message}
    if split is not None:
        out.update(split=split, path=path)
    return out


def _label_problems(index: DatasetIndex) -> list[dict]:
    k = len(index.class_names)
    out = []
    for split, table in index.splits.items():
        bad = table[(table["label"] < 0) | (table["label"] >= k)]
        out += [
            _problem("label", f"{split} image {p} has the label {lab}, outside 0..{k - 1}", split, p)
            for p, lab in zip(bad["path"], bad["label"])
        ]
    return out


def _all_rows(index: DatasetIndex) -> pd.DataFrame:
    cols = ["path"] + (BOX_COLUMNS if index.has_boxes else [])
    rows = pd.concat([t[cols].assign(split=s) for s, t in index.splits.items()], ignore_index=True)
    rows["norm"] = rows["path"].map(os.path.normpath)
    return rows


def _box_problems(rows: pd.DataFrame) -> list[dict]:
    """Boxes of no area (x1 <= x0 or y1 <= y0) or starting left of or above the image."""
    if "x0" not in rows:
        return []
    bad = rows[(rows["x1"] <= rows["x0"]) | (rows["y1"] <= rows["y0"]) | (rows["x0"] < 0) | (rows["y0"] < 0)]
    return [
        _problem(
            "box",
            f"{r.split} image {r.path} has the box ({r.x0:g}, {r.y0:g}, {r.x1:g}, {r.y1:g}), "
            "which is empty or starts outside the image",
            r.split,
            r.path,
        )
        for r in bad.itertuples()
    ]


def _duplicate_problems(rows: pd.DataFrame) -> list[dict]:
    dup = rows[rows["norm"].duplicated(keep=False)]
    return [
        _problem(
            "duplicate",
            f"image {g['path'].iloc[0]} is listed {len(g)} times ({', '.join(g['split'])})",
            g["split"].iloc[0],
            g["path"].iloc[0],
        )
        for _, g in dup.groupby("norm", sort=False)
    ]


def _check_files(root: Path, batch: list[tuple[str, str, tuple[float, ...] | None]], decode: bool) -> list[dict]:
    out = []
    for split, path, box in batch:
        file = root / path
        if not file.is_file():
            out.append(_problem("missing", f"{split} image {path} does not exist", split, path))
            continue
        if not decode:
            continue
        try:
            h, w = read_image(file).shape[:2]
        except Exception as e:  # whatever stops this one file from decoding is this file's problem
            why = e.reason if isinstance(e, ImageReadError) else f"cannot be decoded ({type(e).__name__}: {e})"
            out.append(_problem("unreadable", f"{split} image {path} {why}", split, path))
            continue
        if box is not None and (box[2] > w + BOX_SLACK or box[3] > h + BOX_SLACK):
            out.append(
                _problem(
                    "box",
                    f"{split} image {path} has the box ({', '.join(f'{v:g}' for v in box)}), "
                    f"which ends outside its {w} x {h} pixels",
                    split,
                    path,
                )
            )
    return out


def _file_problems(root: Path, rows: pd.DataFrame, workers: int, decode: bool, progress: bool) -> list[dict]:
    first = rows.drop_duplicates("norm")
    boxes = first[BOX_COLUMNS].itertuples(index=False, name=None) if "x0" in first else [None] * len(first)
    items = list(zip(first["split"], first["path"], boxes))
    batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    out: list[dict] = []
    desc = "decoding images" if decode else "looking for images"
    with (
        ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool,
        tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr, disable=not progress) as bar,
    ):
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
        UsageError: unknown data set name.
        DataError: the root does not exist (nothing to check).
    """
    if dataset not in DATASETS:
        raise UsageError(f"unknown data set '{dataset}' (known: {', '.join(sorted(DATASETS))})")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data set root {root} does not exist")
    report: dict[str, Any] = {"dataset": dataset, "root": str(root), "splits": {}, "problems": []}
    try:
        index = DATASETS[dataset](root)
    except DataError as e:
        report["problems"].append(_problem("structure", str(e)))
        return report
    report["splits"] = {s: {"images": len(t), "classes": int(t["label"].nunique())} for s, t in index.splits.items()}
    rows = _all_rows(index)
    report["problems"] = (
        _label_problems(index)
        + _duplicate_problems(rows)
        + _box_problems(rows)
        + _file_problems(index.root, rows, workers, decode, progress)
    )
    return report


def exit_code(report: dict) -> int:
    """0 when the data set is clean, 1 when problems were found."""
    return 1 if report["problems"] else 0


def format_report(report: dict) -> str:
    """The report as lines for a terminal (at most ``SHOWN`` problems; the JSON form has them all)."""
    lines: list[str] = [f"{report['dataset']} at {report['root']}"]
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
