"""The torch reader of an ONNX export (``ramstrans.registry.SOURCES``): the file behind ``RAMSTrans.predict``'s
interface (torch tensors in and out), so that ``ramstrans eval`` scores a deployed file with the loop and metrics of a
checkpoint: quantization's cost is measured, not assumed."""

from dataclasses import dataclass

import torch
from torch import Tensor

from ramstrans.config import Config, config_from_dict
from ramstrans.data.transforms import RecordTransform
from ramstrans.deploy.session import OnnxModel, open_onnx
from ramstrans.errors import CheckpointError, ConfigError
from ramstrans.inference.load import LoadedModel
from ramstrans.models.outputs import Prediction
from ramstrans.registry import EvalRequest

__all__ = ["OnnxPredictor", "load_onnx"]


@dataclass(frozen=True)
class _GateRecord:
    """What evaluation reads of a zoom gate: the threshold chosen when it was fitted (the graph holds the gate)."""

    threshold: float


class OnnxPredictor:
    """An ``OnnxModel`` that ``inference.evaluate.evaluate`` runs like a model (the batch moves to the CPU and back).

    Args:
        onnx: the file in onnxruntime.
    """

    training = False  # nothing to train: eval() and train() are no-ops

    def __init__(self, onnx: OnnxModel) -> None:
        self.onnx = onnx
        self.num_scales = onnx.num_scales
        self.zoom_gate = None if onnx.zoom_threshold is None else _GateRecord(onnx.zoom_threshold)
        self.precision = onnx.info.precision
        self.temperature = onnx.temperature  # the checkpoint's fitted one, recorded at export (1: none)
        self.step = onnx.info.step

    @property
    def zoom_passes(self) -> int:
        """Backbone passes adaptive zoom adds for a zoomed image: the fused graph runs every scale, scale 1 again."""
        return self.num_scales

    def config(self) -> Config | None:
        """The resolved config of the run the file was exported from (its data set, its split seed); None for a
        file written from a bare model (``write_onnx``).

        Raises:
            CheckpointError: a config too damaged to read.
        """
        if self.onnx.config is None:
            return None
        try:
            return config_from_dict(self.onnx.config)
        except ConfigError as e:
            raise CheckpointError(f"{self.onnx.path} holds a config this version cannot read ({e})") from e

    def eval(self) -> "OnnxPredictor":
        return self

    def train(self, mode: bool = True) -> "OnnxPredictor":
        return self

    def predict(
        self,
        x: Tensor,
        scales: int | str = 1,
        zoom_threshold: float = 0.5,
        zoom_on: str = "maxprob",
        boxes: bool = True,
    ) -> Prediction:
        """``OnnxModel.predict`` on (B, C, H, W) images; boxes only where the fused graph ran on every image."""
        self.onnx.check_scales(scales, zoom_on)
        out = self.onnx.predict(x.detach().float().cpu().numpy(), scales, zoom_threshold, zoom_on)
        probs = torch.from_numpy(out.probs)
        box = torch.from_numpy(out.boxes) if boxes and out.boxes is not None else None
        return Prediction(probs=probs, boxes=box, zoomed=torch.from_numpy(out.zoomed), scale_probs=[probs])


def load_onnx(request: EvalRequest) -> LoadedModel:
    """The torch reader of an ONNX file: the file behind ``predict``, its classes, the test transform its record
    spells out, and the training config it records (None for a file written from a bare model).

    Raises:
        UsageError: ``--weights`` or ``--device`` given (an ONNX file holds one set of weights and runs on the CPU).
    """
    model = OnnxPredictor(open_onnx(request))
    transform = RecordTransform(model.onnx.preprocess, request.shift)  # predict's preprocessing, not albumentations
    names, weights = model.onnx.class_names, f"onnx-{model.precision}"
    return LoadedModel(model, names, transform, model.config(), None, weights, model.onnx.path, "ONNX file", model.step)
