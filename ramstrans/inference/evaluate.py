"""``ramstrans eval``: a trained checkpoint on a split of its data set (or of a copy of it at another root), single
scale, fused, or with adaptive zoom; and ``evaluate``, the evaluation loop training uses too."""

import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from ramstrans.data import eval_loader
from ramstrans.deploy.modes import check_tta, parse_scales, resolve_threshold
from ramstrans.errors import DataError, UsageError
from ramstrans.inference.inputs import EvalInputs, load_eval_inputs, training_counts
from ramstrans.inference.metrics import SHOT_THRESHOLDS, MetricAccumulator, shot_accuracy
from ramstrans.inference.plots import (
    CONFUSION_PLOT_MAX,
    confused_pairs,
    plot_confused_pairs,
    plot_confusion,
    plot_reliability,
)
from ramstrans.inference.report import write_report
from ramstrans.inference.tta import with_tta
from ramstrans.models import Predictor, ZoomCriterion
from ramstrans.registry import EvalRequest
from ramstrans.runtime.amp import amp_setup, autocast
from ramstrans.runtime.files import check_output, write_text_atomic

__all__ = ["run_eval", "evaluate", "eval_folder", "gate_threshold"]


def gate_threshold(model: Predictor) -> float | None:
    """The threshold chosen when the model's zoom gate was fitted, or None without a gate."""
    gate = model.zoom_gate
    return None if gate is None else float(gate.threshold)


def eval_folder(
    checkpoint: str,
    split: str,
    scales: int | str,
    weights: str,
    threshold: float = 0.0,
    zoom_on: ZoomCriterion = "maxprob",
    shift: Sequence[str] = (),
    tta: str = "none",
) -> Path:
    """Where an evaluation is written by default: beside the checkpoint, one folder per split, scales, weights (and
    shift, test-time augmentation)."""
    rule = "" if zoom_on == "maxprob" else f"_{zoom_on}"
    mode = f"auto{threshold:g}{rule}" if scales == "auto" else f"scales{scales}"
    extra = ("_shift-" + "+".join(shift) if shift else "") + ("" if tta == "none" else f"_tta-{tta}")
    return Path(checkpoint).parent / f"eval_{split}_{mode}_{weights}{extra}"


def _per_class_csv(state: dict[str, torch.Tensor], names: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["class_id", "class_name", "images", "correct", "accuracy"])
    for k, name in enumerate(names):
        n, c = int(state["count"][k]), int(state["correct"][k])
        w.writerow([k, name, n, c, f"{100.0 * c / n:.2f}" if n else ""])
    return buf.getvalue()


def confused_pairs_csv(confusion: np.ndarray, names: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true_class", "predicted_class", "images", "share_of_true_class"])
    for t, p, n, share in confused_pairs(confusion):
        w.writerow([names[t], names[p], n, f"{share:.4f}"])
    return buf.getvalue()


def run_eval(
    request: EvalRequest,
    *,
    output_dir: str | None = None,
    scales: int | str = 1,
    zoom_threshold: float | None = None,
    zoom_on: ZoomCriterion = "maxprob",
    show_progress: bool = True,
    overwrite: bool = False,
    tta: str = "none",
    shot_thresholds: Sequence[int] = SHOT_THRESHOLDS,
    report: bool = False,
) -> dict[str, object]:
    """Evaluate a model source (a checkpoint, a run folder, an ONNX file) on a split: top-1 / top-5 / mean per-class
    accuracy, many / medium / few-shot accuracy (by the classes' training images), the expected calibration error,
    localization where boxes exist, the share of images zoomed; write the JSON summary, the per-class CSV, the
    reliability diagram and the confusion matrix PNG (<= 50 classes) or the most confused class pairs (CSV and PNG,
    more classes).

    Args:
        request: the source and the evaluation's options (split, weights, batch size, device, data root, workers,
            skipping unreadable images, a distribution shift).
        output_dir: where to write (default ``eval_folder``: beside the checkpoint).
        scales: 1 = the single-scale test-time model; N fuses the first N scales; "auto" zooms the uncertain images.
        zoom_threshold: "auto": zoom the images whose scale-1 confidence is below it (choose it with the sweep;
            default: the gate's own with ``zoom_on="gate"``, else 0.5).
        zoom_on: "auto": the confidence, "maxprob" (top probability), "margin" (top-1 minus top-2) or "gate" (1 − the
            fitted zoom gate's probability that the zoom changes the answer).
        show_progress: a progress bar on a terminal.
        overwrite: write into ``output_dir`` even if it holds files.
        tta: "none" or "flip" (the mean of the image's and its mirror's probabilities).
        shot_thresholds: (many, few): many-shot classes have more than ``many`` training images, few-shot fewer than
            ``few``.
        report: also write ``report.html`` (``inference.report``): every image with its saliency, box, crop and
            scale 1's and the fused top-3, the per-class table, the confusion pairs and the calibration.
    """
    many, few = shot_thresholds
    if not 0 <= few <= many + 1:
        raise UsageError(f"--few-shot {few} must be >= 0 and at most --many-shot {many} + 1")
    check_tta(tta)
    if output_dir:
        reads = [request.source] + ([request.data_root] if request.data_root else [])
        check_output(output_dir, reads, overwrite, "--output")
    inputs = load_eval_inputs(request)
    if output_dir:  # against what the source and the data set read on their own too (a data set's folder, a companion)
        check_output(output_dir, [], True, "--output")
    model, dev = inputs.model, inputs.device
    scales = parse_scales(scales, model.num_scales)
    zoom_threshold = resolve_threshold(gate_threshold(model), zoom_on, zoom_threshold) if scales == "auto" else 0.0
    amp = amp_setup(dev, inputs.config.train.amp)[0]
    metrics, state = evaluate(
        model,
        eval_loader(inputs.dataset, request.batch_size, request.num_workers),
        device=dev,
        num_classes=len(inputs.class_names),
        amp_dtype=amp,
        scales=scales,
        zoom_threshold=zoom_threshold,
        zoom_on=zoom_on,
        show_progress=show_progress,
        what=f"{request.split} split",
        tta=tta,
    )
    where = (str(inputs.file), request.split, scales, inputs.weights, zoom_threshold, zoom_on, request.shift, tta)
    out = Path(output_dir) if output_dir else eval_folder(*where)
    out.mkdir(parents=True, exist_ok=True)
    res = _result(metrics, inputs, request, scales, out)
    counts = training_counts(inputs.config, inputs.class_names, request.data_root)
    res["shots"] = shot_accuracy(state["count"].tolist(), state["correct"].tolist(), counts, shot_thresholds)
    res.update(shot_thresholds=list(shot_thresholds), tta=tta, temperature=float(model.temperature))
    if scales == "auto":
        res.update(zoom_threshold=zoom_threshold, zoom_on=zoom_on)
    _write_eval(out, res, state, inputs.class_names)
    if report:
        res["report"] = str(write_report(inputs, res, out, request.batch_size, request.num_workers, amp))
    return res


def _result(
    metrics: dict[str, float], inputs: EvalInputs, request: EvalRequest, scales: int | str, out: Path
) -> dict[str, object]:
    """The summary ``run_eval`` writes and returns: the metrics and what was evaluated, how, and where it went."""
    return {
        **metrics,
        "split": request.split,
        "scales": scales,
        "weights": inputs.weights,
        "checkpoint": str(inputs.file),
        "step": inputs.step,
        "shift": list(request.shift),
        "output": str(out / "summary.json"),
    }


def _write_eval(out: Path, res: dict[str, object], state: dict[str, Tensor], names: list[str]) -> None:
    """summary.json, per_class.csv and the confusion matrix PNG (<= 50 classes) or the most confused class pairs
    (CSV and PNG, more classes) into ``out``."""
    write_text_atomic(out / "summary.json", json.dumps(res, indent=1))
    write_text_atomic(out / "per_class.csv", _per_class_csv(state, names))
    plot_reliability(state["bin_count"].numpy(), state["bin_confidence"].numpy(), state["bin_correct"].numpy(), out)
    if "confusion" in state and len(names) <= CONFUSION_PLOT_MAX:
        plot_confusion(state["confusion"].numpy(), names, out / "confusion.png")
    elif "confusion" in state:  # too many classes to draw: the pairs most often confused instead
        write_text_atomic(out / "confused_pairs.csv", confused_pairs_csv(state["confusion"].numpy(), names))
        plot_confused_pairs(state["confusion"].numpy(), names, out / "confused_pairs.png")


@torch.no_grad()
def evaluate(
    model: Predictor,
    loader: DataLoader,
    *,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    scales: int | str = 1,
    zoom_threshold: float = 0.5,
    zoom_on: ZoomCriterion = "maxprob",
    reduce: Callable[[dict[str, Tensor]], None] | None = None,
    show_progress: bool = False,
    what: str = "evaluated split",
    tta: str = "none",
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Accuracy of ``RAMSTrans.predict`` (single scale by default, the fusion of the first ``scales`` scales, or
    "auto": adaptive zoom) and, where the batches carry boxes, the scale-1 proposal's IoU with them. A single-scale
    batch without boxes runs the plain forward (no attention capture).

    Args:
        model: RAMSTrans (not wrapped).
        loader: finite loader of dicts with ``image``, ``label``, ``box`` (NaN rows: no box).
        device: where to compute.
        num_classes: K.
        amp_dtype: autocast dtype or None.
        scales: 1, the number of scales fused, or "auto".
        zoom_threshold: "auto": zoom the images whose scale-1 confidence is below it.
        zoom_on: "auto": the confidence, "maxprob" or "margin".
        reduce: in-place sum of the metric state across processes (distributed evaluation).
        show_progress: a tqdm bar when stderr is a terminal.
        what: how to name the data in an error (e.g. "test split").
        tta: "none" or "flip" (the mean of the image's and its mirror's probabilities; each view's passes count).

    Returns:
        (metrics, state): {"images", "top1", "top5", "mean_class_acc", ["loc_miou", "loc_iou50"], "skipped",
        "zoomed_share", "passes_per_image", [with a distillation token: "top1_mean", "top1_cls", "top1_dist"]} and
        the summed metric state (per-class counts, confusion matrix).

    Raises:
        DataError: no image could be read.
    """
    predictor, views = with_tta(model, tta)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(num_classes)
    bar = tqdm(loader, disable=not (show_progress and sys.stderr.isatty()), dynamic_ncols=True, unit="batch")
    skipped, zoomed, heads = _accumulate(predictor, bar, acc, device, amp_dtype, scales, zoom_threshold, zoom_on)
    acc.state["skipped"] = torch.tensor(float(skipped), dtype=torch.float64)
    acc.state["zoomed"] = torch.as_tensor(zoomed, dtype=torch.float64).cpu().reshape(())
    for h, n in heads.items():
        acc.state[f"correct_{h}"] = torch.as_tensor(n, dtype=torch.float64).cpu().reshape(())
    if reduce is not None:
        reduce(acc.state)
    model.train(was_training)
    zoom_passes = model.zoom_passes if scales == "auto" else int(scales) - 1
    return _summary(acc, list(heads), zoom_passes, what, views), acc.state


def _accumulate(
    model: Predictor,
    batches: Iterable[dict],
    acc: MetricAccumulator,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    scales: int | str,
    zoom_threshold: float,
    zoom_on: ZoomCriterion,
) -> tuple[int, Tensor | int, dict[str, Tensor]]:
    """Predict every batch into ``acc``; returns the unreadable images, the zoomed images and, with a distillation
    token, the correct images per head (the last two summed on the device, read once at the end)."""
    skipped = 0
    zoomed: Tensor | int = 0
    heads: dict[str, Tensor] = {}  # with a distillation token: correct images per head, summed on the device
    for batch in batches:
        skipped += batch["skipped"]
        if "image" not in batch:
            continue
        x = batch["image"].to(device, non_blocking=True)
        has_boxes = not torch.isnan(batch["box"]).all().item()  # a CPU tensor from the loader: no device sync
        with autocast(device, amp_dtype):
            pred = model.predict(x, scales, zoom_threshold, zoom_on, boxes=has_boxes)
        zoomed = zoomed + pred.zoomed.sum()  # summed on the device, read once at the end
        labels = batch["label"].to(pred.probs.device)
        for h, p in pred.head_probs.items():
            heads[h] = heads.get(h, 0) + (p.argmax(dim=-1) == labels).sum()
        acc.update(pred.probs, batch["label"], pred.boxes, batch["box"])
    return skipped, zoomed, heads


def _summary(acc: MetricAccumulator, heads: list[str], zoom_passes: int, what: str, views: int = 1) -> dict[str, float]:
    """The metrics of the (reduced) state: accuracy, calibration, localization, unreadable images, the zoomed share
    (of the views) and the backbone passes per image (all views; a zoomed image costs ``zoom_passes`` more), and
    each head's top-1 with a distillation token."""
    result = acc.summary()
    result["skipped"] = int(acc.state["skipped"].item())
    if result["images"] == 0:
        raise DataError(f"every image of the {what} was unreadable ({result['skipped']} skipped): nothing to evaluate")
    result["zoomed_share"] = acc.state["zoomed"].item() / (result["images"] * views)
    for h in heads:
        result[f"top1_{h}"] = 100.0 * acc.state[f"correct_{h}"].item() / result["images"]
    result["passes_per_image"] = views * (1.0 + result["zoomed_share"] * zoom_passes)  # backbone passes
    if views > 1:
        result["views"] = views
    return result
