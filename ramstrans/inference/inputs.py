"""What an evaluation reads: the model of any source (``ramstrans.registry.load_source``) on its device, the training
run's config and classes, and a split's dataset; shared by ``eval``, ``eval --calibrate``, ``fit-gate``, the zoom sweep
and the benches."""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ramstrans.config import Config
from ramstrans.data import ImageDataset, load_index, split_tables
from ramstrans.errors import UsageError
from ramstrans.inference.load import LoadedModel
from ramstrans.registry import EvalRequest, load_source
from ramstrans.runtime.dist import resolve_device

__all__ = ["EvalInputs", "load_eval_inputs", "training_counts"]


@dataclass(frozen=True)
class EvalInputs:
    """A loaded evaluation: the model (eval mode, on ``device``), the training run's config and class names, the
    checkpoint dict (None for an export), the step and the weights it evaluates, the split's dataset, and the file the
    weights came from."""

    loaded: LoadedModel
    config: Config
    dataset: ImageDataset
    device: torch.device

    @property
    def model(self) -> Any:
        """The ``Predictor``: a torch model, or an export's (an ONNX file's ``OnnxPredictor``)."""
        return self.loaded.model

    @property
    def class_names(self) -> list[str]:
        return self.loaded.class_names

    @property
    def checkpoint(self) -> dict[str, Any] | None:
        return self.loaded.checkpoint

    @property
    def step(self) -> int:
        return self.loaded.step

    @property
    def weights(self) -> str:
        """The weights used: "raw", "ema", or "onnx-<precision>"."""
        return self.loaded.weights

    @property
    def file(self) -> Path:
        return self.loaded.file


def load_eval_inputs(request: EvalRequest, *, checkpoint: str = "", zoom: str = "") -> EvalInputs:
    """The model of ``request.source`` and the dataset of ``request.split`` (of the training config's data set, or of
    a copy of it at ``request.data_root``, used as it is).

    Args:
        request: the model source and the evaluation's options.
        checkpoint: what needs a ramstrans checkpoint (e.g. "--calibrate"), refused for an export; "" when any
            source that records its config will do.
        zoom: what needs a multi-scale RAMS-Trans model (e.g. "the zoom sweep"); "" when any model will do.

    Raises:
        UsageError: a source without a training config (a timm folder), one ``checkpoint`` or ``zoom`` refuses, a data
            set with other classes than the model's, or no such split.
    """
    loaded: LoadedModel = load_source(request)
    cfg = loaded.run_config(checkpoint or zoom or "evaluation")
    if checkpoint:
        loaded.checkpoint_dict(checkpoint)
    if zoom:
        loaded.zoom_model(zoom)
    device = torch.device("cpu")
    if isinstance(loaded.model, torch.nn.Module):
        device = resolve_device(request.device)
        loaded.model.to(device)
    ds = _split_dataset(cfg, loaded, request)
    return EvalInputs(loaded=loaded, config=cfg, dataset=ds, device=device)


def _split_dataset(cfg: Config, loaded: LoadedModel, request: EvalRequest) -> ImageDataset:
    """The split's dataset of the config's data set (or of a copy of it at ``data_root``) under the model's test
    transform."""
    data_cfg = replace(cfg.data, root=request.data_root) if request.data_root else cfg.data
    index = load_index(data_cfg, generate=not request.data_root)
    if index.class_names != loaded.class_names:
        raise UsageError(f"the data set at {index.root} has other classes than {loaded.file}")
    tables = split_tables(data_cfg, index, cfg.train.seed)  # the validation split the run carved, if it did
    split = request.split
    if split not in tables:
        hint = "; train with data.val_fraction > 0 to hold one out" if split == "val" else ""
        raise UsageError(f"the data set at {index.root} has no '{split}' split (it has {', '.join(tables)}){hint}")
    transform = loaded.transform
    return ImageDataset(index.root, tables[split], loaded.class_names, transform, request.skip_corrupt)


def training_counts(cfg: Config, names: list[str], data_root: str | None) -> list[int]:
    """(K,) training images per class of the run's training split (of the data set, or its copy at ``data_root``):
    what the shot groups are counted on."""
    data_cfg = replace(cfg.data, root=data_root) if data_root else cfg.data
    index = load_index(data_cfg, generate=not data_root)
    labels = split_tables(replace(data_cfg, skip_corrupt=True), index, cfg.train.seed)["train"]["label"]
    return np.bincount(labels.to_numpy(), minlength=len(names)).tolist()
