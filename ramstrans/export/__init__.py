"""Export targets, one module each. ``TARGETS`` is what ``ramstrans export --format`` offers (read without importing
torch, so ``--help`` stays fast); ``target(name)`` imports one. A new target is a module here with an
``export_<name>(checkpoint, out, scales, weights, overwrite=...) -> Path`` and a line in ``TARGETS``."""

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "target", "export_timm", "export_onnx", "write_onnx", "model_from_export"]

TARGETS = {"timm": "ramstrans.export.timm:export_timm", "onnx": "ramstrans.export.onnx:export_onnx"}
_WHERE = {
    "export_timm": "ramstrans.export.timm",
    "export_onnx": "ramstrans.export.onnx",
    "write_onnx": "ramstrans.export.onnx",
    "model_from_export": "ramstrans.inference.load",
}


def target(name: str) -> Callable[..., Path]:
    """The export function of target ``name`` (a key of ``TARGETS``)."""
    module, function = TARGETS[name].split(":")
    return getattr(importlib.import_module(module), function)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ramstrans.export' has no attribute '{name}'")
    return getattr(importlib.import_module(_WHERE[name]), name)
