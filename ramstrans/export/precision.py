"""The precision of an ONNX export: ``fp16`` (onnxruntime's float16 converter) and ``int8`` (onnxruntime's static QDQ
quantization, calibrated on images of the training split).

What int8 quantizes: the matrix products with a weight, the patch embedding's convolution, every block's qkv,
projection and MLP layers, and the head (weights int8 per output channel, activations uint8 per tensor, ranges from
the calibration images' min and max). What stays float32, and why: LayerNorm, softmax and GELU (onnxruntime has no
integer kernels for them and their ranges are the least uniform), the attention's two activation-by-activation
products (q·kᵀ and attention·v: both operands would be quantized per tensor, the usual cause of a ViT's int8 loss),
and everything of the proposal (the rollout's products, the threshold, the connected components, the box and the
crop: integer and comparison graphs where a rounded value moves a box).

Memory: onnxruntime's calibration session runs without graph optimizations and keeps every intermediate tensor of a
run, so calibration feeds one image per run; the int8 export of the fused ViT-B/16 at 448 px still peaks at about
15.6 GB (9 GB of it the calibration session; measured on this project's CPU, onnxruntime 1.32).

What fp16 keeps in float32: the inputs and outputs (a client feeds and reads float32), and the rollout and proposal
nodes (found by the source file that made them), so that the zoom's box moves only where fp16 attention does.
"""

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ramstrans.runtime.files import is_full_disk

__all__ = ["PRECISIONS", "to_fp16", "to_int8", "calibration_hash"]

PRECISIONS = ("fp32", "fp16", "int8")
_PROPOSAL_SOURCES = ("ramstrans/models/rollout.py", "ramstrans/models/proposal.py")  # nodes fp16 keeps in float32
_WEIGHTED = ("MatMul", "Gemm", "Conv")


def calibration_hash(names: list[str]) -> str:
    """The sha256 of the calibration set: its images' paths (relative to the data set root), one per line, in the
    order they were drawn."""
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def _proposal_nodes(model: Any) -> list[str]:
    """Names of the nodes the rollout and the proposal made (from the exporter's stack-trace metadata)."""
    found = []
    for node in model.graph.node:
        trace = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.stack_trace"), "")
        if any(src in trace.replace(os.sep, "/") for src in _PROPOSAL_SOURCES):
            found.append(node.name)
    return found


def to_fp16(model: Any) -> Any:
    """A float32 ONNX ``ModelProto`` in float16, its inputs, outputs and proposal nodes kept float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, node_block_list=_proposal_nodes(model))


def _weighted_nodes(model: Any) -> list[str]:
    """The MatMul / Gemm / Conv nodes whose second input is a weight (an initializer after constant folding)."""
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in _WEIGHTED and len(n.input) > 1 and n.input[1] in weights]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol, one image per run: the calibration session runs without graph
    optimizations, so it keeps every intermediate tensor of a run (about 1.4 GB per image for ViT-B/16 at 448 px)."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self.images = (image[None] for batch in batches for image in batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.images, None)
        return None if image is None else {"images": image}

    def rewind(self) -> None:  # one pass is all MinMax calibration needs
        pass


def to_int8(model: Any, batches: Iterator[np.ndarray]) -> Any:
    """A float32 ONNX ``ModelProto`` quantized to int8 (static QDQ, see the module doc), calibrated on ``batches``.

    Args:
        model: the float32 model.
        batches: (B, C, H, W) float32 normalised images of the training split.

    Raises:
        OSError: the temp folder is full or cannot be written, naming it.
    """
    try:
        with tempfile.TemporaryDirectory(prefix="ramstrans-int8-") as tmp:
            return _quantize(model, batches, Path(tmp))
    except Exception as e:  # the temp folder, not the output: say which, and how to move it
        if not (isinstance(e, OSError) or is_full_disk(e)):
            raise
        problem = "no space left on device" if is_full_disk(e) else (getattr(e, "strerror", None) or str(e))
        raise OSError(
            f"{problem}: {tempfile.gettempdir()} (the temp folder where int8 calibration writes its intermediate "
            "graphs; set TMPDIR to a folder with room)"
        ) from e


def _quantize(model: Any, batches: Iterator[np.ndarray], tmp: Path) -> Any:
    """``to_int8`` with its intermediate graphs in the folder ``tmp``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    src, pre, out = (str(tmp / f) for f in ("float.onnx", "pre.onnx", "int8.onnx"))
    onnx.save(model, src)
    # constant folding turns the exporter's transposed weights into initializers; the proposal's data-dependent
    # shapes defeat the symbolic shape inference, which QDQ does not need
    quant_pre_process(src, pre, skip_symbolic_shape=True)
    quantize_static(
        pre,
        out,
        _Reader(batches),  # duck-typed CalibrationDataReader
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_quantize=_weighted_nodes(onnx.load(pre)),
    )
    return onnx.load(out)
