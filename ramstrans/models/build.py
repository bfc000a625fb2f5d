"""Models from config and from checkpoints: ``build_model`` maps ``cfg.model`` to a model; ``model_from_checkpoint``
rebuilds a trained one from its checkpoint alone (the weights it reported, raw or EMA, and its zoom gate)."""

from dataclasses import replace
from typing import Any, cast

import torch
from torch import nn

from ramstrans.config import Config, ConfigError, ModelConfig, config_diff, config_from_dict
from ramstrans.errors import CheckpointError, UsageError
from ramstrans.models.backbones.base import Saliency
from ramstrans.models.backbones.distilled import Head
from ramstrans.models.classifier import Classifier
from ramstrans.models.gate import ZoomGate
from ramstrans.models.rams import RAMSTrans
from ramstrans.models.rollout import RolloutRows

__all__ = ["Model", "build_model", "model_from_checkpoint", "weights_used", "load_model_state"]

Model = RAMSTrans | Classifier


def build_model(model_cfg: ModelConfig, num_classes: int) -> Model:
    """The only place that maps ``cfg.model`` to RAMSTrans (or, with ``model.type: classifier``, Classifier) keyword
    arguments."""
    kwargs = dict(model_cfg.backbone_kwargs)
    if model_cfg.drop_path_rate:
        kwargs["drop_path_rate"] = model_cfg.drop_path_rate
    model: Model
    if model_cfg.type == "classifier":
        model = Classifier(
            backbone=model_cfg.backbone,
            num_classes=num_classes,
            img_size=model_cfg.img_size,
            pretrained=model_cfg.pretrained,
            download_timeout_s=model_cfg.download_timeout_s,
            **kwargs,
        )
    else:
        model = RAMSTrans(
            backbone=model_cfg.backbone,
            num_classes=num_classes,
            img_size=model_cfg.img_size,
            num_scales=model_cfg.num_scales,
            alpha=model_cfg.alpha,
            residual=model_cfg.residual,
            rollout_rows=cast(RolloutRows, model_cfg.rollout_rows),  # checked by the config's ranges
            pretrained=model_cfg.pretrained,
            download_timeout_s=model_cfg.download_timeout_s,
            dist_token=model_cfg.dist_token,
            eval_head=cast(Head, model_cfg.eval_head),
            attn_window=model_cfg.attn_window,
            ffn=model_cfg.ffn,
            ffn_kernel=model_cfg.ffn_kernel,
            ffn_prefix=model_cfg.ffn_prefix,
            fwt=model_cfg.fwt,
            saliency=cast(Saliency, model_cfg.saliency),  # checked by the config's ranges
            **kwargs,
        )
    if model_cfg.grad_checkpointing:
        cast(Any, model.backbone.timm_model).set_grad_checkpointing(True)
    if model_cfg.mean is not None or model_cfg.std is not None:
        bb = model.backbone
        try:
            bb.set_normalization(
                model_cfg.mean if model_cfg.mean is not None else bb.mean,
                model_cfg.std if model_cfg.std is not None else bb.std,
            )
        except ValueError as e:
            raise UsageError(f"model.mean / model.std: {e}") from None
    return model


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
        ValueError: another value than auto, raw or ema.
        CheckpointError: EMA weights asked for but absent.
    """
    if weights not in ("auto", "raw", "ema"):
        raise UsageError(f"weights must be auto, raw or ema, got '{weights}'")
    has_ema = isinstance(ckpt.get("model_ema"), dict)
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"{origin} has no EMA weights (it was trained with train.ema_decay = 0)")
    return "ema" if has_ema and weights != "raw" else "raw"


def model_from_checkpoint(
    ckpt: dict[str, Any],
    model_cfg: ModelConfig | None = None,
    weights: str = "auto",
    origin: str = "the checkpoint",
    gate: bool = True,
) -> tuple[Model, Config, list[str]]:
    """The model of a checkpoint (train mode, on the CPU), its config and its class names; no pretrained file needed.

    Args:
        ckpt: a loaded checkpoint (``load_checkpoint``).
        model_cfg: the model section to build (e.g. with resume overrides); default the checkpoint's own.
        weights: "raw", "ema" (its EMA weights) or "auto" (EMA weights when the checkpoint has them).
        origin: how to name the checkpoint in errors.
        gate: attach the zoom gate the checkpoint holds (``ramstrans fit-gate``); a resumed training does not (the
            weights move on, and the gate was fitted to these).

    Raises:
        CheckpointError: EMA weights asked for but absent, or the weights do not fit ``model_cfg``.
    """
    try:
        cfg = config_from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{origin} holds a config this version cannot read ({e})") from None
    names = list(ckpt["class_names"])
    state = ckpt["model_ema"] if weights_used(ckpt, weights, origin) == "ema" else ckpt["model"]
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{origin} holds non-finite weights ({bad}): the run diverged; use an earlier checkpoint")
    wanted = replace(model_cfg or cfg.model, pretrained=None)
    model = build_model(wanted, len(names))
    try:
        load_model_state(model, state, origin)
    except CheckpointError:
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
        ) from None
    if gate and isinstance(ckpt.get("zoom_gate"), dict) and isinstance(model, RAMSTrans):
        model.zoom_gate = ZoomGate.from_state(ckpt["zoom_gate"]["state"])
    return model, cfg, names
