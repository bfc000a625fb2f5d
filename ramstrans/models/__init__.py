"""Model pieces, in data order: backbone -> rollout -> proposal -> RAMSTrans; ``build_model`` maps the config."""
from .backbone import ViTBackbone, ViTFeatures
from .pretrained import load_pretrained
from .proposal import component_boxes, compose_boxes, crop_and_zoom, largest_component, threshold_rollout
from .rams import MultiScaleForward, MultiScaleOutput, Proposal, RAMSTrans, create_model
from .rollout import attention_rollout


def build_model(model_cfg, num_classes: int) -> RAMSTrans:
    """The only place that maps ``cfg.model`` to RAMSTrans keyword arguments."""
    kwargs = dict(model_cfg.backbone_kwargs)
    if model_cfg.drop_path_rate:
        kwargs["drop_path_rate"] = model_cfg.drop_path_rate
    model = RAMSTrans(backbone=model_cfg.backbone, num_classes=num_classes, img_size=model_cfg.img_size,
                      num_scales=model_cfg.num_scales, alpha=model_cfg.alpha, residual=model_cfg.residual,
                      rollout_rows=model_cfg.rollout_rows, pretrained=model_cfg.pretrained, **kwargs)
    if model_cfg.grad_checkpointing:
        model.backbone.vit.set_grad_checkpointing(True)
    for name in ("mean", "std"):
        value = getattr(model_cfg, name)
        if value is not None:
            if len(value) != model.backbone.in_chans:
                raise ValueError(f"model.{name} needs {model.backbone.in_chans} values, got {value}")
            setattr(model.backbone, name, tuple(value))
    return model
