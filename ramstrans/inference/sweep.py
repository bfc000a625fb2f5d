"""Adaptive zoom's accuracy against cost: the sweep that chooses the zoom threshold on a validation split (never on
test), and the pieces it shares with the zoom gate's fit (per-image scale-1 and fused outputs, the rows of a sweep,
the cheapest row within a tolerance of full fusion)."""

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ramstrans.data import eval_loader
from ramstrans.deploy.modes import resolve_threshold
from ramstrans.errors import UsageError
from ramstrans.inference.evaluate import gate_threshold
from ramstrans.inference.inputs import load_eval_inputs
from ramstrans.inference.plots import plot_zoom_sweep
from ramstrans.models import RAMSTrans, ZoomCriterion, fuse_probs
from ramstrans.registry import EvalRequest
from ramstrans.runtime.amp import amp_setup, autocast
from ramstrans.runtime.files import check_output, write_text_atomic

__all__ = ["run_zoom_sweep", "scale_outputs", "sweep_rows", "cheapest_within", "SWEEP_THRESHOLDS", "SWEEP_TOLERANCE"]

SWEEP_THRESHOLDS = tuple(round(t, 2) for t in np.linspace(0.0, 1.0, 21))  # 0, 0.05, ..., 1
SWEEP_TOLERANCE = 0.5  # top-1 points below full fusion that the chosen threshold may give up


@torch.no_grad()
def scale_outputs(
    model: RAMSTrans, loader: Iterable[dict], device: torch.device, amp_dtype: torch.dtype | None
) -> tuple[torch.Tensor, ...]:
    """Per image, on the CPU: scale 1's (N, D) pooled features and (N, K) probabilities, the (N, K) fused
    probabilities of all scales (exactly ``predict``'s, divided by a fitted temperature as it does) and the (N,) labels.
    The model is in eval mode."""
    pooled, first, fused, labels = [], [], [], []
    for batch in loader:
        if "image" not in batch:
            continue
        with autocast(device, amp_dtype):
            out = model.forward_multiscale(batch["image"].to(device))
            probs = [(z.float() / model.temperature).softmax(-1) for z in model.head_logits(out)]  # predict's
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
    request: EvalRequest, *, output_dir: str | None = None, zoom_on: ZoomCriterion = "maxprob", overwrite: bool = False
) -> dict[str, object]:
    """Top-1 against cost (backbone passes per image) of adaptive zoom for ``SWEEP_THRESHOLDS``, on a validation split
    (``request.split``); names the cheapest threshold within ``SWEEP_TOLERANCE`` points of full fusion. Writes
    sweep.json / .csv / .png.

    Raises:
        UsageError: the split is "test" (a threshold is never chosen on the test split), a model without a zoom, or
            ``zoom_on`` gate without a fitted gate.
    """
    split = request.split
    if split == "test":
        raise UsageError("the zoom threshold is chosen on a validation split, never on test: use --split val")
    if output_dir:
        reads = [request.source] + ([request.data_root] if request.data_root else [])
        check_output(output_dir, reads, overwrite, "--output")
    inputs = load_eval_inputs(request, zoom="the zoom sweep")
    if output_dir:  # against what the source and the data set read on their own too
        check_output(output_dir, [], True, "--output")
    model, dev = inputs.loaded.zoom_model("the zoom sweep"), inputs.device
    resolve_threshold(gate_threshold(model), zoom_on, 0.0)  # a gate sweep needs a gate
    loader = eval_loader(inputs.dataset, request.batch_size, request.num_workers)
    pooled, first, fused, labels = scale_outputs(model, loader, dev, amp_setup(dev, inputs.config.train.amp)[0])
    rows = sweep_rows(
        model.zoom_score(pooled, first, zoom_on), first, fused, labels, SWEEP_THRESHOLDS, model.num_scales
    )
    full = 100.0 * (fused.argmax(1) == labels).double().mean().item()
    single = 100.0 * (first.argmax(1) == labels).double().mean().item()
    chosen = cheapest_within(rows, full)
    result = {
        "checkpoint": str(inputs.file),
        "split": split,
        "images": len(labels),
        "zoom_on": zoom_on,
        "weights": inputs.weights,
        "single_scale_top1": single,
        "full_fusion_top1": full,
        "full_fusion_passes_per_image": float(model.num_scales),
        "tolerance_points": SWEEP_TOLERANCE,
        "chosen": chosen,
        "rows": rows,
    }
    out = Path(output_dir) if output_dir else inputs.file.parent / f"sweep_zoom_{split}_{result['weights']}"
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
