"""``ramstrans eval --split val --calibrate``: temperature scaling (Guo et al., 2017) of a checkpoint, fitted on its
validation split and stored beside it (``inference.temperature``).

T minimises the negative log-likelihood of scale 1's logits (the single-scale test-time model, the one adaptive zoom
decides on) on validation, in float64; the zoomed scales' logits are divided by the same T. Never fitted on test.
"""

import logging
import math
from dataclasses import replace
from typing import Any

import torch

from ramstrans.data import eval_loader
from ramstrans.errors import DataError, UsageError
from ramstrans.inference.inputs import load_eval_inputs
from ramstrans.inference.metrics import MetricAccumulator
from ramstrans.inference.temperature import LOG_T_BOUNDS, fit_temperature, fitted_weights_hash, write_temperature
from ramstrans.registry import EvalRequest
from ramstrans.runtime.amp import amp_setup, autocast

__all__ = ["run_calibrate", "check_calibration_split"]

logger = logging.getLogger("ramstrans")


def check_calibration_split(split: str) -> None:
    """Refuse fitting a temperature on any split but validation."""
    if split != "val":
        raise UsageError(f"--calibrate fits the temperature on validation only (--split val), not on '{split}'")


def run_calibrate(request: EvalRequest) -> dict[str, Any]:
    """Fit the temperature of a checkpoint on its validation split (``request.split``) and store it beside the
    checkpoint file.

    Returns:
        The stored record: temperature, step, weights, images, and the NLL and ECE (15 bins) of scale 1 on the split
        before and after.

    Raises:
        UsageError: a split other than "val", or a source that is not a checkpoint (an export carries none).
        DataError: every image of the split is unreadable.
    """
    check_calibration_split(request.split)
    what = "--calibrate (a temperature is stored beside a checkpoint)"
    inputs = load_eval_inputs(replace(request, temperature=False), checkpoint=what)  # refitted: the old one unread
    model, cfg, names, ds, dev = (
        inputs.loaded.torch_model(what),
        inputs.config,
        inputs.class_names,
        inputs.dataset,
        inputs.device,
    )
    model.set_temperature(1.0)  # fit on the raw logits, whatever was stored before
    amp_dtype = amp_setup(dev, cfg.train.amp)[0]
    logits, labels = [], []
    with torch.no_grad():
        for batch in eval_loader(ds, request.batch_size, request.num_workers):
            if "image" in batch:
                with autocast(dev, amp_dtype):
                    logits.append(model(batch["image"].to(dev)).float())
                labels.append(batch["label"].to(dev))
    if not labels:
        raise DataError(f"every image of the {request.split} split was unreadable: no temperature to fit")
    z, y = torch.cat(logits).cpu(), torch.cat(labels).cpu()
    t = fit_temperature(z, y)
    at_bound = not LOG_T_BOUNDS[0] + 1e-3 < math.log(t) < LOG_T_BOUNDS[1] - 1e-3
    if at_bound:
        logger.warning("the fitted temperature %.4g is at the search's bound: scale 1's logits barely inform", t)
    record: dict[str, Any] = {"temperature": t, "fitted_on": "scale 1 logits", "split": request.split}
    record.update(
        images=len(y), at_bound=at_bound, step=inputs.step, weights=inputs.weights, checkpoint=str(inputs.file)
    )
    record["weights_hash"] = fitted_weights_hash(inputs.loaded.checkpoint_dict(what), inputs.weights)
    for when, scale in (("before", 1.0), ("after", t)):
        acc = MetricAccumulator(len(names))
        acc.update((z.double() / scale).softmax(-1), y)
        record[f"nll_{when}"] = float(torch.nn.functional.cross_entropy(z.double() / scale, y))
        record[f"ece_{when}"] = acc.summary()["ece"]
    record["output"] = str(write_temperature(inputs.file, record))
    return record
