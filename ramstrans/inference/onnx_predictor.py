"""An ONNX export behind ``RAMSTrans.predict``'s interface (torch tensors in and out), so that ``ramstrans eval``
scores a deployed file with the loop and metrics of a checkpoint: quantization's cost is measured, not assumed."""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ramstrans.config import Config, config_from_dict
from ramstrans.deploy.session import OnnxModel
from ramstrans.errors import CheckpointError, ConfigError
from ramstrans.models.outputs import Prediction

__all__ = ["OnnxPredictor"]


@dataclass(frozen=True)
class _GateRecord:
    """What evaluation reads of a zoom gate: the threshold chosen when it was fitted (the graph holds the gate)."""

    threshold: float


class OnnxPredictor:
    """An ``OnnxModel`` that ``inference.evaluate.evaluate`` runs like a model (the batch moves to the CPU and back).

    Args:
        path: a .onnx file written by ``ramstrans export --format onnx``.
        providers: onnxruntime execution providers (default: the CPU's).
    """

    training = False  # nothing to train: eval() and train() are no-ops

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        self.onnx = OnnxModel(path, providers)
        self.num_scales = self.onnx.num_scales
        self.zoom_gate = None if self.onnx.zoom_threshold is None else _GateRecord(self.onnx.zoom_threshold)
        self.precision = str(self.onnx.record.get("precision", "fp32"))
        self.temperature = self.onnx.temperature  # the checkpoint's fitted one, recorded at export (1: none)
        self.step = int((self.onnx.record.get("provenance") or {}).get("step", -1))

    def config(self) -> Config:
        """The resolved config of the run the file was exported from (its data set, its split seed).

        Raises:
            CheckpointError: a file without one (written by ``write_onnx`` from a bare model) or one too damaged.
        """
        if self.onnx.config is None:
            raise CheckpointError(f"{self.onnx.path} records no training config: evaluation needs its data set")
        try:
            return config_from_dict(self.onnx.config)
        except ConfigError as e:
            raise CheckpointError(f"{self.onnx.path} holds a config this version cannot read ({e})") from None

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
