"""The torch readers of model sources (``ramstrans.registry.SOURCES``): a ramstrans checkpoint (a file, or a run
folder's newest) and a folder written by ``ramstrans export --format timm``, each to a ``LoadedModel``: the model (eval
mode, on the CPU), its class names, its test transform and, for a checkpoint, its config. What was fitted after
training (a temperature, the zoom gate) is attached here, the one place that reads it. ``load_model`` reads any source
through the registry; ``eval``, ``predict``, ``visualize``, ``export``, ``fit-gate``, the distillation teacher and the
benchmarks all load through it.
"""

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file

from ramstrans.checkpoint import checkpoint_file, load_checkpoint
from ramstrans.config import Config, ModelConfig
from ramstrans.data import Transform
from ramstrans.data.transforms import RecordTransform
from ramstrans.deploy.records import read_export_info
from ramstrans.errors import CheckpointError, UsageError
from ramstrans.fields import Fields
from ramstrans.inference.temperature import read_temperature
from ramstrans.models import Model, RAMSTrans, ViTBackbone, ZoomGate, build_model, model_from_checkpoint
from ramstrans.models.build import weights_used
from ramstrans.registry import EvalRequest, load_source
from ramstrans.runtime.files import register_read

__all__ = [
    "LoadedModel",
    "load_model",
    "eval_transform",
    "model_from_export",
    "load_checkpoint_file",
    "load_run_folder",
    "load_export_folder",
    "EXPORT_INFO",
    "ZOOM_TOKENS",
]

logger = logging.getLogger("ramstrans")

EXPORT_INFO = "ramstrans.json"  # beside timm's files in an export folder: model type, zoom settings, class names
ZOOM_TOKENS = "zoom_cls_tokens.safetensors"  # the zoom scales' class (and distillation) tokens of an export folder
_DEFAULTS = ModelConfig()  # the one place defaults live


@dataclass
class LoadedModel:
    """A trained model ready for inference.

    Attributes:
        model: RAMSTrans or Classifier (eval mode, on the CPU), or an export run by another engine behind the same
            ``Predictor`` interface (an ONNX file's ``OnnxPredictor``).
        class_names: K names, in label order.
        transform: the deterministic test transform (resize, center crop, the model's normalisation).
        config: the resolved training config; None where the source records none (a timm folder).
        checkpoint: the loaded checkpoint; None for an export.
        weights: "raw" or "ema" (which weights of the checkpoint), "export", or "onnx-<precision>".
        file: the file the weights came from (a checkpoint, a folder's ``model.safetensors``, an ONNX file).
        kind: the source's kind (a name of ``ramstrans.registry.SOURCES``).
        step: the training step of the weights (-1 where unknown).
    """

    model: Any
    class_names: list[str]
    transform: Transform | RecordTransform
    config: Config | None
    checkpoint: dict[str, Any] | None
    weights: str
    file: Path
    kind: str
    step: int

    def torch_model(self, what: str) -> Model:
        """The model as a torch module (a checkpoint's or an export folder's).

        Raises:
            UsageError: another engine's export (an ONNX file), naming ``what`` needs the module.
        """
        if not isinstance(self.model, torch.nn.Module):
            raise UsageError(
                f"{what} needs a ramstrans checkpoint or a timm export folder; {self.file} is read as: {self.kind}"
            )
        return cast(Model, self.model)

    def zoom_model(self, what: str) -> RAMSTrans:
        """The model as RAMS-Trans with more than one scale.

        Raises:
            UsageError: a classifier, a one-scale model or another engine's export, naming ``what``.
        """
        model = self.torch_model(what)
        if not isinstance(model, RAMSTrans) or model.num_scales < 2:
            raise UsageError(f"{what} needs a multi-scale RAMS-Trans model; {self.file} has one scale")
        return model

    def run_config(self, what: str) -> Config:
        """The training config the source records (its data set, split seed, precision).

        Raises:
            UsageError: a source without one (a timm folder), naming ``what`` needs it.
        """
        if self.config is None:
            raise UsageError(
                f"{what} needs the training config (its data set), which {self.file} does not record (read as: "
                f"{self.kind}): use the ramstrans checkpoint; ramstrans predict classifies images with any export"
            )
        return self.config

    def checkpoint_dict(self, what: str) -> dict[str, Any]:
        """The loaded checkpoint.

        Raises:
            UsageError: an export, naming ``what`` needs the checkpoint.
        """
        if self.checkpoint is None:
            raise UsageError(f"{what} needs a ramstrans checkpoint; {self.file} is read as: {self.kind}")
        return self.checkpoint


def load_model(
    source: str | Path, weights: str = "auto", *, gate: bool = True, shift: Sequence[str] = ()
) -> LoadedModel:
    """Any model source (a checkpoint file, a run folder, an export), read by the reader of its kind.

    Args:
        source: where the model is.
        weights: a checkpoint's "auto" (the EMA weights when it has them, as its run reported), "raw" or "ema".
        gate: attach the zoom gate a checkpoint holds (``ramstrans fit-gate``).
        shift: named distribution shifts of the test transform (``data.transforms.SHIFTS``).

    Raises:
        FileNotFoundError: nothing at ``source``.
        CheckpointError: not a ramstrans checkpoint or export, or one that does not fit the model it names.
    """
    return cast(LoadedModel, load_source(EvalRequest(str(source), weights=weights, gate=gate, shift=tuple(shift))))


def eval_transform(cfg: Config, model: Model, shift: Sequence[str] = ()) -> Transform:
    """The deterministic test-time transform of a trained model (resize, center crop of ``Config.pipeline_size``, any
    named distribution ``shift``, its normalisation)."""
    crop, resize = cfg.pipeline_size
    return Transform(
        train=False, crop=crop, resize=resize, mean=model.backbone.mean, std=model.backbone.std, shift=shift
    )


def load_checkpoint_file(request: EvalRequest) -> LoadedModel:
    """The reader of a checkpoint file (``_load_checkpoint``)."""
    return _load_checkpoint(request, "checkpoint")


def load_run_folder(request: EvalRequest) -> LoadedModel:
    """The reader of a run folder: its newest checkpoint (``_load_checkpoint``)."""
    return _load_checkpoint(request, "run folder")


def _load_checkpoint(request: EvalRequest, kind: str) -> LoadedModel:
    """A checkpoint (a file, or a run folder's newest) of kind ``kind``: the weights ``request.weights`` asks for, the
    temperature fitted on them (``eval --calibrate``) and, with ``request.gate``, the zoom gate it holds.

    Raises:
        CheckpointError: not a ramstrans checkpoint, or one that does not fit the model it names.
    """
    file = checkpoint_file(Path(request.source).expanduser())
    ckpt = load_checkpoint(file)
    model, cfg, names = model_from_checkpoint(ckpt, weights=request.weights, origin=f"checkpoint {file}")
    used, step = weights_used(ckpt, request.weights), int(ckpt["step"])
    _attach_fitted(model, ckpt, file, used, request)
    model.eval()
    transform = eval_transform(cfg, model, request.shift)
    return LoadedModel(model, names, transform, cfg, ckpt, used, file, kind, step)


def _attach_fitted(model: Model, ckpt: dict[str, Any], file: Path, weights: str, request: EvalRequest) -> None:
    """What was fitted on a checkpoint's weights after training: with ``request.temperature``, the temperature beside
    it (fitted on these weights: refused otherwise) and, with ``request.gate``, the zoom gate it holds (checked
    against the model)."""
    if request.temperature:
        model.set_temperature(read_temperature(file, ckpt, weights))
    record = ckpt.get("zoom_gate")
    if not (request.gate and record is not None and isinstance(model, RAMSTrans)):
        return
    net = cast(Any, model.backbone.timm_model)
    features = int(getattr(net, "head_hidden_size", None) or net.num_features)  # what pre_logits gives the gate
    model.zoom_gate = ZoomGate.from_record(record, features, model.num_classes, f"checkpoint {file}")
    gate_fields = Fields(record, f"checkpoint {file}'s zoom gate", CheckpointError, "zoom_gate")
    fitted_at, now = float(gate_fields.number("temperature", 1.0, above=0)), float(model.temperature)
    if fitted_at != now:
        logger.warning(
            "the zoom gate of %s was fitted on probabilities at temperature %g, the model now applies %g: refit it "
            "(ramstrans fit-gate) before --zoom-on gate",
            file,
            fitted_at,
            now,
        )


def load_export_folder(request: EvalRequest) -> LoadedModel:
    """The reader of a folder written by ``ramstrans export --format timm`` (or any timm folder).

    Raises:
        CheckpointError: a folder timm cannot load.
    """
    path = Path(request.source).expanduser()
    model, names, t = model_from_export(path)
    transform = Transform(
        train=False,
        crop=int(t["crop"]),
        resize=int(t["resize"]),
        mean=model.backbone.mean,
        std=model.backbone.std,
        shift=request.shift,
    )
    return LoadedModel(model, names, transform, None, None, "export", path / "model.safetensors", "timm folder", -1)


def model_from_export(folder: str | Path) -> tuple[Model, list[str], dict[str, Any]]:
    """The model (eval mode) rebuilt from an exported timm folder, its class names and its test transform
    ({"resize", "crop", "interpolation"}). A plain timm ViT folder without ``ramstrans.json`` gives the single-scale
    RAMSTrans; any other timm model a Classifier; with it, its model type and saliency decide, and its backbone
    family serves timm's model.

    Raises:
        CheckpointError: not a timm folder (no config.json) or one it cannot load.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not an exported model folder (it has no config.json)")
    register_read(path, tree=True)
    try:
        net = timm.create_model(f"local-dir:{path}", pretrained=True)
    except Exception as e:  # timm's own message: missing weights, unknown architecture
        raise CheckpointError(f"timm cannot load the exported folder {path} ({type(e).__name__}: {e})") from e
    info = read_export_info(path / EXPORT_INFO) if (path / EXPORT_INFO).is_file() else {}
    timm_cfg = dict(cast(Any, net).pretrained_cfg)
    default_type = "rams" if isinstance(net, VisionTransformer) else "classifier"
    model_cfg = replace(  # a folder without ramstrans.json: the config's defaults
        _DEFAULTS,
        type=info.get("model_type", default_type),
        num_scales=int(info.get("num_scales", 1)),
        img_size=int(timm_cfg["input_size"][-1]),
        backbone_kwargs={"in_chans": int(timm_cfg["input_size"][0])},
        pretrained=None,
        **{k: info[k] for k in ("alpha", "residual", "rollout_rows", "eval_head", "saliency") if k in info},
    )
    model = build_model(model_cfg, None, net)
    if model_cfg.num_scales > 1 and isinstance(model.backbone, ViTBackbone) and model.backbone.has_class_token:
        _load_zoom_tokens(model.backbone, path / ZOOM_TOKENS)
    model.set_temperature(float(info.get("temperature", 1.0)))
    names = list(
        info.get("class_names")
        or timm_cfg.get("label_names")
        or [str(k) for k in range(int(cast(Any, net).num_classes))]
    )
    crop = int(timm_cfg["input_size"][-1])
    transform = info.get("eval_transform") or {
        "resize": math.floor(crop / timm_cfg.get("crop_pct", 0.875)),
        "crop": crop,
        "interpolation": timm_cfg.get("interpolation", "bilinear"),
    }
    return model.eval(), names, transform


def _load_zoom_tokens(bb: ViTBackbone, file: Path) -> None:
    """The zoom scales' class (and distillation) tokens of an export folder into the backbone."""
    tokens = load_file(str(file))
    with torch.no_grad():
        for i, token in enumerate(bb.zoom_cls_tokens):
            token.copy_(tokens[str(i)])
        for i, token in enumerate(bb.zoom_dist_tokens):
            token.copy_(tokens[f"dist{i}"])
