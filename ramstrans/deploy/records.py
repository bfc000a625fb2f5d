"""The records the toolkit reads back from its own files, each read in one place into a typed, checked record: an ONNX
file's metadata (``read_onnx_record``, checked against the graph it describes), a checkpoint's temperature file
(``read_temperature_record``) and an export folder's ``ramstrans.json`` (``read_export_info``). A file is shared,
copied and edited by hand; its record is all a client has, so every field is checked (type, length, range, agreement
with the graph) and a failure is one sentence naming the file and the field (``ramstrans.fields``). Without torch.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ramstrans.deploy.preprocess import Preprocess
from ramstrans.errors import CheckpointError
from ramstrans.fields import Fields

__all__ = [
    "RECORD_KEY",
    "OnnxRecord",
    "read_onnx_record",
    "TemperatureRecord",
    "read_temperature_record",
    "read_export_info",
    "read_json_file",
]

RECORD_KEY = "ramstrans"  # the metadata entry (JSON) that marks a file as ramstrans's and describes it
GRAPH_INPUT = "images"
_GRAPHS = {"single": ("logits",), "fused": ("logits", "probs", "boxes")}  # the outputs each graph kind must have


@dataclass(frozen=True)
class OnnxRecord:
    """What an exported ONNX file says about itself, checked.

    Attributes:
        class_names: K names, one per output logit.
        preprocess: the test transform a client applies.
        graph: "single" or "fused".
        num_scales: scales the graph fuses (1 for a single-scale graph).
        precision: "fp32", "fp16" or "int8".
        temperature: logits / temperature before every softmax (> 0; 1: none fitted).
        zoom_threshold: the zoom gate's threshold in [0, 1], or None without a gate.
        config: the resolved training config (a JSON object), or None for a file written from a bare model.
        scale1_graph: a fused file's single-scale companion (a file name beside it), or None.
        step: the training step of the exported weights (its provenance), -1 where unknown.
        fields: the whole record (provenance, calibration, outputs) as read.
    """

    class_names: list[str]
    preprocess: Preprocess
    graph: str
    num_scales: int
    precision: str
    temperature: float
    zoom_threshold: float | None
    config: dict[str, Any] | None
    scale1_graph: str | None
    step: int
    fields: dict[str, Any]


def read_onnx_record(session: Any, path: Path) -> OnnxRecord:
    """The checked record of an onnxruntime session of ``path`` (see the module doc).

    Raises:
        CheckpointError: no ramstrans record (a file ramstrans did not write), a damaged or hand-edited field, or a
            record that does not describe this graph (its input, its output width).
    """
    meta = Fields(dict(session.get_modelmeta().custom_metadata_map), f"{path}'s metadata", CheckpointError)
    if not (meta.has(RECORD_KEY) and meta.has("class_names")):
        raise CheckpointError(
            f"{path} was not written by ramstrans export (its metadata has no '{RECORD_KEY}' record): its "
            "classes and preprocessing are unknown"
        )
    record = Fields(meta.json(RECORD_KEY), f"{path}'s '{RECORD_KEY}' record", CheckpointError)
    names = Fields({"class_names": meta.json("class_names")}, f"{path}'s metadata", CheckpointError)
    graph = record.text("graph", "single", choices=tuple(_GRAPHS))
    config = meta.json("config", None)
    if config is not None and not isinstance(config, dict):
        raise meta.fail("config", "must hold a JSON object (the training config)")
    threshold = None
    if meta.has("zoom_threshold"):  # metadata values are strings
        as_number = Fields({"zoom_threshold": _float(meta.get("zoom_threshold"))}, meta.where, CheckpointError)
        threshold = float(as_number.number("zoom_threshold", low=0, high=1))
    out = OnnxRecord(
        class_names=names.texts("class_names"),
        preprocess=Preprocess.from_fields(record.sub("preprocess")),
        graph=graph,
        num_scales=record.number("num_scales", 1, low=1 if graph == "single" else 2, integer=True),
        precision=record.text("precision", "fp32", choices=("fp32", "fp16", "int8")),
        temperature=record.number("temperature", 1.0, above=0),
        zoom_threshold=threshold,
        config=config,
        scale1_graph=record.text("scale1_graph", None),
        step=record.sub("provenance", {}).number("step", -1, low=0, integer=True),
        fields=record.data,
    )
    if out.graph == "single" and out.num_scales != 1:
        raise record.fail("num_scales", f"must be 1 for a single-scale graph, got {out.num_scales}")
    if out.scale1_graph is not None and Path(out.scale1_graph).name != out.scale1_graph:
        raise record.fail("scale1_graph", f"must be a file name beside {path.name}, got {out.scale1_graph!r}")
    _check_graph(session, out, path)
    return out


def _float(text: str) -> Any:
    """A metadata string as a number where it is one (else the string itself, which the check then names)."""
    try:
        return float(text)
    except ValueError:
        return text


def _check_graph(session: Any, record: OnnxRecord, path: Path) -> None:
    """The record describes this graph: one float32 input ``images`` (B, C, crop, crop) and the outputs of its graph
    kind, the logits as wide as the class names.

    Raises:
        CheckpointError: naming the file and what differs.
    """
    inputs = session.get_inputs()
    crop = record.preprocess.crop
    if len(inputs) != 1 or inputs[0].name != GRAPH_INPUT or inputs[0].type != "tensor(float)":
        found = ", ".join(f"{i.name} ({i.type})" for i in inputs)
        raise CheckpointError(
            f"{path}'s graph does not take what its record describes: one float32 input '{GRAPH_INPUT}', found {found}"
        )
    shape = inputs[0].shape
    if len(shape) != 4 or any(isinstance(d, int) and d != crop for d in shape[2:]):
        raise CheckpointError(
            f"{path}'s graph takes images of shape {shape}, not the (B, C, {crop}, {crop}) of its record's "
            "preprocess.crop"
        )
    outputs = {o.name: o.shape for o in session.get_outputs()}
    missing = [name for name in _GRAPHS[record.graph] if name not in outputs]
    if missing:
        raise CheckpointError(
            f"{path}'s graph has no output '{missing[0]}', which its record's graph kind '{record.graph}' needs "
            f"(outputs: {', '.join(outputs)})"
        )
    width = outputs["logits"][-1] if outputs["logits"] else None
    if isinstance(width, int) and width != len(record.class_names):
        raise CheckpointError(
            f"{path}'s graph gives {width} logits but its metadata field 'class_names' names "
            f"{len(record.class_names)} classes"
        )


@dataclass(frozen=True)
class TemperatureRecord:
    """A checkpoint's temperature file (``eval --calibrate``).

    Attributes:
        temperature: T > 0, finite.
        step: the training step of the weights it was fitted on.
        weights: "raw" or "ema".
        weights_hash: the content hash of those weights (``checkpoint.weights_hash``), or None in a file written
            before it was recorded.
    """

    temperature: float
    step: int
    weights: str
    weights_hash: str | None


def read_json_file(path: Path) -> Any:
    """A JSON file's content.

    Raises:
        CheckpointError: not UTF-8 JSON, naming the file.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is damaged (not JSON: {str(e).splitlines()[0][:80]})") from e


def read_temperature_record(path: Path) -> TemperatureRecord:
    """The checked temperature file ``path``.

    Raises:
        CheckpointError: damaged, or a field of the wrong type or range, naming the file and the field.
    """
    f = Fields(read_json_file(path), str(path), CheckpointError)
    return TemperatureRecord(
        temperature=f.number("temperature", above=0),
        step=f.number("step", low=0, integer=True),
        weights=f.text("weights", choices=("raw", "ema")),
        weights_hash=f.text("weights_hash", None),
    )


def read_export_info(path: Path) -> dict[str, Any]:
    """An export folder's ``ramstrans.json``, its fields checked where the loader reads them: the model type, scales,
    class names, temperature and test transform; a null field is dropped (the loader's default applies).

    Raises:
        CheckpointError: not a JSON object, or a field of the wrong type or range, naming the file and the field.
    """
    f = Fields(read_json_file(path), str(path), CheckpointError)
    f.text("model_type", "rams", choices=("rams", "classifier"))
    f.number("num_scales", 1, low=1, integer=True)
    f.number("temperature", 1.0, above=0)
    if f.has("class_names"):
        f.texts("class_names")
    for key in ("alpha", "residual"):
        f.number(key, 0.0, low=0)
    for key in ("eval_transform", "test_transform"):
        if f.has(key):
            sub = f.sub(key)
            crop = sub.number("crop", low=1, integer=True)
            sub.number("resize", low=crop, integer=True)
    return {key: value for key, value in f.data.items() if value is not None}
