"""Export targets, one module each; ``TARGETS`` is what ``ramstrans export --format`` offers. A new target is a module
here with an ``export_<name>(checkpoint, out, scales, weights, overwrite=...) -> Path`` and a line in ``TARGETS``."""

from collections.abc import Callable
from pathlib import Path

from ramstrans.export.onnx import export_onnx, write_onnx
from ramstrans.export.timm import export_timm
from ramstrans.inference.load import model_from_export

__all__ = ["TARGETS", "export_timm", "export_onnx", "write_onnx", "model_from_export"]

TARGETS: dict[str, Callable[..., Path]] = {"timm": export_timm, "onnx": export_onnx}
