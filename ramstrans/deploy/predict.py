"""``ramstrans predict``: the one loop that classifies image files, folders (recursively) and globs with any model
source, its rows streamed as they are made.

The source's reader gives an ``ArrayModel`` (``ramstrans.registry.open_arrays``): an ONNX file runs in onnxruntime
without importing torch (decoding and preprocessing with OpenCV and numpy as the file's metadata records them); a
checkpoint or an export folder runs its torch model (``inference.predict.TorchArrays``). Every path is one row, in
order: its top-k classes and probabilities (and, with ``--scales auto``, whether it was zoomed), or why it could not be
read. Folders are listed as the loop reaches them, and a chunk of ``batch_size`` files is decoded (by ``workers``
threads: OpenCV releases the interpreter lock), predicted and written before the next is read, so the first row comes
after one batch and memory does not grow with the number of files.
"""

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ramstrans.deploy.images import ImageReadError, check_paths, iter_paths
from ramstrans.deploy.modes import check_options, parse_scales, resolve_threshold
from ramstrans.deploy.rows import RowWriter, rows_of
from ramstrans.errors import UsageError
from ramstrans.registry import EvalRequest, open_arrays
from ramstrans.runtime.files import check_output, same_file

__all__ = ["ArrayModel", "run_predict", "predict_files"]


class ArrayModel(Protocol):
    """What the predict loop runs: a model read by its source's reader, fed prepared image arrays."""

    class_names: list[str]
    num_scales: int

    @property
    def gate_threshold(self) -> float | None:
        """The threshold chosen when the zoom gate was fitted, or None without a gate."""
        ...

    @property
    def draws(self) -> str:
        """ "" when it can draw zoom panels (``--visualize``), else why not ("is a classifier without attention")."""
        ...

    def check_scales(self, scales: int | str, zoom_on: str = "maxprob") -> None:
        """Refuse a ``--scales`` / ``--zoom-on`` it cannot run, in one sentence."""
        ...

    def drawer(self, folder: Path) -> Callable[[list[Any], list[Path]], None]:
        """What draws the zoom panels of each batch's (prepared images, paths) into ``folder`` (where ``draws`` is
        "")."""
        ...

    def prepare(self, path: Path) -> Any:
        """One image file's network input (an array or a tensor); raises ``ImageReadError`` for a bad file."""
        ...

    def predict_batch(
        self, images: list[Any], scales: int | str, threshold: float, zoom_on: str, mirror: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, K) float32 probabilities and (B,) zoomed flags of prepared images (``mirror``: of their mirrors)."""
        ...


def _load(model: ArrayModel, path: Path) -> Any:
    """One file's input, or why it cannot be read (a str)."""
    try:
        return model.prepare(path)
    except ImageReadError as e:
        return e.reason
    except OSError as e:  # vanished or unreadable (permissions) since the listing
        return f"cannot be read ({e.strerror or type(e).__name__})"


def _chunks(
    model: ArrayModel, files: Iterable[Path], size: int, workers: int
) -> Iterator[tuple[list[Path], list[Any]]]:
    """The files in chunks of ``size`` (taken from ``files`` as they come), with their inputs (or reasons), decoded by
    ``workers`` threads."""
    listed = iter(files)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        while chunk := list(islice(listed, size)):
            yield chunk, list(pool.map(lambda f: _load(model, f), chunk))


def _never_out(files: Iterable[Path], out: str | None) -> Iterator[Path]:
    """The files, refused as they come when one is ``out`` itself (by device and inode: a link counts). The rows go
    to a temp file until the end, so an input is refused before anything replaces it."""
    exists = out is not None and Path(out).exists()
    for f in files:
        if exists and same_file(str(out), f):
            raise UsageError(
                f"--out {out} is one of the command's inputs ({f}): it would be destroyed; choose another output"
            )
        yield f


def _row(path: Path, item: Any, made: Iterator[dict]) -> dict:
    """The row of one file: the next prediction of the batch, or (``item`` is a reason) why it was skipped."""
    if isinstance(item, str):
        return {"status": "skipped", "error": item, "path": str(path)}
    return {**next(made), "path": str(path)}


def predict_files(
    model: ArrayModel,
    files: Iterable[Path],
    writer: RowWriter,
    mode: tuple[int | str, float, str, str],
    *,
    topk: int = 5,
    batch_size: int = 32,
    workers: int = 0,
    draw: Callable[[list[Any], list[Path]], None] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, int]:
    """Classify ``files`` chunk by chunk into ``writer``; returns {"images", "read", "skipped"}.

    Args:
        model: the model behind arrays.
        files: image files, in the order of their rows (taken as they come: a listing may be lazy).
        writer: where the rows go as they are made.
        mode: (scales, zoom threshold, zoom criterion, test-time augmentation "none" or "flip": the mean of each
            image's and its mirror's probabilities, zoomed where either view was).
        topk: classes per row.
        batch_size: images per batch.
        workers: decoding threads (0: one).
        draw: called with (prepared images, their paths) after each batch (``--visualize``).
        progress: called with the number of files of each chunk written (a progress bar's update).
    """
    scales, threshold, zoom_on, tta = mode
    counts = {"images": 0, "read": 0, "skipped": 0}
    for paths, items in _chunks(model, files, batch_size, workers):
        ok = [x for x in items if not isinstance(x, str)]
        made: Iterator[dict] = iter([])
        if ok:
            probs, zoomed = model.predict_batch(ok, scales, threshold, zoom_on)
            if tta == "flip":
                mirrored, zoomed_mirror = model.predict_batch(ok, scales, threshold, zoom_on, mirror=True)
                probs, zoomed = (probs + mirrored) / 2, zoomed | zoomed_mirror
            made = iter(rows_of(probs, zoomed, model.class_names, topk, scales == "auto"))
            if draw is not None:
                draw(ok, [p for p, x in zip(paths, items) if not isinstance(x, str)])
        writer.write([_row(p, x, made) for p, x in zip(paths, items)])
        counts["images"] += len(paths)
        counts["read"] += len(ok)
        if progress is not None:
            progress(len(paths))
    counts["skipped"] = counts["images"] - counts["read"]
    return counts


def run_predict(
    request: EvalRequest,
    paths: Sequence[str],
    *,
    topk: int = 5,
    fmt: str = "csv",
    out: str | None = None,
    scales: int | str = 1,
    zoom_threshold: float | None = None,
    zoom_on: str = "maxprob",
    overwrite: bool = False,
    tta: str = "none",
    visualize: str | None = None,
    show_progress: bool = True,
) -> dict[str, int]:
    """Classify every image of ``paths`` with the model of ``request.source``; returns {"images", "read", "skipped"}.

    Args:
        request: the model source and how to read it (``batch_size``, ``num_workers`` decoding threads, a
            checkpoint's ``weights`` and ``device``, an ONNX file's ``providers``).
        paths: files, folders (searched recursively) and glob patterns.
        topk: classes per image.
        fmt: "csv" or "json" (JSON lines).
        out: file to write (default: standard output).
        scales: 1, N (fuse N scales) or "auto" (zoom the images scale 1 is unsure of).
        zoom_threshold: "auto": zoom below this scale-1 confidence (default: the gate's own with ``zoom_on="gate"``,
            else 0.5).
        zoom_on: "maxprob", "margin" or "gate" (a model with a fitted zoom gate).
        overwrite: replace ``out`` (and fill ``visualize``) if it already exists.
        tta: "none", or "flip": the mean of each image's and its mirror's probabilities (zoomed: either view).
        visualize: also draw the zoom panel of every read image into this folder (a RAMS-Trans model).
        show_progress: a progress bar (images) on a terminal's standard error.
    """
    check_options(topk, fmt, request.batch_size, zoom_threshold, tta)
    matches = check_paths(paths)
    unlistable: list[tuple[Path, str]] = []
    files: Iterable[Path] = iter_paths(matches, unlistable)  # listed as the loop reaches them
    if out:
        check_output(out, [request.source, *matches], overwrite, "--out")
        files = _never_out(files, out)
    if visualize:  # panels are written as they are drawn: every input is checked first
        files = list(files)
        check_output(visualize, [request.source, *files], overwrite, "--visualize")
    model: ArrayModel = open_arrays(request)
    for target, flag in ((out, "--out"), (visualize, "--visualize")):
        if target:  # against what the source read on its own too (a fused file's companion graph, a folder's files)
            check_output(target, [], True, flag)
    if visualize and model.draws:
        raise UsageError(f"--visualize needs a RAMS-Trans model; {request.source} {model.draws}")
    scales = parse_scales(scales)
    model.check_scales(scales, zoom_on)
    threshold = resolve_threshold(model.gate_threshold, zoom_on, zoom_threshold) if scales == "auto" else 0.0
    draw = model.drawer(Path(visualize)) if visualize else None
    bar = tqdm(unit="image", disable=not (show_progress and sys.stderr.isatty()), dynamic_ncols=True)
    with bar, RowWriter(fmt, topk, scales == "auto", out) as writer:
        counts = predict_files(
            model,
            files,
            writer,
            (scales, threshold, zoom_on, tta),
            topk=topk,
            batch_size=request.batch_size,
            workers=request.num_workers,
            draw=draw,
            progress=bar.update,
        )
        writer.write([{"path": str(folder), "status": "skipped", "error": reason} for folder, reason in unlistable])
    skipped = counts["skipped"] + len(unlistable)
    return {"images": counts["images"] + len(unlistable), "read": counts["read"], "skipped": skipped}
