"""``ramstrans eval``: a trained checkpoint on a split of its data set (or of a copy of it at another root), single
scale, fused, or with adaptive zoom; and the sweep that chooses the adaptive threshold on a validation split."""

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ramstrans.config import Config
from ramstrans.data import ImageDataset, eval_loader, load_index, split_tables
from ramstrans.errors import CheckpointError, DataError, UsageError
from ramstrans.inference.load import load_model
from ramstrans.inference.metrics import MetricAccumulator
from ramstrans.inference.plots import (
    CONFUSION_PLOT_MAX,
    confused_pairs,
    plot_confused_pairs,
    plot_confusion,
    plot_zoom_sweep,
)
from ramstrans.models import Model, fuse_probs
from ramstrans.models.build import weights_used
from ramstrans.runtime.amp import amp_setup, autocast
from ramstrans.runtime.dist import resolve_device
from ramstrans.runtime.files import check_output, write_text_atomic

__all__ = [
    "run_eval",
    "run_zoom_sweep",
    "eval_folder",
    "parse_scales",
    "SWEEP_THRESHOLDS",
    "scale_outputs",
    "resolve_threshold",
    "sweep_rows",
    "cheapest_within",
]

SWEEP_THRESHOLDS = tuple(round(t, 2) for t in np.linspace(0.0, 1.0, 21))  # 0, 0.05, ..., 1
SWEEP_TOLERANCE = 0.5  # top-1 points below full fusion that the chosen threshold may give up


def parse_scales(value: str | int, num_scales: int) -> int | str:
    """``--scales`` as given (1, a number of scales, or "auto"), checked against the model.

    Raises:
        ValueError: not a number of scales the model has, nor "auto".
    """
    if str(value) == "auto":
        return "auto"
    try:
        scales = int(value)
    except ValueError:
        raise UsageError(f"--scales must be a number of scales or auto, got '{value}'") from None
    if not 1 <= scales <= num_scales:
        raise UsageError(f"the model has {num_scales} scale(s); cannot run {scales}")
    return scales


def check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--zoom-threshold must be in [0, 1], got {threshold}")
    return threshold


def resolve_threshold(model: Model, zoom_on: str, threshold: float | None) -> float:
    """``--zoom-threshold`` as given, or by default the threshold chosen when the zoom gate was fitted (``--zoom-on
    gate``) or 0.5; checked to lie in [0, 1].

    Raises:
        ValueError: ``--zoom-on gate`` on a model without a fitted gate, or a threshold outside [0, 1].
    """
    gate = model.zoom_gate
    if zoom_on == "gate" and gate is None:
        raise UsageError(
            "--zoom-on gate needs a checkpoint with a fitted zoom gate: ramstrans fit-gate --checkpoint ... writes one"
        )
    if threshold is None:
        threshold = float(gate.threshold) if zoom_on == "gate" else 0.5
    return check_threshold(threshold)


def eval_folder(
    checkpoint: str,
    split: str,
    scales: int | str,
    weights: str,
    threshold: float = 0.0,
    zoom_on: str = "maxprob",
    shift: Sequence[str] = (),
) -> Path:
    """Where an evaluation is written by default: beside the checkpoint, one folder per split, scales, weights (and
    shift)."""
    rule = "" if zoom_on == "maxprob" else f"_{zoom_on}"
    mode = f"auto{threshold:g}{rule}" if scales == "auto" else f"scales{scales}"
    return Path(checkpoint).parent / f"eval_{split}_{mode}_{weights}{'_shift-' + '+'.join(shift) if shift else ''}"


def _per_class_csv(state: dict[str, torch.Tensor], names: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["class_id", "class_name", "images", "correct", "accuracy"])
    for k, name in enumerate(names):
        n, c = int(state["count"][k]), int(state["correct"][k])
        w.writerow([k, name, n, c, f"{100.0 * c / n:.2f}" if n else ""])
    return buf.getvalue()


def _load(
    checkpoint: str,
    weights: str,
    device: str,
    split: str,
    data_root: str | None,
    skip_corrupt: bool,
    shift: Sequence[str] = (),
) -> tuple[Model, Config, list[str], dict, ImageDataset, torch.device]:
    """Model (eval mode, on the device), config, class names, checkpoint and the split's dataset (of the training
    config's data set, or of a copy of it at ``data_root``, used as it is)."""
    dev = resolve_device(device)
    loaded = load_model(checkpoint, weights, shift=shift)
    cfg, ckpt, names = loaded.config, loaded.checkpoint, loaded.class_names
    if cfg is None or ckpt is None:
        raise CheckpointError(
            f"{checkpoint} is an exported folder: evaluation needs the ramstrans checkpoint (it "
            "holds the data set's config); ramstrans predict classifies images with an export"
        )
    loaded.model.to(dev)
    data_cfg = replace(cfg.data, root=data_root) if data_root else cfg.data
    index = load_index(data_cfg, generate=not data_root)
    if index.class_names != names:
        raise UsageError(f"the data set at {index.root} has other classes than checkpoint {checkpoint}")
    tables = split_tables(data_cfg, index, cfg.train.seed)  # the validation split the run carved, if it did
    if split not in tables:
        hint = "; train with data.val_fraction > 0 to hold one out" if split == "val" else ""
        raise UsageError(f"the data set at {index.root} has no '{split}' split (it has {', '.join(tables)}){hint}")
    ds = ImageDataset(index.root, tables[split], names, loaded.transform, skip_corrupt)
    return loaded.model, cfg, names, ckpt, ds, dev


def confused_pairs_csv(confusion: np.ndarray, names: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true_class", "predicted_class", "images", "share_of_true_class"])
    for t, p, n, share in confused_pairs(confusion):
        w.writerow([names[t], names[p], n, f"{share:.4f}"])
    return buf.getvalue()


def run_eval(
    checkpoint: str,
    *,
    output_dir: str | None = None,
    split: str = "test",
    scales: int | str = 1,
    zoom_threshold: float | None = None,
    zoom_on: str = "maxprob",
    weights: str = "auto",
    batch_size: int = 32,
    device: str = "auto",
    data_root: str | None = None,
    num_workers: int = 2,
    skip_corrupt: bool = False,
    show_progress: bool = True,
    shift: Sequence[str] = (),
    overwrite: bool = False,
) -> dict[str, object]:
    """Evaluate a checkpoint: top-1 / top-5 / mean per-class accuracy, localization where boxes exist, the share of
    images zoomed; write the JSON summary, the per-class CSV and the confusion matrix PNG (<= 50 classes) or the most
    confused class pairs (CSV and PNG, more classes).

    Args:
        checkpoint: ramstrans checkpoint.
        output_dir: where to write (default ``eval_folder``: beside the checkpoint).
        split: data split to evaluate ("val": the data set's own, or the one the run carved with data.val_fraction).
        scales: 1 = the single-scale test-time model; N fuses the first N scales; "auto" zooms the uncertain images.
        zoom_threshold: "auto": zoom the images whose scale-1 confidence is below it (choose it with the sweep;
            default: the gate's own with ``zoom_on="gate"``, else 0.5).
        zoom_on: "auto": the confidence, "maxprob" (top probability), "margin" (top-1 minus top-2) or "gate" (1 − the
            fitted zoom gate's probability that the zoom changes the answer).
        weights: "auto" (the EMA weights when the checkpoint has them, as training reported), "raw" or "ema".
        batch_size: images per batch.
        device: auto | cpu | cuda.
        data_root: the data set at another path than the training config's (used as it is, never generated).
        num_workers: loader workers.
        skip_corrupt: skip and count undecodable images.
        show_progress: a progress bar on a terminal.
        shift: named distribution shifts of the images (``data.transforms.SHIFTS``: colour, blur, contrast).
        overwrite: write into ``output_dir`` even if it holds files.
    """
    if output_dir:
        check_output(output_dir, [checkpoint] + ([data_root] if data_root else []), overwrite, "--output")
    model, cfg, names, ckpt, ds, dev = _load(checkpoint, weights, device, split, data_root, skip_corrupt, shift)
    scales = parse_scales(scales, model.num_scales)
    zoom_threshold = resolve_threshold(model, zoom_on, zoom_threshold) if scales == "auto" else 0.0
    amp_dtype, _ = amp_setup(dev, cfg.train.amp)
    res, state = evaluate(
        model,
        eval_loader(ds, batch_size, num_workers),
        device=dev,
        num_classes=len(names),
        amp_dtype=amp_dtype,
        scales=scales,
        zoom_threshold=zoom_threshold,
        zoom_on=zoom_on,
        show_progress=show_progress,
        what=f"{split} split",
    )
    used = weights_used(ckpt, weights)
    out = (
        Path(output_dir) if output_dir else eval_folder(checkpoint, split, scales, used, zoom_threshold, zoom_on, shift)
    )
    out.mkdir(parents=True, exist_ok=True)
    res.update(
        split=split,
        scales=scales,
        weights=used,
        checkpoint=str(checkpoint),
        step=int(ckpt["step"]),
        shift=list(shift),
        output=str(out / "summary.json"),
    )
    if scales == "auto":
        res.update(zoom_threshold=zoom_threshold, zoom_on=zoom_on)
    write_text_atomic(out / "summary.json", json.dumps(res, indent=1))
    write_text_atomic(out / "per_class.csv", _per_class_csv(state, names))
    if "confusion" in state and len(names) <= CONFUSION_PLOT_MAX:
        plot_confusion(state["confusion"].numpy(), names, out / "confusion.png")
    elif "confusion" in state:  # too many classes to draw: the pairs most often confused instead
        write_text_atomic(out / "confused_pairs.csv", confused_pairs_csv(state["confusion"].numpy(), names))
        plot_confused_pairs(state["confusion"].numpy(), names, out / "confused_pairs.png")
    return res


@torch.no_grad()
def scale_outputs(model: Model, loader, device: torch.device, amp_dtype) -> tuple[torch.Tensor, ...]:
    """Per image, on the CPU: scale 1's (N, D) pooled features and (N, K) probabilities, the (N, K) fused
    probabilities of all scales (exactly ``predict``'s) and the (N,) labels. The model is in eval mode."""
    pooled, first, fused, labels = [], [], [], []
    for batch in loader:
        if "image" not in batch:
            continue
        with autocast(device, amp_dtype):
            out = model.forward_multiscale(batch["image"].to(device))
            probs = [z.float().softmax(-1) for z in model.head_logits(out)]
        pooled.append(out.features[0].float().cpu())
        first.append(probs[0].cpu())
        fused.append(fuse_probs(probs).cpu())
        labels.append(batch["label"])
    return torch.cat(pooled), torch.cat(first), torch.cat(fused), torch.cat(labels)


def sweep_rows(
    confidence: torch.Tensor,
    first: torch.Tensor,
    fused: torch.Tensor,
    labels: torch.Tensor,
    thresholds: Sequence[float],
    num_scales: int,
) -> list[dict[str, float]]:
    """Top-1 and cost of adaptive zoom at each threshold: (N,) confidences, (N, K) scale-1 and fused probabilities."""
    rows = []
    for t in thresholds:
        zoom = confidence < t
        probs = torch.where(zoom[:, None], fused, first)
        rows.append(
            {
                "threshold": float(t),
                "top1": 100.0 * (probs.argmax(1) == labels).double().mean().item(),
                "zoomed_share": zoom.float().mean().item(),
                "passes_per_image": 1.0 + zoom.float().mean().item() * (num_scales - 1),
            }
        )
    return rows


def cheapest_within(
    rows: list[dict[str, float]], full_top1: float, tolerance: float = SWEEP_TOLERANCE
) -> dict[str, float] | None:
    """The row with the fewest passes per image (then the highest top-1) within ``tolerance`` of full fusion."""
    good = [r for r in rows if r["top1"] >= full_top1 - tolerance]
    return min(good, key=lambda r: (r["passes_per_image"], -r["top1"])) if good else None


def run_zoom_sweep(
    checkpoint: str,
    *,
    output_dir: str | None = None,
    split: str = "val",
    zoom_on: str = "maxprob",
    weights: str = "auto",
    batch_size: int = 32,
    device: str = "auto",
    data_root: str | None = None,
    num_workers: int = 2,
    skip_corrupt: bool = False,
    overwrite: bool = False,
) -> dict[str, object]:
    """Top-1 against cost (backbone passes per image) of adaptive zoom for ``SWEEP_THRESHOLDS``, on a validation split;
    names the cheapest threshold within ``SWEEP_TOLERANCE`` points of full fusion. Writes sweep.json / .csv / .png.

    Raises:
        ValueError: ``split`` is "test" (a threshold is never chosen on the test split), or a one-scale model.
    """
    if split == "test":
        raise UsageError("the zoom threshold is chosen on a validation split, never on test: use --split val")
    if output_dir:
        check_output(output_dir, [checkpoint] + ([data_root] if data_root else []), overwrite, "--output")
    model, cfg, names, ckpt, ds, dev = _load(checkpoint, weights, device, split, data_root, skip_corrupt)
    if model.num_scales < 2:
        raise UsageError(f"checkpoint {checkpoint} has one scale: there is no zoom to sweep")
    resolve_threshold(model, zoom_on, 0.0)  # a gate sweep needs a gate
    pooled, first, fused, labels = scale_outputs(
        model, eval_loader(ds, batch_size, num_workers), dev, amp_setup(dev, cfg.train.amp)[0]
    )
    rows = sweep_rows(
        model.zoom_score(pooled, first, zoom_on), first, fused, labels, SWEEP_THRESHOLDS, model.num_scales
    )
    full = 100.0 * (fused.argmax(1) == labels).double().mean().item()
    single = 100.0 * (first.argmax(1) == labels).double().mean().item()
    chosen = cheapest_within(rows, full)
    result = {
        "checkpoint": str(checkpoint),
        "split": split,
        "images": len(labels),
        "zoom_on": zoom_on,
        "weights": weights_used(ckpt, weights),
        "single_scale_top1": single,
        "full_fusion_top1": full,
        "full_fusion_passes_per_image": float(model.num_scales),
        "tolerance_points": SWEEP_TOLERANCE,
        "chosen": chosen,
        "rows": rows,
    }
    out = Path(output_dir) if output_dir else Path(checkpoint).parent / f"sweep_zoom_{split}_{result['weights']}"
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sweep.json", json.dumps(result, indent=1))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "sweep.csv", buf.getvalue())
    plot_zoom_sweep(rows, single, full, model.num_scales, chosen, out / "sweep.png")
    result["output"] = str(out)
    return result


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    scales: int | str = 1,
    zoom_threshold: float = 0.5,
    zoom_on: str = "maxprob",
    reduce: Callable[[dict[str, Tensor]], None] | None = None,
    show_progress: bool = False,
    what: str = "evaluated split",
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

    Returns:
        (metrics, state): {"images", "top1", "top5", "mean_class_acc", ["loc_miou", "loc_iou50"], "skipped",
        "zoomed_share", "passes_per_image", [with a distillation token: "top1_mean", "top1_cls", "top1_dist"]} and
        the summed metric state (per-class counts, confusion matrix).

    Raises:
        DataError: no image could be read.
    """
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(num_classes)
    skipped = zoomed = 0
    heads: dict[str, Tensor] = {}  # with a distillation token: correct images per head, summed on the device
    for batch in tqdm(loader, disable=not (show_progress and sys.stderr.isatty()), dynamic_ncols=True, unit="batch"):
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
    acc.state["skipped"] = torch.tensor(float(skipped), dtype=torch.float64)
    acc.state["zoomed"] = torch.as_tensor(zoomed, dtype=torch.float64).cpu().reshape(())
    for h, n in heads.items():
        acc.state[f"correct_{h}"] = torch.as_tensor(n, dtype=torch.float64).cpu().reshape(())
    if reduce is not None:
        reduce(acc.state)
    model.train(was_training)
    result = acc.summary()
    result["skipped"] = int(acc.state["skipped"].item())
    if result["images"] == 0:
        raise DataError(f"every image of the {what} was unreadable ({result['skipped']} skipped): nothing to evaluate")
    result["zoomed_share"] = acc.state["zoomed"].item() / result["images"]
    for h in heads:
        result[f"top1_{h}"] = 100.0 * acc.state[f"correct_{h}"].item() / result["images"]
    deepest = model.num_scales if scales == "auto" else int(scales)
    result["passes_per_image"] = 1.0 + result["zoomed_share"] * (deepest - 1)  # backbone passes
    return result, acc.state
