"""The temperature of temperature scaling (Guo et al., 2017): its fit (the T > 0 that minimises the negative
log-likelihood, in float64) and its file beside a checkpoint (``<checkpoint>.temperature.json``), which the checkpoint
reader (``inference.load``) applies whenever it was fitted on the same step and weights, so ``eval``, ``predict`` and
adaptive zoom (its threshold then compares calibrated confidences) divide every scale's test-time logits by T.
``inference.calibration`` fits it on a validation split.
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

from ramstrans.errors import CheckpointError
from ramstrans.runtime.files import write_text_atomic

__all__ = ["fit_temperature", "temperature_file", "read_temperature", "write_temperature", "LOG_T_BOUNDS"]

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
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is damaged (no temperature in it): refit it with eval --calibrate") from e
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
