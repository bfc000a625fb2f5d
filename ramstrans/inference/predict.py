"""``ramstrans predict``: classify image files, folders (recursively) and globs with a checkpoint or an exported folder.

Every path is one output row: its top-k classes and probabilities (and, with ``--scales auto``, whether it was zoomed),
or, for a file that cannot be read, the reason. Rows go to a CSV (default) or JSON lines, on standard output or into a
file written whole (a temp file renamed at the end).
"""

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ramstrans.data import ImageReadError, Transform, read_image
from ramstrans.deploy.images import expand_paths
from ramstrans.deploy.rows import check_options, emit, format_rows, rows_of
from ramstrans.errors import UsageError
from ramstrans.inference.evaluate import parse_scales, resolve_threshold
from ramstrans.inference.load import load_model
from ramstrans.inference.tta import with_tta
from ramstrans.models import Model, RAMSTrans, ZoomCriterion
from ramstrans.runtime.amp import amp_setup, autocast
from ramstrans.runtime.dist import resolve_device
from ramstrans.runtime.files import check_output

__all__ = ["run_predict"]


class _Files(Dataset):
    """Decoded, transformed images; an unreadable file gives its reason instead."""

    def __init__(self, paths: list[Path], transform: Transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            return {"index": i, "image": self.transform(read_image(self.paths[i]), None, 0)[0]}
        except ImageReadError as e:
            return {"index": i, "error": e.reason}
        except OSError as e:  # vanished or unreadable (permissions) since the listing
            return {"index": i, "error": f"cannot be read ({e.strerror or type(e).__name__})"}


def _collate(items: list[dict]) -> dict:
    ok = [it for it in items if "image" in it]
    return {
        "index": [it["index"] for it in ok],
        "image": torch.stack([it["image"] for it in ok]) if ok else None,
        "errors": [(it["index"], it["error"]) for it in items if "error" in it],
    }


def _classify(
    model: Model,
    names: list[str],
    batches: Any,
    files: list[Path],
    where: tuple,
    mode: tuple,
    topk: int,
    visualize: str | None,
) -> list[dict]:
    """One row per file, in order: its top-k classes (and whether it was zoomed), or why it could not be read;
    ``where`` = (device, autocast dtype), ``mode`` = (scales, zoom threshold, zoom criterion, test-time
    augmentation)."""
    (dev, amp_dtype), (scales, threshold, zoom_on, tta) = where, mode
    predictor = with_tta(model, tta)[0]
    rows: list[dict] = [{} for _ in files]
    drawn = 0
    for batch in batches:
        for i, reason in batch["errors"]:
            rows[i] = {"status": "skipped", "error": reason}
        if batch["image"] is None:
            continue
        x = batch["image"].to(dev)
        with autocast(dev, amp_dtype):
            pred = predictor.predict(x, scales, threshold, zoom_on, boxes=False)
        for i, row in zip(
            batch["index"],
            rows_of(pred.probs.float().cpu().numpy(), pred.zoomed.cpu().numpy(), names, topk, scales == "auto"),
        ):
            rows[i] = row
        if visualize:
            from ramstrans.inference.visualize import draw_panels

            assert isinstance(model, RAMSTrans)  # predict refuses --visualize on a classifier before it gets here

            kept = [files[i] for i in batch["index"]]
            drawn += len(draw_panels(model, x, kept, names, Path(visualize), first=drawn)[0])
    for path, row in zip(files, rows):
        row["path"] = str(path)
    return rows


def run_predict(
    model_path: str,
    paths: Sequence[str],
    *,
    topk: int = 5,
    fmt: str = "csv",
    out: str | None = None,
    scales: int | str = 1,
    zoom_threshold: float | None = None,
    zoom_on: ZoomCriterion = "maxprob",
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int = 0,
    weights: str = "auto",
    visualize: str | None = None,
    show_progress: bool = True,
    overwrite: bool = False,
    tta: str = "none",
) -> dict[str, int]:
    """Classify every image of ``paths``; returns {"images", "read", "skipped"}.

    Args:
        model_path: a ramstrans checkpoint or an exported timm folder.
        paths: files, folders (searched recursively) and glob patterns.
        topk: classes per image.
        fmt: "csv" or "json" (JSON lines).
        out: file to write (default: standard output).
        scales: 1, N (fuse N scales) or "auto" (zoom the images scale 1 is unsure of).
        zoom_threshold: "auto": zoom below this scale-1 confidence (default: the gate's own with ``zoom_on="gate"``,
            else 0.5).
        zoom_on: "maxprob", "margin" or "gate" (a checkpoint with a fitted zoom gate).
        batch_size: images per batch.
        device: auto | cpu | cuda.
        num_workers: decoding processes (0: in this process).
        weights: checkpoint only: "auto", "raw" or "ema".
        visualize: also draw the zoom panel of every read image into this folder.
        show_progress: a progress bar on a terminal.
        overwrite: replace ``out`` (and fill ``visualize``) if it already exists.
        tta: "none", or "flip": the mean of each image's and its mirror's probabilities (zoomed: either view).
    """
    check_options(topk, fmt, batch_size, zoom_threshold, tta)
    files, unlistable = expand_paths(paths)
    inputs: list[str | Path] = [model_path, *files]
    if out:
        check_output(out, inputs, overwrite, "--out")
    if visualize:
        check_output(visualize, inputs, overwrite, "--visualize")
    loaded = load_model(model_path, weights)
    model, names, transform = loaded.model, loaded.class_names, loaded.transform
    if visualize and not isinstance(model, RAMSTrans):
        raise UsageError(f"--visualize needs a RAMS-Trans model; {model_path} is a classifier without attention")
    scales = parse_scales(scales, model.num_scales)
    zoom_threshold = resolve_threshold(model, zoom_on, zoom_threshold) if scales == "auto" else 0.0
    dev = resolve_device(device)
    model.to(dev)
    amp_dtype = amp_setup(dev, loaded.config.train.amp if loaded.config is not None else True)[0]  # the run's
    batches = _batches(files, transform, batch_size, num_workers, show_progress)
    mode = (scales, zoom_threshold, zoom_on, tta)
    rows = _classify(model, names, batches, files, (dev, amp_dtype), mode, topk, visualize)
    rows += [{"path": str(folder), "status": "skipped", "error": reason} for folder, reason in unlistable]
    emit(format_rows(rows, fmt, topk, scales == "auto"), out)
    skipped = sum(r["status"] == "skipped" for r in rows)
    return {"images": len(rows), "read": len(rows) - skipped, "skipped": skipped}


def _batches(files: list[Path], transform: Transform, batch_size: int, num_workers: int, show_progress: bool) -> Any:
    """The files' decoded batches, with a progress bar on a terminal."""
    loader = DataLoader(_Files(files, transform), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    return tqdm(loader, disable=not (show_progress and sys.stderr.isatty()), unit="batch", dynamic_ncols=True)
