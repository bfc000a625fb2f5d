"""What an evaluation reads: the model on its device, the run's config and classes, and a split's dataset; shared by
``eval``, ``eval --calibrate``, ``fit-gate`` and the zoom sweep."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

from ramstrans.config import Config
from ramstrans.data import ImageDataset, Transform, load_index, split_tables
from ramstrans.errors import CheckpointError, UsageError
from ramstrans.inference.load import load_model
from ramstrans.models import Model
from ramstrans.models.build import weights_used
from ramstrans.runtime.dist import resolve_device

if TYPE_CHECKING:
    from ramstrans.inference.onnx_predictor import OnnxPredictor

__all__ = ["EvalInputs", "load_eval_inputs", "load_onnx_eval_inputs", "training_counts"]

M = TypeVar("M", "Model", "OnnxPredictor")


@dataclass(frozen=True)
class EvalInputs(Generic[M]):
    """A loaded evaluation: the model (eval mode, on ``device``), the training run's config and class names, the
    checkpoint dict (None for an ONNX export), the step and the weights it evaluates, and the split's dataset."""

    model: M
    config: Config
    class_names: list[str]
    checkpoint: dict[str, Any] | None
    step: int
    weights: str  # the weights used: "raw", "ema", or "onnx-<precision>"
    dataset: ImageDataset
    device: torch.device


def load_eval_inputs(
    checkpoint: str,
    *,
    weights: str = "auto",
    device: str = "auto",
    split: str = "test",
    data_root: str | None = None,
    skip_corrupt: bool = False,
    shift: Sequence[str] = (),
) -> "EvalInputs[Model]":
    """A checkpoint's model and the split's dataset (of the training config's data set, or of a copy of it at
    ``data_root``, used as it is).

    Raises:
        CheckpointError: an exported folder (it holds no data set config).
        UsageError: the data set has other classes than the checkpoint, or no such split.
    """
    dev = resolve_device(device)
    loaded = load_model(checkpoint, weights, shift=shift)
    cfg, ckpt, names = loaded.config, loaded.checkpoint, loaded.class_names
    if cfg is None or ckpt is None:
        raise CheckpointError(
            f"{checkpoint} is an exported folder: evaluation needs the ramstrans checkpoint (it "
            "holds the data set's config); ramstrans predict classifies images with an export"
        )
    loaded.model.to(dev)
    ds = _split_dataset(cfg, names, split, data_root, loaded.transform, skip_corrupt, checkpoint)
    return EvalInputs(
        model=loaded.model,
        config=cfg,
        class_names=names,
        checkpoint=ckpt,
        step=int(ckpt["step"]),
        weights=weights_used(ckpt, weights),
        dataset=ds,
        device=dev,
    )


def load_onnx_eval_inputs(
    path: str,
    *,
    weights: str = "auto",
    device: str = "auto",
    split: str = "test",
    data_root: str | None = None,
    skip_corrupt: bool = False,
    shift: Sequence[str] = (),
) -> "EvalInputs[OnnxPredictor]":
    """``load_eval_inputs`` of an ONNX export: onnxruntime on the CPU, the config and classes its metadata records.

    Raises:
        UsageError: ``weights`` or ``device`` given (an ONNX file holds one set of weights and runs on the CPU).
    """
    from ramstrans.inference.onnx_predictor import OnnxPredictor

    if weights != "auto" or device not in ("auto", "cpu"):
        raise UsageError("--weights and --device apply to a checkpoint; an ONNX file holds one set of weights")
    model = OnnxPredictor(path)
    cfg, names, pre = model.config(), model.onnx.class_names, model.onnx.preprocess
    transform = Transform(train=False, crop=pre.crop, resize=pre.resize, mean=pre.mean, std=pre.std, shift=shift)
    ds = _split_dataset(cfg, names, split, data_root, transform, skip_corrupt, path)
    return EvalInputs(
        model=model,
        config=cfg,
        class_names=names,
        checkpoint=None,
        step=model.step,
        weights=f"onnx-{model.precision}",
        dataset=ds,
        device=torch.device("cpu"),
    )


def _split_dataset(
    cfg: Config,
    names: list[str],
    split: str,
    data_root: str | None,
    transform: Transform,
    skip_corrupt: bool,
    source: str,
) -> ImageDataset:
    """The split's dataset of the config's data set (or of a copy of it at ``data_root``) under ``transform``."""
    data_cfg = replace(cfg.data, root=data_root) if data_root else cfg.data
    index = load_index(data_cfg, generate=not data_root)
    if index.class_names != names:
        raise UsageError(f"the data set at {index.root} has other classes than {source}")
    tables = split_tables(data_cfg, index, cfg.train.seed)  # the validation split the run carved, if it did
    if split not in tables:
        hint = "; train with data.val_fraction > 0 to hold one out" if split == "val" else ""
        raise UsageError(f"the data set at {index.root} has no '{split}' split (it has {', '.join(tables)}){hint}")
    return ImageDataset(index.root, tables[split], names, transform, skip_corrupt)


def training_counts(cfg: Config, names: list[str], data_root: str | None) -> list[int]:
    """(K,) training images per class of the run's training split (of the data set, or its copy at ``data_root``):
    what the shot groups are counted on."""
    data_cfg = replace(cfg.data, root=data_root) if data_root else cfg.data
    index = load_index(data_cfg, generate=not data_root)
    labels = split_tables(replace(data_cfg, skip_corrupt=True), index, cfg.train.seed)["train"]["label"]
    return np.bincount(labels.to_numpy(), minlength=len(names)).tolist()
