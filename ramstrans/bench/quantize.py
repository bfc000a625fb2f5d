"""``ramstrans bench quantize``: what each deployed precision costs in accuracy, measured, not assumed.

For every checkpoint given (e.g. the five seeds of ``bench zoom``'s RAMS-Trans runs and of its students): ``eval`` of
the checkpoint itself, then ``export --format onnx --precision P`` (the fused graph and its single-scale graph) and
``eval`` of the file through onnxruntime, single scale and, for a multi-scale model, fused, on the same split. Per
group of runs (the run folder's name before ``_seed``): each precision's top-1 minus the checkpoint's, mean ± half-range
over the seeds with the per-seed values, and the fused graph's proposal mIoU against the checkpoint's. Every model's
numbers go into its own ``result.json`` as soon as they exist, so an interrupted run resumes.
"""

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ramstrans.bench.demo import mean_spread
from ramstrans.errors import UsageError
from ramstrans.registry import EvalRequest
from ramstrans.runtime.files import write_text_atomic

__all__ = ["bench_quantize"]

logger = logging.getLogger("ramstrans")
GOAL = 0.5  # top-1 points int8 may lose (the deployment issue's goal)


def _scores(model: str, folder: Path, scales: list[int], split: str) -> dict[str, dict[str, float]]:
    """Top-1 (and the fused proposal's mIoU) of ``model`` (a checkpoint or an ONNX file) at each of ``scales``."""
    from ramstrans.inference.evaluate import run_eval

    out = {}
    for s in scales:
        r: dict[str, Any] = run_eval(
            EvalRequest(model, split=split, num_workers=0),
            scales=s,
            output_dir=str(folder / f"eval_s{s}"),
            show_progress=False,
            overwrite=True,
        )
        out[str(s)] = {"top1": float(r["top1"])} | ({"loc_miou": float(r["loc_miou"])} if "loc_miou" in r else {})
    return out


def _one(checkpoint: Path, out: Path, precisions: Sequence[str], split: str, calibration_images: int) -> dict:
    """The checkpoint's and each precision's scores (reused from ``out/result.json`` when it exists)."""
    from ramstrans.export.onnx import export_onnx
    from ramstrans.inference.load import load_model

    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    loaded = load_model(checkpoint)
    assert loaded.config is not None  # a checkpoint
    num_scales = loaded.model.num_scales
    scales = sorted({1, num_scales})
    result = {
        "checkpoint": str(checkpoint),
        "config": asdict(loaded.config),
        "scales": scales,
        "checkpoint_scores": _scores(str(checkpoint), out / "checkpoint", scales, split),
    }
    for p in precisions:
        logger.info("bench quantize: %s %s", checkpoint, p)
        onnx = export_onnx(
            str(checkpoint),
            str(out / f"model_{p}.onnx"),
            scales=num_scales,
            overwrite=True,
            precision=p,
            calibration_images=calibration_images,
        )
        result[p] = _scores(str(onnx), out / p, scales, split)
    write_text_atomic(done, json.dumps(result, indent=1))
    return result


def _group(checkpoint: Path) -> tuple[str, str]:
    """(group, seed) of a bench run's checkpoint: ``rams_seed3_<hash>/checkpoint.pth`` -> ("rams", "3")."""
    m = re.match(r"(.+)_seed(\d+)", checkpoint.parent.name)
    return (m.group(1), m.group(2)) if m else (checkpoint.parent.name, "0")


def bench_quantize(
    checkpoints: Sequence[str],
    out: str = "runs/bench_quantize",
    precisions: Sequence[str] = ("int8", "fp16"),
    split: str = "test",
    calibration_images: int = 256,
) -> dict:
    """Measure every checkpoint in every precision (see the module doc); the summary goes to ``out/result.json``."""
    from ramstrans.checkpoint import checkpoint_file

    files = [checkpoint_file(c) for c in checkpoints]
    if not files:
        raise UsageError("bench quantize needs --checkpoints (checkpoint files or run folders, comma-separated)")
    per_run = {}
    for f in files:
        group, seed = _group(f)
        per_run[(group, seed)] = _one(f, Path(out) / f"{group}_seed{seed}", precisions, split, calibration_images)
    command = (
        f"ramstrans bench quantize --checkpoints {','.join(map(str, checkpoints))} --out {out} --split {split} "
        f"--calibration-images {calibration_images}"
    )
    summary: dict = {
        "command": command,
        "split": split,
        "precisions": list(precisions),
        "calibration_images": calibration_images,
        "goal_int8_loss": GOAL,
        "groups": {},
    }
    for group in sorted({g for g, _ in per_run}):
        runs = {seed: r for (g, seed), r in sorted(per_run.items()) if g == group}
        summary["groups"][group] = _summarise(runs, precisions)
    path = Path(out) / "result.json"
    write_text_atomic(
        path, json.dumps({**summary, "runs": {f"{g}_seed{s}": r for (g, s), r in per_run.items()}}, indent=1)
    )
    summary["result"] = str(path)
    return summary


def _summarise(runs: dict[str, dict], precisions: Sequence[str]) -> dict:
    """Per scale: the checkpoint's top-1 and each precision's, and their paired differences, over the seeds."""
    first = next(iter(runs.values()))
    table: dict = {"seeds": list(runs)}
    for s in map(str, first["scales"]):
        base = [r["checkpoint_scores"][s]["top1"] for r in runs.values()]
        row: dict = {"checkpoint": mean_spread(base)}
        for p in precisions:
            top1 = [r[p][s]["top1"] for r in runs.values()]
            row[p] = mean_spread(top1)
            row[f"{p}_minus_checkpoint"] = mean_spread([a - b for a, b in zip(top1, base)])
            if "loc_miou" in first[p][s]:
                row[f"{p}_miou_minus_checkpoint"] = mean_spread(
                    [r[p][s]["loc_miou"] - r["checkpoint_scores"][s]["loc_miou"] for r in runs.values()]
                )
        table["single" if s == "1" else "fused"] = row
    return table
