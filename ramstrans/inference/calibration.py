"""Temperature scaling (Guo et al., 2017): ``ramstrans eval --split val --calibrate`` fits one temperature T on the
validation split and stores it beside the checkpoint (``<checkpoint>.temperature.json``); ``load_model`` applies it
whenever the file is there and was fitted on the same step and weights, so ``eval``, ``predict`` and adaptive zoom (its
threshold then compares calibrated confidences) divide every scale's test-time logits by T.

T minimises the negative log-likelihood of scale 1's logits (the single-scale test-time model, the one adaptive zoom
decides on) on validation, in float64; the zoomed scales' logits are divided by the same T. Never fitted on test.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from ramstrans.checkpoint import checkpoint_file
from ramstrans.errors import CheckpointError, DataError, UsageError
from ramstrans.runtime.files import write_text_atomic

__all__ = ["fit_temperature", "temperature_file", "read_temperature", "write_temperature", "run_calibrate"]

logger = logging.getLogger("ramstrans")

LOG_T_BOUNDS = (-5.0, 5.0)  # T in [e^-5, e^5] = [0.0067, 148]: far beyond any fitted temperature reported


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T > 0 that minimises mean NLL(softmax(logits / T), labels), found over log T (bounded Brent) in float64.

    Args:
        logits: (N, K) logits.
        labels: (N,) classes.
    """
    z, y = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))

    best = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(math.exp(best.x))


def temperature_file(checkpoint: Path) -> Path:
    """Where the temperature of a checkpoint file is stored: beside it, ``<name>.temperature.json``."""
    return checkpoint.with_name(checkpoint.name + ".temperature.json")


def write_temperature(checkpoint: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (with its "temperature") beside ``checkpoint``; returns the file."""
    path = temperature_file(checkpoint)
    write_text_atomic(path, json.dumps(record, indent=1))
    return path


def read_temperature(checkpoint: Path, step: int, weights: str) -> float:
    """The temperature stored beside ``checkpoint`` for its ``step`` and ``weights`` (1.0 without a file; a file of
    another step or weights is not applied, with a warning).

    Raises:
        CheckpointError: the file is damaged, or its temperature is not a finite number > 0.
    """
    path = temperature_file(checkpoint)
    if not path.is_file():
        return 1.0
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        t = float(record["temperature"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is damaged (no temperature in it): refit it with eval --calibrate") from None
    if not (np.isfinite(t) and t > 0):
        raise CheckpointError(f"{path} holds temperature {t}, not a finite number > 0: refit it with eval --calibrate")
    if (record.get("step"), record.get("weights")) != (step, weights):
        logger.warning(
            "%s was fitted on step %s (%s weights), not step %s (%s weights): not applied; refit with eval --calibrate",
            path,
            record.get("step"),
            record.get("weights"),
            step,
            weights,
        )
        return 1.0
    return t


def check_calibration_split(split: str) -> None:
    """Refuse fitting a temperature on any split but validation."""
    if split != "val":
        raise UsageError(f"--calibrate fits the temperature on validation only (--split val), not on '{split}'")


def run_calibrate(
    checkpoint: str,
    *,
    split: str = "val",
    weights: str = "auto",
    batch_size: int = 32,
    device: str = "auto",
    data_root: str | None = None,
    num_workers: int = 2,
    skip_corrupt: bool = False,
) -> dict[str, Any]:
    """Fit the temperature of a checkpoint on its validation split and store it beside the checkpoint file.

    Returns:
        The stored record: temperature, step, weights, images, and the NLL and ECE (15 bins) of scale 1 on the split
        before and after.

    Raises:
        UsageError: a split other than "val", or an ONNX file.
    """
    from ramstrans.data import eval_loader
    from ramstrans.inference.inputs import load_eval_inputs
    from ramstrans.inference.metrics import MetricAccumulator
    from ramstrans.runtime.amp import amp_setup, autocast

    check_calibration_split(split)
    if str(checkpoint).endswith(".onnx"):
        raise UsageError("--calibrate fits a checkpoint's temperature; an ONNX export carries none")
    inputs = load_eval_inputs(
        checkpoint, weights=weights, device=device, split=split, data_root=data_root, skip_corrupt=skip_corrupt
    )
    model, cfg, names, ds, dev = inputs.model, inputs.config, inputs.class_names, inputs.dataset, inputs.device
    model.temperature = 1.0  # fit on the raw logits, whatever was stored before
    amp_dtype = amp_setup(dev, cfg.train.amp)[0]
    logits, labels = [], []
    with torch.no_grad():
        for batch in eval_loader(ds, batch_size, num_workers):
            if "image" in batch:
                with autocast(dev, amp_dtype):
                    logits.append(model(batch["image"].to(dev)).float())
                labels.append(batch["label"].to(dev))
    if not labels:
        raise DataError(f"every image of the {split} split was unreadable: no temperature to fit")
    z, y = torch.cat(logits).cpu(), torch.cat(labels).cpu()
    t = fit_temperature(z, y)
    at_bound = not LOG_T_BOUNDS[0] + 1e-3 < math.log(t) < LOG_T_BOUNDS[1] - 1e-3
    if at_bound:
        logger.warning("the fitted temperature %.4g is at the search's bound: scale 1's logits barely inform", t)
    record: dict[str, Any] = {"temperature": t, "fitted_on": "scale 1 logits", "split": split, "images": len(y)}
    record["at_bound"] = at_bound
    record.update(step=inputs.step, weights=inputs.weights, checkpoint=str(checkpoint))
    for when, scale in (("before", 1.0), ("after", t)):
        acc = MetricAccumulator(len(names))
        acc.update((z.double() / scale).softmax(-1), y)
        record[f"nll_{when}"] = float(torch.nn.functional.cross_entropy(z.double() / scale, y))
        record[f"ece_{when}"] = acc.summary()["ece"]
    record["output"] = str(write_temperature(checkpoint_file(Path(checkpoint)), record))
    return record
