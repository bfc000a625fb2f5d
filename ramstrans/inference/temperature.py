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

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from ramstrans.checkpoint import weights_hash
from ramstrans.deploy.records import read_temperature_record
from ramstrans.errors import CheckpointError
from ramstrans.runtime.files import register_read, write_text_atomic

__all__ = [
    "fit_temperature",
    "temperature_file",
    "read_temperature",
    "write_temperature",
    "fitted_weights_hash",
    "LOG_T_BOUNDS",
]

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


def fitted_weights_hash(ckpt: dict[str, Any], weights: str) -> str:
    """The content hash of a checkpoint's ``weights`` ("raw" or "ema"), which its temperature file records."""
    return weights_hash(ckpt["model_ema"] if weights == "ema" else ckpt["model"])


def write_temperature(checkpoint: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (with its "temperature") beside ``checkpoint``; returns the file."""
    path = temperature_file(checkpoint)
    write_text_atomic(path, json.dumps(record, indent=1))
    return path


def read_temperature(checkpoint: Path, ckpt: dict[str, Any], weights: str) -> float:
    """The temperature stored beside ``checkpoint`` when it was fitted on these weights (1.0 without a file; a file of
    another step or weights, left by a run that trained on, is not applied, with a warning).

    Args:
        checkpoint: the checkpoint file.
        ckpt: the loaded checkpoint (its step; its weights, whose content hash must be the file's).
        weights: "raw" or "ema".

    Raises:
        CheckpointError: the file is damaged or hand-edited (a field of the wrong type or range), or names the same
            step and weights but another content hash (a file copied from another checkpoint), naming it.
    """
    path = temperature_file(checkpoint)
    if not path.is_file():
        return 1.0
    register_read(path)
    record = read_temperature_record(path)
    step = int(ckpt["step"])
    have = fitted_weights_hash(ckpt, weights) if record.weights_hash is not None else None
    if (record.weights_hash, record.weights, record.step) == (have, weights, step):
        return record.temperature
    if record.step != step or record.weights != weights:  # stale: the run trained on, or the other weights are used
        logger.warning(
            "%s was fitted on step %s (%s weights), not step %s (%s weights): not applied; refit with eval --calibrate",
            path,
            record.step,
            record.weights,
            step,
            weights,
        )
        return 1.0
    raise CheckpointError(
        f"{path} was fitted on other weights of the same step (its weights_hash {record.weights_hash}; "
        f"{checkpoint.name} has {have}): it belongs to another checkpoint; refit it with eval --split val --calibrate, "
        "or delete it"
    )
