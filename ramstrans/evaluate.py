"""``ramstrans eval``: a trained checkpoint on a split of its data set (or of a copy of it at another root), single
scale, fused, or with adaptive zoom; and the sweep that chooses the adaptive threshold on a validation split."""

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, model_from_checkpoint, weights_used
from .config import Config
from .data import ImageDataset, Transform, eval_loader, load_index, split_tables
from .dist import resolve_device
from .engine import amp_setup, autocast, evaluate
from .files import check_output, write_text_atomic
from .models import Model, fuse_probs
from .plots import CONFUSION_PLOT_MAX, confused_pairs, plot_confused_pairs, plot_confusion, plot_zoom_sweep

__all__ = [
    "run_eval",
    "run_zoom_sweep",
    "eval_transform",
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


def eval_transform(cfg: Config, model: Model, shift: Sequence[str] = ()) -> Transform:
    """The deterministic test-time transform of a trained model (resize, center crop, any named distribution
    ``shift``, its normalisation)."""
    return Transform(
        train=False,
        crop=cfg.model.img_size,
        resize=cfg.data.resize,
        mean=model.backbone.mean,
        std=model.backbone.std,
        shift=shift,
    )


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
        raise ValueError(f"--scales must be a number of scales or auto, got '{value}'") from None
    if not 1 <= scales <= num_scales:
        raise ValueError(f"the model has {num_scales} scale(s); cannot run {scales}")
    return scales


def check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--zoom-threshold must be in [0, 1], got {threshold}")
    return threshold


def resolve_threshold(model: Model, zoom_on: str, threshold: float | None) -> float:
    """``--zoom-threshold`` as given, or by default the threshold chosen when the zoom gate was fitted (``--zoom-on
    gate``) or 0.5; checked to lie in [0, 1].

    Raises:
        ValueError: ``--zoom-on gate`` on a model without a fitted gate, or a threshold outside [0, 1].
    """
    gate = model.zoom_gate
    if zoom_on == "gate" and gate is None:
        raise ValueError(
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
    """Model (eval mode, on the device), config, class names, checkpoint and the split's dataset."""
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    model, cfg, names = model_from_checkpoint(ckpt, weights=weights, origin=f"checkpoint {checkpoint}")
    model.to(dev).eval()
    if data_root:
        cfg.data.root = data_root
    index = load_index(cfg.data, generate=not data_root)
    if index.class_names != names:
        raise ValueError(f"the data set at {index.root} has other classes than checkpoint {checkpoint}")
    tables = split_tables(cfg.data, index, cfg.train.seed)  # the validation split the run carved, if it did
    if split not in tables:
        hint = "; train with data.val_fraction > 0 to hold one out" if split == "val" else ""
        raise ValueError(f"the data set at {index.root} has no '{split}' split (it has {', '.join(tables)}){hint}")
    ds = ImageDataset(index.root, tables[split], names, eval_transform(cfg, model, shift), skip_corrupt)
    return model, cfg, names, ckpt, ds, dev


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
        raise ValueError("the zoom threshold is chosen on a validation split, never on test: use --split val")
    if output_dir:
        check_output(output_dir, [checkpoint] + ([data_root] if data_root else []), overwrite, "--output")
    model, cfg, names, ckpt, ds, dev = _load(checkpoint, weights, device, split, data_root, skip_corrupt)
    if model.num_scales < 2:
        raise ValueError(f"checkpoint {checkpoint} has one scale: there is no zoom to sweep")
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
