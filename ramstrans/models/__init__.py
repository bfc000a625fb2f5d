"""Model pieces, in data order: backbone -> rollout -> proposal -> RAMSTrans (and a plain timm Classifier, the
teacher); ``build_model`` maps the config."""

from .backbone import ViTBackbone, ViTFeatures, create_vit, make_distilled
from .classifier import Classifier, NetBackbone, create_net
from .gate import ZoomGate, fit_zoom_gate
from .inputs import InputNorm
from .pretrained import load_pretrained
from .proposal import (
    component_boxes,
    component_labels,
    compose_boxes,
    crop_and_zoom,
    largest_component,
    threshold_rollout,
)
from .rams import (
    ZOOM_CRITERIA,
    MultiScaleForward,
    MultiScaleOutput,
    Prediction,
    Proposal,
    RAMSTrans,
    create_model,
    fuse_probs,
    fused_log_probs,
    zoom_confidence,
)
from .rollout import attention_rollout

__all__ = [
    "ViTBackbone",
    "ViTFeatures",
    "create_vit",
    "load_pretrained",
    "component_boxes",
    "compose_boxes",
    "crop_and_zoom",
    "largest_component",
    "threshold_rollout",
    "MultiScaleForward",
    "MultiScaleOutput",
    "Prediction",
    "Proposal",
    "RAMSTrans",
    "create_model",
    "zoom_confidence",
    "attention_rollout",
    "build_model",
    "component_labels",
    "Classifier",
    "NetBackbone",
    "create_net",
    "InputNorm",
    "make_distilled",
    "Model",
    "fused_log_probs",
    "fuse_probs",
    "ZoomGate",
    "fit_zoom_gate",
    "ZOOM_CRITERIA",
]

Model = RAMSTrans | Classifier


def build_model(model_cfg, num_classes: int) -> Model:
    """The only place that maps ``cfg.model`` to RAMSTrans (or, with ``model.type: classifier``, Classifier) keyword
    arguments."""
    kwargs = dict(model_cfg.backbone_kwargs)
    if model_cfg.drop_path_rate:
        kwargs["drop_path_rate"] = model_cfg.drop_path_rate
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
            rollout_rows=model_cfg.rollout_rows,
            pretrained=model_cfg.pretrained,
            download_timeout_s=model_cfg.download_timeout_s,
            dist_token=model_cfg.dist_token,
            eval_head=model_cfg.eval_head,
            attn_window=model_cfg.attn_window,
            ffn=model_cfg.ffn,
            ffn_kernel=model_cfg.ffn_kernel,
            ffn_prefix=model_cfg.ffn_prefix,
            fwt=model_cfg.fwt,
            **kwargs,
        )
    if model_cfg.grad_checkpointing:
        model.backbone.timm_model.set_grad_checkpointing(True)
    if model_cfg.mean is not None or model_cfg.std is not None:
        bb = model.backbone
        try:
            bb.set_normalization(
                model_cfg.mean if model_cfg.mean is not None else bb.mean,
                model_cfg.std if model_cfg.std is not None else bb.std,
            )
        except ValueError as e:
            raise ValueError(f"model.mean / model.std: {e}") from None
    return model
