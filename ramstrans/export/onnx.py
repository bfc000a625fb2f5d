"""``ramstrans export --format onnx``: the single-scale model (``images`` -> ``logits``), or the fused multi-scale
model (``images`` -> ``logits`` (B, S, K) per scale, ``probs`` (B, K) their mean softmax, ``boxes`` (B, 4) scale 1's
proposal, and for a checkpoint with a fitted zoom gate ``zoom_confidence`` (B,), zoomed where below the metadata's
``zoom_threshold``), proposal included; the batch dimension is dynamic; class names and the test transform in the
file's metadata.
"""

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ramstrans.errors import UsageError
from ramstrans.export.base import checked_out, transform_info
from ramstrans.inference.load import load_model
from ramstrans.models import Model, RAMSTrans
from ramstrans.runtime.files import atomic_write

__all__ = ["export_onnx", "write_onnx"]


class _Fused(nn.Module):
    """The multi-scale test-time model as one graph: per-scale logits, their mean softmax, scale 1's boxes, and with a
    fitted zoom gate scale 1's zoom confidence (1 − the gate's probability that the zoom changes the answer)."""

    def __init__(self, model: RAMSTrans, scales: int) -> None:
        super().__init__()
        self.model, self.scales = model, scales

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model.forward_multiscale(images, self.scales)
        logits = torch.stack(self.model.head_logits(out), dim=1)
        probs = logits.float().softmax(-1)
        fused = (logits, probs.mean(1), out.boxes[0])
        if self.model.zoom_gate is None:
            return fused
        return (*fused, self.model.zoom_score(out.features[0], probs[:, 0], "gate"))


def export_onnx(
    checkpoint: str, out: str, scales: int = 1, weights: str = "auto", opset: int = 18, overwrite: bool = False
) -> Path:
    """Write a checkpoint's single-scale or fused multi-scale model as ONNX (see the module doc); the class names and
    the test transform go into the file's metadata.

    Raises:
        ValueError: the onnx exporter is not installed (pip install 'ramstrans[deploy]').
    """
    loaded = load_model(checkpoint, weights)
    model, cfg, names = loaded.model, loaded.config, loaded.class_names
    assert cfg is not None  # a checkpoint, not an export folder
    path = checked_out(out, scales, model, checkpoint, overwrite)
    if path.is_dir():
        raise UsageError(f"--out {out} is a folder; an ONNX export is a file such as model.onnx")
    return write_onnx(
        model,
        path,
        scales,
        {"class_names": json.dumps(names), "test_transform": json.dumps(transform_info(cfg))},
        opset,
    )


def write_onnx(model: Model, path: Path, scales: int = 1, meta: dict[str, str] | None = None, opset: int = 18) -> Path:
    """Write ``model`` (single scale, or the fusion of ``scales`` scales) as an ONNX file with a dynamic batch and
    ``meta`` (plus the normalisation and the number of scales) in its metadata.

    Raises:
        ValueError: the onnx exporter is not installed (pip install 'ramstrans[deploy]').
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise UsageError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'ramstrans[deploy]'"
        ) from None
    model.eval()
    module: nn.Module = model
    outputs = ["logits"]
    if scales > 1:
        if not isinstance(model, RAMSTrans):  # checked_out refuses this first; kept for direct callers
            raise UsageError(f"a {type(model).__name__} has one scale: export it with --scales 1")
        module, outputs = _Fused(model, scales).eval(), ["logits", "probs", "boxes"]
        if model.zoom_gate is not None:  # a client zooms where zoom_confidence < this
            outputs.append("zoom_confidence")
            meta = {**(meta or {}), "zoom_on": "gate", "zoom_threshold": str(float(model.zoom_gate.threshold))}
    example = torch.zeros(2, model.backbone.in_chans, *model.backbone.img_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        module,
        (example,),
        input_names=["images"],
        output_names=outputs,
        dynamic_shapes=({0: batch},),
        dynamo=True,
        opset_version=opset,
        verbose=False,
    )
    assert program is not None  # dynamo=True always returns the program
    proto = program.model_proto
    onnx.helper.set_model_props(
        proto,
        {
            "mean": json.dumps(list(model.backbone.mean)),
            "num_scales": str(scales),
            "std": json.dumps(list(model.backbone.std)),
            **(meta or {}),
        },
    )
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    return path
