"""Models from config and from checkpoints: ``build_backbone`` looks ``cfg.model``'s family up in
``ramstrans.registry.BACKBONES`` (by its saliency) and builds the backbone; ``build_model`` puts RAMSTrans (or a
Classifier) around it; ``create_model`` does both from keyword arguments; ``model_from_checkpoint`` rebuilds a trained
one from its checkpoint alone (the weights it reported, raw or EMA)."""

import dataclasses
from dataclasses import replace
from typing import Any, cast

import torch
from timm.models import get_pretrained_cfg
from torch import nn

from ramstrans.config import Config, ConfigError, DataConfig, ModelConfig, config_diff, config_from_dict, validate
from ramstrans.errors import CheckpointError, UsageError
from ramstrans.models.backbones.base import Backbone, ZoomBackbone
from ramstrans.models.backbones.distilled import Head
from ramstrans.models.classifier import Classifier
from ramstrans.models.rams import RAMSTrans
from ramstrans.registry import BACKBONES, family_of, resolve

__all__ = [
    "Model",
    "build_backbone",
    "build_model",
    "create_model",
    "model_from_checkpoint",
    "weights_used",
    "load_model_state",
]

Model = RAMSTrans | Classifier


def build_backbone(model_cfg: ModelConfig, num_classes: int | None, model: nn.Module | None = None) -> Backbone:
    """The backbone of ``cfg.model``, built by its family: the one that gives ``model.saliency`` (a classifier's is the
    ``net`` family, which runs any timm model as it is), then its gradient checkpointing and normalisation override.

    Args:
        model_cfg: the model section.
        num_classes: K; None keeps the model's own.
        model: a built timm model to serve instead of one by name (an export folder's).

    Raises:
        UsageError: a saliency no registered family gives, or the family's refusal of the config.
        ConfigError: ``model.mean`` / ``model.std`` that do not fit the input channels.
    """
    family = "net" if model_cfg.type == "classifier" else family_of(model_cfg.saliency)
    backbone: Backbone = resolve(BACKBONES[family].build)(model_cfg, num_classes, model)
    if model_cfg.grad_checkpointing:
        cast(Any, backbone.timm_model).set_grad_checkpointing(True)
    if model_cfg.mean is not None or model_cfg.std is not None:
        try:
            backbone.set_normalization(
                model_cfg.mean if model_cfg.mean is not None else backbone.mean,
                model_cfg.std if model_cfg.std is not None else backbone.std,
            )
        except UsageError as e:
            raise ConfigError(f"model.mean / model.std: {e}") from e
    return backbone


def build_model(
    model_cfg: ModelConfig, num_classes: int | None, model: nn.Module | None = None, source_size: int = 0
) -> Model:
    """The model of ``cfg.model``: RAMSTrans around its backbone (``build_backbone``), or with ``model.type:
    classifier`` a Classifier. ``source_size`` is ``data.source_size`` (read with ``model.zoom_source: source``)."""
    source_size = source_size if model_cfg.zoom_source == "source" else 0
    backbone = build_backbone(model_cfg, num_classes, model)
    if model_cfg.type == "classifier":
        return Classifier(backbone=backbone)
    return RAMSTrans(
        backbone=cast(ZoomBackbone, backbone),
        alpha=model_cfg.alpha,
        eval_head=cast(Head, model_cfg.eval_head),  # checked by the config's ranges
        scale_sizes=model_cfg.scale_sizes or None,
        source_size=source_size or None,
    )


def create_model(backbone: str = "vit_base_patch16_224", num_classes: int | None = None, **options: Any) -> Model:
    """A model by timm name, checked as a config is.

    Args:
        backbone: the timm model name.
        num_classes: K; None keeps the model's own.
        **options: keys of the config's model section (``ModelConfig``: ``img_size`` (default: timm's for the name),
            ``num_scales``, ``alpha``, ``saliency``, ``pretrained``, ``dist_token``, ...); any other keyword goes to
            ``timm.create_model`` (``depth``, ``embed_dim``, ...), as ``model.backbone_kwargs``; ``source_size``
            is ``data.source_size`` (with ``zoom_source="source"``).

    Raises:
        ConfigError: a value out of range, naming its config key.
        UsageError: what ``build_model`` refuses.
    """
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    keys = {f.name for f in dataclasses.fields(ModelConfig)}
    source_size = int(options.pop("source_size", 0))
    timm_kwargs = {k: v for k, v in options.items() if k not in keys}
    known = {k: v for k, v in options.items() if k in keys}
    if known.get("img_size") is None:
        pretrained_cfg = get_pretrained_cfg(backbone)
        known["img_size"] = int(pretrained_cfg.input_size[-1]) if pretrained_cfg else 224
    model_cfg = ModelConfig(
        backbone=backbone, **{**known, "backbone_kwargs": {**known.get("backbone_kwargs", {}), **timm_kwargs}}
    )
    validate(Config(model=model_cfg, data=DataConfig(source_size=source_size)))
    return build_model(model_cfg, num_classes, source_size=source_size)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """``model.load_state_dict(state)`` that explains a mismatch in one sentence.

    Raises:
        CheckpointError: keys missing or unexpected, or a tensor of another shape.
    """
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(
                f"{origin} does not fit the configured model: {k} has shape {tuple(v.shape)} in the "
                f"checkpoint, {tuple(own[k].shape)} in the model"
            )
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"the model's {missing[0]} is missing" if missing else f"it holds {unexpected[0]}, which the model lacks"
        raise CheckpointError(
            f"{origin} does not fit the configured model: {what} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys)"
        )
    model.load_state_dict(state)


def weights_used(ckpt: dict[str, Any], weights: str = "auto", origin: str = "the checkpoint") -> str:
    """Which weights of a checkpoint ``weights`` ("auto", "raw" or "ema") means: "ema" when asked for, or with "auto"
    when the checkpoint has EMA weights (as its run reported); else "raw".

    Raises:
        UsageError: another value than auto, raw or ema.
        CheckpointError: EMA weights asked for but absent.
    """
    if weights not in ("auto", "raw", "ema"):
        raise UsageError(f"weights must be auto, raw or ema, got '{weights}'")
    has_ema = isinstance(ckpt.get("model_ema"), dict)
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"{origin} has no EMA weights (it was trained with train.ema_decay = 0)")
    return "ema" if has_ema and weights != "raw" else "raw"


def model_from_checkpoint(
    ckpt: dict[str, Any], model_cfg: ModelConfig | None = None, weights: str = "auto", origin: str = "the checkpoint"
) -> tuple[Model, Config, list[str]]:
    """The model of a checkpoint's weights (train mode, on the CPU), its config and its class names; no pretrained
    file needed. What was fitted after training (the zoom gate, a temperature) is the checkpoint reader's to attach
    (``inference.load``).

    Args:
        ckpt: a loaded checkpoint (``load_checkpoint``).
        model_cfg: the model section to build (e.g. with resume overrides); default the checkpoint's own.
        weights: "raw", "ema" (its EMA weights) or "auto" (EMA weights when the checkpoint has them).
        origin: how to name the checkpoint in errors.

    Raises:
        CheckpointError: EMA weights asked for but absent, or the weights do not fit ``model_cfg``.
    """
    try:
        cfg = config_from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{origin} holds a config this version cannot read ({e})") from e
    names = list(ckpt["class_names"])
    state = ckpt["model_ema"] if weights_used(ckpt, weights, origin) == "ema" else ckpt["model"]
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{origin} holds non-finite weights ({bad}): the run diverged; use an earlier checkpoint")
    wanted = replace(model_cfg or cfg.model, pretrained=None)
    model = build_model(wanted, len(names), source_size=cfg.data.source_size)
    try:
        load_model_state(model, state, origin)
    except CheckpointError as e:
        differs = {
            k: v
            for k, v in config_diff(
                replace(cfg, model=replace(cfg.model, pretrained=None)), replace(cfg, model=wanted), "model"
            ).items()
        }
        if not differs:
            raise
        key, (old, new) = next(iter(differs.items()))
        raise CheckpointError(
            f"{origin} does not fit the configured model: its {key} is {old}, the configured one {new}"
        ) from e
    return model, cfg, names
