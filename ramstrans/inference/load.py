"""The one way a trained model comes back: from a ramstrans checkpoint (a file, or a run folder's newest) or from a
folder written by ``ramstrans export --format timm``, to the model (eval mode, on the CPU), its class names, its
test transform and, for a checkpoint, its config. ``eval``, ``predict``, ``visualize``, ``export``, ``fit-gate``, the
distillation teacher and the benchmarks all load through ``load_model``.
"""

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file

from ramstrans.checkpoint import checkpoint_file, find_checkpoint, load_checkpoint
from ramstrans.config import Config, ModelConfig
from ramstrans.data import Transform
from ramstrans.errors import CheckpointError
from ramstrans.inference.calibration import read_temperature
from ramstrans.models import Classifier, Model, NetBackbone, RAMSTrans, ViTBackbone, model_from_checkpoint, weights_used

__all__ = ["LoadedModel", "load_model", "eval_transform", "model_from_export", "EXPORT_INFO", "ZOOM_TOKENS"]

logger = logging.getLogger("ramstrans")

EXPORT_INFO = "ramstrans.json"  # beside timm's files in an export folder: model type, zoom settings, class names
ZOOM_TOKENS = "zoom_cls_tokens.safetensors"  # the zoom scales' class (and distillation) tokens of an export folder
_DEFAULTS = ModelConfig()  # the one place defaults live


@dataclass
class LoadedModel:
    """A trained model ready for inference.

    Attributes:
        model: RAMSTrans or Classifier, eval mode, on the CPU.
        class_names: K names, in label order.
        transform: the deterministic test transform (resize, center crop, the model's normalisation).
        config: the checkpoint's resolved config; None for an export folder (it holds no data set).
        checkpoint: the loaded checkpoint; None for an export folder.
        weights: "raw" or "ema" (which weights of the checkpoint), or "export".
        file: the file the weights came from (a checkpoint, or the folder's ``model.safetensors``).
    """

    model: Model
    class_names: list[str]
    transform: Transform
    config: Config | None
    checkpoint: dict[str, Any] | None
    weights: str
    file: Path


def eval_transform(cfg: Config, model: Model, shift: Sequence[str] = ()) -> Transform:
    """The deterministic test-time transform of a trained model (resize, center crop, any named distribution
    ``shift``, its normalisation)."""
    return Transform(
        train=False,
        crop=cfg.model.img_size,
        resize=cfg.data.resize,
        mean=model.backbone.mean,
        std=model.backbone.std,
        shift=shift,
    )


def load_model(
    source: str | Path, weights: str = "auto", *, gate: bool = True, shift: Sequence[str] = ()
) -> LoadedModel:
    """A checkpoint file, a run folder (its newest checkpoint) or an exported timm folder, ready for inference.

    Args:
        source: where the model is.
        weights: a checkpoint's "auto" (the EMA weights when it has them, as its run reported), "raw" or "ema".
        gate: attach the zoom gate a checkpoint holds (``ramstrans fit-gate``).
        shift: named distribution shifts of the test transform (``data.transforms.SHIFTS``).

    Raises:
        FileNotFoundError: nothing at ``source``, or a folder without a checkpoint or export.
        CheckpointError: not a ramstrans checkpoint or export folder, or one that does not fit the model it names.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model {source} does not exist")
    if path.is_dir() and (path / "config.json").is_file():
        model, names, t = model_from_export(path)
        transform = Transform(
            train=False,
            crop=int(t["crop"]),
            resize=int(t["resize"]),
            mean=model.backbone.mean,
            std=model.backbone.std,
            shift=shift,
        )
        return LoadedModel(model, names, transform, None, None, "export", path / "model.safetensors")
    if path.is_dir() and find_checkpoint("auto", path) is None:
        raise CheckpointError(
            f"{path} is not an exported model folder (no config.json) nor a run folder (no checkpoint.pth)"
        )
    file = checkpoint_file(path)
    ckpt = load_checkpoint(file)
    model, cfg, names = model_from_checkpoint(ckpt, weights=weights, origin=f"checkpoint {file}", gate=gate)
    model.temperature = read_temperature(file, int(ckpt["step"]), weights_used(ckpt, weights))
    fitted_at = float((ckpt.get("zoom_gate") or {}).get("temperature", 1.0))
    if gate and isinstance(model, RAMSTrans) and model.zoom_gate is not None and fitted_at != model.temperature:
        logger.warning(
            "the zoom gate of %s was fitted on probabilities at temperature %g, the model now applies %g: refit it "
            "(ramstrans fit-gate) before --zoom-on gate",
            file,
            fitted_at,
            model.temperature,
        )
    model.eval()
    return LoadedModel(model, names, eval_transform(cfg, model, shift), cfg, ckpt, weights_used(ckpt, weights), file)


def _read_info(file: Path) -> dict[str, Any]:
    """An export folder's ``ramstrans.json``.

    Raises:
        CheckpointError: not a JSON object (a damaged file), naming it.
    """
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is damaged (not JSON: {str(e).splitlines()[0][:80]})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{file} is damaged (not a JSON object)")
    return info


def model_from_export(folder: str | Path) -> tuple[Model, list[str], dict[str, Any]]:
    """The model (eval mode) rebuilt from an exported timm folder, its class names and its test transform
    ({"resize", "crop", "interpolation"}). A plain timm ViT folder without ``ramstrans.json`` gives the single-scale
    RAMSTrans; any other timm model a Classifier; with it, its model type and saliency decide.

    Raises:
        CheckpointError: not a timm folder (no config.json) or one it cannot load.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not an exported model folder (it has no config.json)")
    try:
        net = timm.create_model(f"local-dir:{path}", pretrained=True)
    except Exception as e:  # timm's own message: missing weights, unknown architecture
        raise CheckpointError(f"timm cannot load the exported folder {path} ({type(e).__name__}: {e})") from None
    info = _read_info(path / EXPORT_INFO) if (path / EXPORT_INFO).is_file() else {}
    scales, cfg = int(info.get("num_scales", 1)), dict(cast(Any, net).pretrained_cfg)
    size = (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    rams = info.get("model_type", "rams" if isinstance(net, VisionTransformer) else "classifier") == "rams"
    model: Model
    if not rams:
        model = Classifier(backbone=NetBackbone(net=net, img_size=size, in_chans=int(cfg["input_size"][0])))
    else:
        saliency = info.get("saliency", _DEFAULTS.saliency)
        model = RAMSTrans(
            backbone=NetBackbone(net=net, img_size=size, num_scales=scales) if saliency == "activation" else net,
            num_scales=scales,
            alpha=info.get("alpha", _DEFAULTS.alpha),  # a folder without ramstrans.json: the config's defaults
            residual=info.get("residual", _DEFAULTS.residual),
            rollout_rows=info.get("rollout_rows", _DEFAULTS.rollout_rows),
            eval_head=info.get("eval_head", _DEFAULTS.eval_head),
            saliency=saliency,
        )
        if scales > 1 and model.backbone.has_class_token:
            _load_zoom_tokens(model, path / ZOOM_TOKENS)
    model.temperature = float(info.get("temperature", 1.0))
    names = list(
        info.get("class_names") or cfg.get("label_names") or [str(k) for k in range(int(cast(Any, net).num_classes))]
    )
    crop = int(cfg["input_size"][-1])
    transform = info.get("eval_transform") or {
        "resize": math.floor(crop / cfg.get("crop_pct", 0.875)),
        "crop": crop,
        "interpolation": cfg.get("interpolation", "bilinear"),
    }
    return model.eval(), names, transform


def _load_zoom_tokens(model: RAMSTrans, file: Path) -> None:
    """The zoom scales' class (and distillation) tokens of an export folder into ``model``."""
    tokens, bb = load_file(str(file)), model.backbone
    assert isinstance(bb, ViTBackbone)  # only a ViT's class token has zoom copies
    with torch.no_grad():
        for i, token in enumerate(bb.zoom_cls_tokens):
            token.copy_(tokens[str(i)])
        for i, token in enumerate(bb.zoom_dist_tokens):
            token.copy_(tokens[f"dist{i}"])
