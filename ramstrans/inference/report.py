"""``ramstrans eval --report``: one self-contained HTML page per evaluation (``report.html`` in the eval folder), which
opens offline from ``file://``: where the model zooms, what the zoom changed, the confusions, per-class accuracy and the
calibration, for a checkpoint or an ONNX file.

A report pass runs every image of the split once more after the evaluation (whose loop stays as it is): scale 1's
probabilities, the fusion of every scale with scale 1's box, and for a checkpoint the saliency map. Each image gets two
JPEG thumbnails in the sibling folder ``report_files/`` (the input with the heat map and the box, and the zoomed crop),
loaded lazily a page at a time. Thumbnails are files, not embedded: embedded as base64, a CUB-sized split (5,794
images x 2 thumbnails) would be a page of tens of MB that the browser parses before its first paint; as files, the page
holds the records only (a few hundred bytes per image) and paints its first page at once (measured: BENCHMARKS.md).
The records are also written as ``report.json`` (what the page shows, for scripts and tests). CSS and JS are inline
(``report_page.html``); every name reaches the page as JSON read by ``textContent``, never as HTML.
"""

import json
import math
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from ramstrans.data import eval_loader
from ramstrans.errors import UsageError
from ramstrans.inference.inputs import EvalInputs
from ramstrans.inference.plots import denormalize, heatmap_overlay
from ramstrans.models import RAMSTrans
from ramstrans.runtime.amp import autocast
from ramstrans.runtime.files import write_text_atomic

__all__ = ["write_report", "summarise", "render_page", "THUMB"]

THUMB = 128  # px, the longer side of a thumbnail
BINS = 15  # the reliability diagram's confidence bins (the eval summary's ECE uses as many)
PAIRS = 20  # confusion pairs listed
FILES = "report_files"


def _top3(probs: Tensor) -> list[list[list[float]]]:
    """(B, K) probabilities -> per image [[class, probability] x 3], most probable first."""
    p, k = probs.float().topk(min(3, probs.shape[1]), dim=1)
    return [[[int(c), round(float(q), 6)] for c, q in zip(ks, ps)] for ks, ps in zip(k.tolist(), p.tolist())]


def _iou(a: list[float] | None, b: list[float]) -> float | None:
    """IoU of two xyxy boxes; None without the first (no ground-truth box)."""
    if a is None or any(math.isnan(v) for v in a):
        return None
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return round(w * h / union, 6) if union > 0 else 0.0


def _thumbs(image: np.ndarray, saliency: np.ndarray | None, box: list[float] | None, name: str, files: Path) -> None:
    """The two thumbnails of one image: ``<name>_a.jpg`` (heat map and box over the input) and ``<name>_c.jpg``
    (the zoomed crop; the input itself without a box)."""
    shown = heatmap_overlay(image, saliency, 0.35) if saliency is not None else image.copy()
    crop = image
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(shown, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (0, 255, 0), max(1, image.shape[0] // 64))
        crop = image[y0 : max(y0 + 1, y1), x0 : max(x0 + 1, x1)]
    for suffix, picture in (("a", shown), ("c", crop)):
        h, w = picture.shape[:2]
        scale = THUMB / max(h, w)
        small = cv2.resize(picture, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        file = files / f"{name}_{suffix}.jpg"
        if not cv2.imwrite(str(file), cv2.cvtColor(small, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write the report's thumbnail {file} (a full disk or an unwritable folder?)")


@torch.no_grad()
def collect(inputs: EvalInputs, batch_size: int, workers: int, files: Path, amp: Any) -> list[dict[str, Any]]:
    """One record per readable image of the split (see the module doc), its thumbnails written into ``files``."""
    model, dev = inputs.model, inputs.device
    scales = model.num_scales
    maps = isinstance(model, RAMSTrans) and scales > 1
    mean, std = inputs.loaded.transform.mean, inputs.loaded.transform.std
    records: list[dict[str, Any]] = []
    for batch in eval_loader(inputs.dataset, batch_size, workers):
        if "image" not in batch:
            continue
        x = batch["image"].to(dev)
        with autocast(dev, amp):
            first = model.predict(x, 1, boxes=False).probs
            fused = model.predict(x, scales, boxes=scales > 1) if scales > 1 else None
            rollout = model.propose(x).rollout.float().cpu().numpy() if maps else None
        boxes = fused.boxes.tolist() if fused is not None and fused.boxes is not None else None
        s1, sf = _top3(first), _top3(fused.probs if fused is not None else first)
        for i in range(len(x)):
            n = len(records)
            box = boxes[i] if boxes is not None else None
            image = denormalize(x[i].float().cpu().numpy(), mean, std)
            _thumbs(image, rollout[i] if rollout is not None else None, box, f"{n:05d}", files)
            records.append(
                {
                    "path": inputs.dataset.paths[int(batch["index"][i])],
                    "label": int(batch["label"][i]),
                    "s1": s1[i],
                    "fused": sf[i],
                    "box": [round(v, 2) for v in box] if box is not None else None,
                    "iou": _iou(batch["box"][i].tolist(), box) if box is not None else None,
                }
            )
    return records


def summarise(records: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """What the page computes nothing of: per class (count, fused accuracy, the class its images are most often
    taken for, mean IoU), the ``PAIRS`` most confused (true, predicted) pairs with their images, and the reliability
    diagram's bins of the fused confidence ({"confidence", "accuracy", "count"} per non-empty bin)."""
    k = len(names)
    confusion = np.zeros((k, k), dtype=np.int64)
    for r in records:
        confusion[r["label"], r["fused"][0][0]] += 1
    per_class = []
    for c in range(k):
        wrong = confusion[c].copy()
        wrong[c] = 0
        ious = [r["iou"] for r in records if r["label"] == c and r["iou"] is not None]
        count = int(confusion[c].sum())
        per_class.append(
            {
                "class": c,
                "count": count,
                "accuracy": round(100.0 * confusion[c, c] / count, 4) if count else None,
                "confused_with": int(wrong.argmax()) if wrong.any() else None,
                "miou": round(float(np.mean(ious)), 4) if ious else None,
            }
        )
    off = [(int(confusion[t, p]), t, p) for t in range(k) for p in range(k) if t != p and confusion[t, p]]
    pairs = [{"true": t, "pred": p, "count": n} for n, t, p in sorted(off, key=lambda v: (-v[0], v[1], v[2]))[:PAIRS]]
    return {"per_class": per_class, "pairs": pairs, "reliability": _reliability(records)}


def _reliability(records: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Equal-width bins of the fused top probability: mean confidence, accuracy (%) and count of each non-empty one."""
    conf = np.array([r["fused"][0][1] for r in records], dtype=np.float64)
    right = np.array([r["fused"][0][0] == r["label"] for r in records], dtype=np.float64)
    which = np.minimum((conf * BINS).astype(int), BINS - 1)
    return [
        {
            "confidence": round(float(conf[which == b].mean()), 4),
            "accuracy": round(100.0 * float(right[which == b].mean()), 4),
            "count": int((which == b).sum()),
        }
        for b in range(BINS)
        if (which == b).any()
    ]


def render_page(data: dict[str, Any]) -> str:
    """The page: ``report_page.html`` with ``data`` as JSON inside a script element (every ``<`` escaped, so no name
    can close the element or open a tag)."""
    template = resources.files("ramstrans.inference").joinpath("report_page.html").read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return template.replace("/*DATA*/{}", payload)


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float made None (JSON has no NaN; the page shows "-")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _sweep(inputs: EvalInputs) -> list[dict[str, float]] | None:
    """The adaptive-zoom curve (top-1 against passes) of ``eval --split val --sweep-zoom`` beside the checkpoint, when
    it was run (its default folder)."""
    path = inputs.file.parent / f"sweep_zoom_val_{inputs.weights}" / "sweep.json"
    if not path.is_file():
        return None
    try:
        sweep = json.loads(path.read_text(encoding="utf-8"))
        if sweep.get("checkpoint") != str(inputs.file):  # another checkpoint's sweep in the same run folder
            return None
        rows = [{"passes": float(r["passes_per_image"]), "top1": float(r["top1"])} for r in sweep["rows"]]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None  # a damaged sweep: the page says none was found rather than failing the evaluation
    rows = [r for r in rows if math.isfinite(r["passes"]) and math.isfinite(r["top1"])]
    return rows or None


def write_report(
    inputs: EvalInputs, summary: dict[str, Any], out: Path, batch_size: int, workers: int, amp: Any
) -> Path:
    """``report.html``, ``report.json`` and ``report_files/`` into the eval folder ``out``; the thumbnails are made in
    a staging folder and moved in whole, the page written last.

    Raises:
        UsageError: no readable image in the split (nothing to report).
    """
    staging = out / f".{FILES}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        records = collect(inputs, batch_size, workers, staging, amp)
        if not records:
            raise UsageError(f"the {summary['split']} split has no readable image: there is nothing to report")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    names = inputs.class_names
    boxes = records[0]["box"] is not None
    answers = {  # what the gallery and the per-class table show: every scale fused, and scale 1 alone
        "report_scales": inputs.model.num_scales,
        "report_fused_top1": 100.0 * sum(r["fused"][0][0] == r["label"] for r in records) / len(records),
        "report_single_top1": 100.0 * sum(r["s1"][0][0] == r["label"] for r in records) / len(records),
    }
    header = {**summary, **answers, "model": str(inputs.file), "kind": inputs.loaded.kind, "classes": len(names)}
    data = {
        "header": _finite(header),
        "names": names,
        "boxes": boxes,
        "no_boxes_reason": None if boxes else f"{inputs.file} runs one scale: it has no proposal, so no boxes or crops",
        "records": records,
        "sweep": _sweep(inputs),
        **summarise(records, names),
    }
    shutil.rmtree(out / FILES, ignore_errors=True)
    staging.rename(out / FILES)
    write_text_atomic(out / "report.json", json.dumps(data, allow_nan=False))
    return write_text_atomic(out / "report.html", render_page(data))
