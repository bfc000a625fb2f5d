"""``ramstrans fit-gate``: fit the learned zoom gate of a trained multi-scale checkpoint on a split that is not test,
and write a new checkpoint that carries it (the input checkpoint is never replaced).

On the split, every image runs all scales once: the gate learns from scale 1's pooled feature and probabilities whether
the fused answer differs from scale 1's (``models.gate``). Its threshold is chosen on out-of-fold scores (5-fold
cross-fitting on the same split, so the choice is not made on the images each score was fitted on): the cheapest within
0.5 top-1 points of full fusion. The report puts it beside today's rule (the top probability, whose threshold is chosen
the same way on the same images) and the oracle that zooms exactly the images whose answer the zoom changes.
"""

import json
from pathlib import Path
from typing import Any

import torch

from ramstrans.checkpoint import save_checkpoint
from ramstrans.data import eval_loader
from ramstrans.errors import UsageError
from ramstrans.inference.inputs import load_eval_inputs
from ramstrans.inference.plots import plot_gate_frontier
from ramstrans.inference.sweep import SWEEP_TOLERANCE, cheapest_within, scale_outputs, sweep_rows
from ramstrans.inference.temperature import fitted_weights_hash, temperature_file, write_temperature
from ramstrans.models import fit_zoom_gate, zoom_confidence
from ramstrans.registry import EvalRequest
from ramstrans.runtime.amp import amp_setup
from ramstrans.runtime.files import check_output, write_text_atomic

__all__ = ["run_fit_gate", "frontier_thresholds", "default_gate_path"]


def frontier_thresholds(confidence: torch.Tensor) -> list[float]:
    """Every distinct operating point of a (N,) confidence: 0, the midpoints between consecutive distinct values, and
    just above the largest (zoom all; at most 1)."""
    u = torch.unique(confidence.double())
    mids = ((u[1:] + u[:-1]) / 2).tolist()
    return [0.0] + mids + [min(1.0, float(u[-1]) + 1e-6)]


def default_gate_path(checkpoint: str) -> Path:
    """``<checkpoint stem>_gate.pth`` beside the checkpoint."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}_gate.pth")


def _frontier(
    confidence: torch.Tensor,
    first: torch.Tensor,
    fused: torch.Tensor,
    labels: torch.Tensor,
    num_scales: int,
    full: float,
) -> dict[str, Any]:
    rows = sweep_rows(confidence, first, fused, labels, frontier_thresholds(confidence), num_scales)
    return {"chosen": cheapest_within(rows, full), "rows": rows}


def _chosen_threshold(frontier: dict[str, object]) -> float:
    """The chosen row's threshold, or 1.0 (zoom everything) when no threshold comes within the tolerance."""
    chosen = frontier["chosen"]
    return float(chosen["threshold"]) if isinstance(chosen, dict) else 1.0


def run_fit_gate(request: EvalRequest, *, out: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Fit the zoom gate on ``request.split`` and write ``out`` (default ``<stem>_gate.pth`` beside the checkpoint):
    the checkpoint plus the gate.

    Returns:
        The report (also written as gate.json and gate.png into ``fit_gate_<split>_<weights>/`` beside ``out``): the
        split's single-scale and full-fusion top-1, the share of images whose answer the zoom changes (the oracle's
        cost), the gate's and the top probability's out-of-fold frontiers and chosen thresholds, the ridge strength.

    Raises:
        UsageError: the split is test, the source is not a checkpoint or has one scale, ``out`` is the input checkpoint
            or exists (without ``overwrite``), or the zoom changes no answer (or every answer) on the split.
    """
    split = request.split
    if split == "test":
        raise UsageError("the zoom gate is fitted on a validation split, never on test: use --split val")
    if out:
        check_output(out, [request.source], overwrite, "--out")
    what = "fit-gate (it writes a checkpoint with the gate)"
    inputs = load_eval_inputs(request, checkpoint=what, zoom=what)
    target = check_output(out or default_gate_path(str(inputs.file)), [inputs.file], overwrite, "--out")
    model, ckpt, dev = inputs.loaded.zoom_model(what), inputs.loaded.checkpoint_dict(what), inputs.device
    loader = eval_loader(inputs.dataset, request.batch_size, request.num_workers)
    pooled, first, fused, labels = scale_outputs(model, loader, dev, amp_setup(dev, inputs.config.train.amp)[0])
    changed = fused.argmax(1) != first.argmax(1)
    gate, oof, l2 = fit_zoom_gate(pooled, first, changed)
    full = 100.0 * (fused.argmax(1) == labels).double().mean().item()
    gate_frontier = _frontier(1.0 - oof, first, fused, labels, model.num_scales, full)
    report = _report(str(inputs.file), split, l2, first, fused, labels, gate_frontier, model.num_scales)
    gate.threshold.fill_(_chosen_threshold(gate_frontier))
    temperature = float(model.temperature)
    _save_with_gate(ckpt, gate, split, len(labels), l2, target, temperature)
    if temperature != 1.0:  # the gate read calibrated probabilities: the new checkpoint keeps the temperature
        write_temperature(
            target,
            {
                "temperature": temperature,
                "step": inputs.step,
                "weights": inputs.weights,
                "weights_hash": fitted_weights_hash(ckpt, inputs.weights),
                "copied_from": str(temperature_file(inputs.file)),
            },
        )
    folder = target.parent / f"fit_gate_{split}_{inputs.weights}"
    folder.mkdir(parents=True, exist_ok=True)
    report.update(output=str(target), report=str(folder / "gate.json"), threshold=float(gate.threshold))
    write_text_atomic(folder / "gate.json", json.dumps(report, indent=1))
    plot_gate_frontier(report, model.num_scales, folder / "gate.png")
    return report


def _report(
    checkpoint: str,
    split: str,
    l2: float,
    first: torch.Tensor,
    fused: torch.Tensor,
    labels: torch.Tensor,
    gate_frontier: dict[str, Any],
    num_scales: int,
) -> dict[str, object]:
    """The report's numbers: the split's single-scale and full-fusion top-1, the oracle, the gate's out-of-fold
    frontier (given) and the top probability's frontier."""
    changed = fused.argmax(1) != first.argmax(1)
    full = 100.0 * (fused.argmax(1) == labels).double().mean().item()
    return {
        "checkpoint": str(checkpoint),
        "split": split,
        "images": len(labels),
        "l2": l2,
        "single_scale_top1": 100.0 * (first.argmax(1) == labels).double().mean().item(),
        "full_fusion_top1": full,
        "tolerance_points": SWEEP_TOLERANCE,
        "changed_share": changed.float().mean().item(),
        "oracle": {"top1": full, "passes_per_image": 1.0 + changed.float().mean().item() * (num_scales - 1)},
        "gate_oof": gate_frontier,
        "maxprob": _frontier(zoom_confidence(first), first, fused, labels, num_scales, full),
    }


def _save_with_gate(
    ckpt: dict[str, Any], gate: Any, split: str, images: int, l2: float, target: Path, temperature: float
) -> None:
    """The checkpoint plus the fitted gate (its state, where and on how many images it was fitted, its threshold and
    the temperature of the probabilities it read) into ``target``."""
    save_checkpoint(
        {
            **{k: v for k, v in ckpt.items() if k != "format"},
            "zoom_gate": {
                "state": gate.state_dict(),
                "split": split,
                "images": images,
                "l2": l2,
                "threshold": float(gate.threshold),
                "temperature": float(temperature),
            },
        },
        target,
    )
