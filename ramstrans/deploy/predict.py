"""``ramstrans predict model.onnx PATHS...``: the rows and exit codes of ``predict`` with a checkpoint, from an ONNX
export in onnxruntime, without importing torch: decoding and preprocessing with OpenCV and numpy as the file's
metadata records them."""

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ramstrans.deploy.images import ImageReadError, expand_paths, read_image
from ramstrans.deploy.preprocess import Preprocess
from ramstrans.deploy.rows import check_options, emit, format_rows, rows_of
from ramstrans.deploy.session import OnnxModel
from ramstrans.errors import UsageError
from ramstrans.runtime.files import check_output

__all__ = ["run_predict_onnx"]


def _load(path: Path, preprocess: Preprocess) -> np.ndarray | str:
    """One file's (3, crop, crop) input, or why it cannot be read."""
    try:
        return preprocess(read_image(path))
    except ImageReadError as e:
        return e.reason
    except OSError as e:  # vanished or unreadable (permissions) since the listing
        return f"cannot be read ({e.strerror or type(e).__name__})"


def _chunks(files: list[Path], preprocess: Preprocess, size: int, workers: int) -> Iterator[list[np.ndarray | str]]:
    """The files' inputs (or reasons) in chunks of ``size``, decoded by ``workers`` threads (OpenCV releases the
    interpreter lock while it decodes and resizes)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(files), size):
            yield list(pool.map(lambda f: _load(f, preprocess), files[start : start + size]))


def run_predict_onnx(
    model_path: str,
    paths: Sequence[str],
    *,
    topk: int = 5,
    fmt: str = "csv",
    out: str | None = None,
    scales: int | str = 1,
    zoom_threshold: float | None = None,
    zoom_on: str = "maxprob",
    batch_size: int = 32,
    providers: list[str] | None = None,
    num_workers: int = 0,
    overwrite: bool = False,
    tta: str = "none",
) -> dict[str, int]:
    """Classify every image of ``paths`` with an ONNX export; returns {"images", "read", "skipped"}.

    Args:
        model_path: a .onnx file written by ``ramstrans export --format onnx``.
        paths: files, folders (searched recursively) and glob patterns.
        topk: classes per image.
        fmt: "csv" or "json" (JSON lines).
        out: file to write (default: standard output).
        scales: 1, the exported number of scales, or "auto".
        zoom_threshold: "auto": zoom below this confidence (default: the gate's own with ``zoom_on="gate"``, else
            0.5).
        zoom_on: "maxprob", "margin" or "gate".
        batch_size: images per run of the graph.
        providers: onnxruntime execution providers (default: the CPU's).
        num_workers: decoding threads (0: one).
        overwrite: replace ``out`` if it already exists.
        tta: "none", or "flip": the mean of each image's and its mirror's probabilities (zoomed: either view).
    """
    check_options(topk, fmt, batch_size, zoom_threshold, tta)
    files, unlistable = expand_paths(paths)
    if out:
        check_output(out, [model_path, *files], overwrite, "--out")
    model = OnnxModel(model_path, providers)
    scales = _scales(scales)
    model.check_scales(scales, zoom_on)
    if zoom_threshold is None:
        zoom_threshold = model.zoom_threshold if zoom_on == "gate" and model.zoom_threshold is not None else 0.5
    rows: list[dict] = []
    for chunk in _chunks(files, model.preprocess, batch_size, num_workers):
        ok = [x for x in chunk if not isinstance(x, str)]
        pred = _predict(model, np.stack(ok), (scales, zoom_threshold, zoom_on), tta) if ok else None
        done = iter(rows_of(*pred, model.class_names, topk, scales == "auto") if pred else [])
        rows += [{"status": "skipped", "error": x} if isinstance(x, str) else next(done) for x in chunk]
    for path, row in zip(files, rows):
        row["path"] = str(path)
    rows += [{"path": str(folder), "status": "skipped", "error": reason} for folder, reason in unlistable]
    emit(format_rows(rows, fmt, topk, scales == "auto"), out)
    skipped = sum(r["status"] == "skipped" for r in rows)
    return {"images": len(rows), "read": len(rows) - skipped, "skipped": skipped}


def _predict(model: OnnxModel, images: np.ndarray, mode: tuple, tta: str) -> tuple[np.ndarray, np.ndarray]:
    """(B, K) probabilities and (B,) zoomed flags of a batch, with ``mode`` = (scales, threshold, criterion); with
    flip TTA the mean over the image and its mirror (zoomed: either view)."""
    a = model.predict(images, *mode)
    if tta == "none":
        return a.probs, a.zoomed
    b = model.predict(np.ascontiguousarray(images[..., ::-1]), *mode)
    return (a.probs + b.probs) / 2, a.zoomed | b.zoomed


def _scales(value: int | str) -> int | str:
    """``--scales`` as given: a number or "auto"."""
    if str(value) == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--scales must be a number of scales or auto, got '{value}'") from None
