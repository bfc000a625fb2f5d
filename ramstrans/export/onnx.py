"""``ramstrans export --format onnx``: the single-scale model (``images`` -> ``logits``), or the fused multi-scale
model (``images`` -> ``logits`` (B, S, K) per scale, ``probs`` (B, K) their mean softmax, ``boxes`` (B, 4) scale 1's
proposal, and for a checkpoint with a fitted zoom gate ``zoom_confidence`` (B,), zoomed where below the metadata's
``zoom_threshold``), proposal included. A fused export also writes the single-scale graph beside it
(``NAME.scale1.onnx``; with a gate it outputs ``zoom_confidence`` too), which ``predict --scales auto`` runs on every
image before the fused graph runs on the unsure ones. The batch dimension is dynamic; ``fp32``, ``fp16`` or ``int8``
(``export.precision``). The metadata holds everything a client needs (``deploy.records.read_onnx_record`` reads and
checks it): the class names, every preprocessing step in words and numbers, the outputs, the precision and calibration
set, where the weights came from and the resolved config (``ramstrans eval`` on the file finds its data set through it).
"""

import argparse
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ramstrans import __version__
from ramstrans.deploy.preprocess import Preprocess
from ramstrans.deploy.session import RECORD_KEY, scale1_path
from ramstrans.errors import DataError, UsageError
from ramstrans.export.base import checked_out, config_record, preprocess_of, provenance, transform_info
from ramstrans.export.precision import PRECISIONS, calibration_hash, to_fp16, to_int8
from ramstrans.inference.load import LoadedModel, load_model
from ramstrans.models import Model, RAMSTrans
from ramstrans.models.backbones.distilled import select_head
from ramstrans.runtime.files import atomic_write, check_output

__all__ = ["export_onnx", "write_onnx", "build_onnx", "CALIBRATION_SEED", "TARGET"]

logger = logging.getLogger("ramstrans")

CALIBRATION_SEED = 0  # which training images calibrate int8: a fixed draw, recorded with its hash
Calibration = tuple[list[str], Callable[[], Iterator[np.ndarray]]]  # image paths, and batches of them


class _Fused(nn.Module):
    """The multi-scale test-time model as one graph: per-scale logits, their mean softmax, scale 1's boxes, and with a
    fitted zoom gate scale 1's zoom confidence (1 − the gate's probability that the zoom changes the answer)."""

    def __init__(self, model: RAMSTrans, scales: int) -> None:
        super().__init__()
        self.model, self.scales = model, scales

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model.forward_multiscale(images, self.scales)
        logits = torch.stack(self.model.head_logits(out), dim=1)
        probs = (logits.float() / self.model.temperature).softmax(-1)  # predict's: divided by a fitted temperature
        fused = (logits, probs.mean(1), out.boxes[0])
        if self.model.zoom_gate is None:
            return fused
        return (*fused, self.model.zoom_score(out.features[0], probs[:, 0], "gate"))


class _GatedScale1(nn.Module):
    """Scale 1 of a model with a fitted zoom gate: its (B, K) logits and (B,) zoom confidence, one plain pass."""

    def __init__(self, model: RAMSTrans) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        bb = self.model.backbone
        tokens = bb.forward_features(self.model.glance(images), scale=0, capture="none").tokens
        cls, dist = bb.forward_heads(tokens)
        logits = cls if dist is None else select_head(cls, dist, self.model.eval_head)
        probs = (logits.float() / self.model.temperature).softmax(-1)
        return logits, self.model.zoom_score(bb.pre_logits(tokens), probs, "gate")


def export_onnx(
    checkpoint: str,
    out: str,
    scales: int = 1,
    weights: str = "auto",
    opset: int = 18,
    overwrite: bool = False,
    *,
    precision: str = "fp32",
    calibration_images: int = 256,
) -> Path:
    """Write a checkpoint's single-scale or fused multi-scale model as ONNX (see the module doc).

    Args:
        checkpoint: ramstrans checkpoint.
        out: the .onnx file (a fused export also writes ``scale1_path(out)``).
        scales: 1, or the number of scales fused.
        weights: "auto", "raw" or "ema".
        opset: the ONNX opset.
        overwrite: replace existing files.
        precision: "fp32", "fp16" or "int8" (static, calibrated on ``calibration_images`` training images).
        calibration_images: how many images of the training split calibrate int8 (drawn with ``CALIBRATION_SEED``).

    Raises:
        UsageError: an unknown precision, int8 without calibration images, the onnx packages missing.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "int8" and calibration_images < 1:
        raise UsageError(f"--precision int8 needs calibration images: --calibration-images {calibration_images}")
    loaded = load_model(checkpoint, weights)
    loaded.checkpoint_dict("ramstrans export")
    model, cfg = loaded.torch_model("ramstrans export"), loaded.run_config("ramstrans export")
    calibration = _calibration(loaded, calibration_images) if precision == "int8" else None  # reads the data set
    path = checked_out(out, scales, model, checkpoint, overwrite)
    if path.is_dir() or path.suffix != ".onnx":
        raise UsageError(f"--out {out} must be a file name ending in .onnx, such as model.onnx")
    graphs = {path: scales}
    if scales > 1:  # the single-scale graph adaptive zoom runs first
        graphs[check_output(scale1_path(path), [checkpoint], overwrite, "--out")] = 1
    meta = {
        "class_names": json.dumps(loaded.class_names),
        "test_transform": json.dumps(transform_info(cfg)),
        "config": json.dumps(config_record(cfg)),
    }
    record = {"preprocess": preprocess_of(cfg, model).to_meta(), "provenance": provenance(loaded, checkpoint)}
    protos = {p: build_onnx(model, s, meta, record, opset, precision, calibration) for p, s in graphs.items()}
    if scales > 1:
        _link(protos[path], scale1_path(path).name)
    for p, proto in protos.items():
        _save(proto, p)
    return path


def write_onnx(model: Model, path: Path, scales: int = 1, meta: dict[str, str] | None = None, opset: int = 18) -> Path:
    """Write ``model`` (single scale, or the fusion of ``scales`` scales) in float32 as an ONNX file with a dynamic
    batch, ``meta`` in its metadata and the preprocessing of its backbone's input size and normalisation."""
    crop = model.input_size[0]
    record = {"preprocess": Preprocess.of(crop, crop, model.backbone.mean, model.backbone.std).to_meta()}
    _save(build_onnx(model, scales, meta or {}, record, opset), path)
    return path


def build_onnx(
    model: Model,
    scales: int,
    meta: dict[str, str],
    record: dict[str, Any],
    opset: int = 18,
    precision: str = "fp32",
    calibration: Calibration | None = None,
) -> Any:
    """The ONNX ``ModelProto`` of ``model`` at ``scales`` scales and ``precision``, with ``meta`` and the ramstrans
    record (``record`` plus the graph kind, outputs and precision) in its metadata and a description.

    Raises:
        UsageError: the onnx exporter is not installed (pip install 'ramstrans[deploy]').
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise UsageError("ONNX export needs the onnx and onnxscript packages: pip install 'ramstrans[deploy]'") from e
    module, outputs, gate_meta = _graph(model.eval(), scales)
    example = torch.zeros(2, model.backbone.in_chans, *model.input_size)
    program = torch.onnx.export(
        module,
        (example,),
        input_names=["images"],
        output_names=list(outputs),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
        dynamo=True,
        opset_version=opset,
        verbose=False,
    )
    assert program is not None  # dynamo=True always returns the program
    proto = program.model_proto
    if precision == "fp16":
        proto = to_fp16(proto)
    elif precision == "int8":
        assert calibration is not None  # export_onnx draws it
        proto = to_int8(proto, calibration[1]())
    calibrated = None if calibration is None else _calibration_record(calibration[0])
    full = {
        **record,
        "version": __version__,
        "graph": "fused" if scales > 1 else "single",
        "num_scales": scales,
        "precision": precision,
        "calibration": calibrated if precision == "int8" else None,
        "outputs": outputs,
        "temperature": float(model.temperature),  # logits / temperature before every softmax (eval --calibrate)
    }
    onnx.helper.set_model_props(
        proto,
        {
            "mean": json.dumps(list(model.backbone.mean)),
            "std": json.dumps(list(model.backbone.std)),
            "num_scales": str(scales),
            **meta,
            **gate_meta,
            RECORD_KEY: json.dumps(full),
        },
    )
    proto.doc_string = proto.graph.doc_string = _description(full, len(json.loads(meta.get("class_names", "[]"))))
    return proto


def _graph(model: Model, scales: int) -> tuple[nn.Module, dict[str, str], dict[str, str]]:
    """The module to export, its outputs {name: what it holds} and the zoom gate's metadata."""
    gated = isinstance(model, RAMSTrans) and model.zoom_gate is not None
    gate_meta: dict[str, str] = {}
    confidence = (
        "(B,) float32 1 - the zoom gate's probability that zooming changes the answer; zoom below zoom_threshold"
    )
    if gated:
        assert isinstance(model, RAMSTrans) and model.zoom_gate is not None
        gate_meta = {"zoom_on": "gate", "zoom_threshold": str(float(model.zoom_gate.threshold))}
    if scales == 1:
        outputs = {"logits": "(B, K) float32 logits of scale 1 (softmax gives the probabilities)"}
        if not gated:
            return model, outputs, gate_meta
        assert isinstance(model, RAMSTrans)
        return _GatedScale1(model).eval(), {**outputs, "zoom_confidence": confidence}, gate_meta
    if not isinstance(model, RAMSTrans):  # checked_out refuses this first; kept for direct callers
        raise UsageError(f"a {type(model).__name__} has one scale: export it with --scales 1")
    outputs = {
        "logits": "(B, S, K) float32 logits of each scale",
        "probs": "(B, K) float32 the fused prediction: the mean of the scales' softmax",
        "boxes": "see preprocess.boxes",
    }
    if gated:
        outputs["zoom_confidence"] = confidence
    return _Fused(model, scales).eval(), outputs, gate_meta


def _description(record: dict[str, Any], classes: int) -> str:
    kind = "single-scale" if record["graph"] == "single" else f"fused {record['num_scales']}-scale RAMS-Trans"
    return (
        f"ramstrans {record['version']}: {kind} classifier of {classes or 'K'} classes, {record['precision']}. "
        f"Input `images` (B, 3, H, W) float32, preprocessed as the metadata's `{RECORD_KEY}`.preprocess says; "
        f"outputs: {', '.join(record['outputs'])}. Class names in the metadata's `class_names`."
    )


def _link(proto: Any, scale1_name: str) -> None:
    """Record in a fused graph's metadata the file name of its single-scale graph."""
    props = {p.key: p for p in proto.metadata_props}
    record = json.loads(props[RECORD_KEY].value)
    props[RECORD_KEY].value = json.dumps({**record, "scale1_graph": scale1_name})


def _save(proto: Any, path: Path) -> None:
    import onnx

    atomic_write(path, lambda tmp: onnx.save(proto, tmp))


def _calibration_record(names: list[str]) -> dict[str, Any]:
    return {"split": "train", "images": len(names), "seed": CALIBRATION_SEED, "sha256": calibration_hash(names)}


def _calibration(loaded: LoadedModel, count: int) -> Calibration:
    """``count`` images of the checkpoint's training split (its run's, without the carved validation images), drawn
    with ``CALIBRATION_SEED``, under the test transform: their paths and a factory of their (B, C, H, W) batches."""
    from ramstrans.data import ImageDataset, eval_loader, load_index, split_tables

    cfg = loaded.config
    assert cfg is not None  # a checkpoint
    try:
        index = load_index(cfg.data)
    except (DataError, OSError) as e:
        raise UsageError(
            f"--precision int8 calibrates on the checkpoint's training images, which cannot be read: {e}"
        ) from e
    table = split_tables(cfg.data, index, cfg.train.seed)["train"]
    if count > len(table):
        logger.warning(
            "--calibration-images %d is more than the %d images of %s's training split: int8 is calibrated on all %d "
            "(the file's record says so)",
            count,
            len(table),
            loaded.file,
            len(table),
        )
    rows = np.random.default_rng(CALIBRATION_SEED).permutation(len(table))[:count]
    table = table.iloc[rows].reset_index(drop=True)
    dataset = ImageDataset(index.root, table, loaded.class_names, loaded.transform)

    def batches() -> Iterator[np.ndarray]:
        for batch in eval_loader(dataset, 16):
            yield batch["image"].numpy()

    return [str(p) for p in table["path"]], batches


class OnnxTarget:
    """``ramstrans export --format onnx`` (its entry in ``ramstrans.registry.EXPORT_TARGETS``): its options and its
    writer; ``inference.onnx_predictor`` and ``deploy.session`` read what it writes."""

    def add_arguments(self, group: Any) -> None:
        """``--precision`` and ``--calibration-images``."""
        group.add_argument(
            "--precision",
            default="fp32",
            choices=PRECISIONS,
            help="fp16 (for GPUs; inputs and outputs stay float32) or int8 (static, calibrated on training images)",
        )
        group.add_argument(
            "--calibration-images",
            type=int,
            default=256,
            help="int8: training-split images that calibrate the activation ranges, drawn with a fixed seed "
            "(default: %(default)s)",
        )

    def write(
        self, source: str, out: str, scales: int, weights: str, overwrite: bool, options: argparse.Namespace
    ) -> Path:
        """``export_onnx`` with the parsed options."""
        return export_onnx(
            source,
            out,
            scales,
            weights,
            overwrite=overwrite,
            precision=options.precision,
            calibration_images=options.calibration_images,
        )

    def wrote(self, path: Path, scales: int, options: argparse.Namespace) -> str:
        """What was written, for the closing sentence."""
        mode = ("single-scale" if scales == 1 else f"fused {scales}-scale") + f" {options.precision}"
        beside = " (its single-scale graph, for --scales 1 and auto, beside it)" if scales > 1 else ""
        return f"the {mode} model as ONNX to {path}{beside}"


TARGET = OnnxTarget()
