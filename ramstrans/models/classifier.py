"""Any timm classifier (a CNN teacher such as ``resnet50``) behind the interface the trainer, evaluation, prediction and
export use for RAMSTrans: one scale, no attention and no proposal.

``ramstrans train`` with ``model.type: classifier`` trains it on the same data sets, splits, transforms and schedule as
RAMS-Trans; its checkpoint then serves as a distillation teacher (``ramstrans.distill.teacher``).
"""

from typing import Any

import torch
from torch import Tensor, nn

from ramstrans.errors import UsageError
from ramstrans.models.backbones.base import prefixed
from ramstrans.models.backbones.net import NetBackbone, create_net
from ramstrans.models.backbones.pretrained import load_pretrained
from ramstrans.models.rams import MultiScaleOutput, Prediction, ZoomCriterion

__all__ = ["Classifier", "NetBackbone", "create_net"]


class Classifier(nn.Module):
    """A timm classifier as a one-scale model of the pipeline.

    Args:
        backbone: a timm model name (any classifier) or a built ``NetBackbone``.
        num_classes: number of classes K; None keeps the model's own.
        img_size: input size (int or (H, W)); None: 224.
        pretrained: optional weights (a timm state dict file, a ramstrans checkpoint, shipped weights or a timm tag;
            see ``load_pretrained``).
        download_timeout_s: the longest a download of hub weights may take in all.
        **backbone_kwargs: passed on to ``timm.create_model`` when ``backbone`` is a name.
    """

    num_scales = 1
    eval_head = "cls"
    zoom_gate = None  # nothing to zoom
    temperature = 1.0  # its test-time logits are divided by it (eval --calibrate fits it)

    def __init__(
        self,
        backbone: str | NetBackbone = "resnet50",
        num_classes: int | None = None,
        img_size: int | tuple[int, int] | None = None,
        pretrained: str | None = None,
        download_timeout_s: float = 60.0,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            net = create_net(backbone, img_size, num_classes, **backbone_kwargs)
            backbone = NetBackbone(net=net, img_size=img_size or 224, in_chans=int(backbone_kwargs.get("in_chans", 3)))
        elif backbone_kwargs or img_size is not None:
            raise UsageError("img_size and timm keyword arguments apply to a model given by name")
        self.backbone = backbone
        self.num_classes = backbone.num_classes
        if pretrained:
            load_pretrained(backbone, pretrained, download_timeout_s)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> (B, K) logits: timm's own forward."""
        self.backbone.check_input(x, "the classifier")
        return self.backbone(x)

    def forward_multiscale(self, x: Tensor, num_scales: int | None = None) -> MultiScaleOutput:
        """The training output: one scale's logits, no boxes, no attention."""
        if num_scales not in (None, 1):
            raise UsageError(f"a classifier has 1 scale; cannot run {num_scales}")
        return MultiScaleOutput(logits=[self(x)], boxes=[], rollout=[], cls_attention=[])

    @torch.no_grad()
    def predict(
        self,
        x: Tensor,
        scales: int | str = 1,
        zoom_threshold: float = 0.5,
        zoom_on: ZoomCriterion = "maxprob",
        boxes: bool = True,
    ) -> Prediction:
        """Test-time probabilities (one scale; "auto" is the same; no boxes)."""
        if scales not in (1, "auto"):
            raise UsageError(f"a classifier has 1 scale; cannot fuse {scales}")
        probs = (self(x).float() / self.temperature).softmax(-1)
        return Prediction(
            probs=probs, boxes=None, zoomed=torch.zeros_like(probs[:, 0], dtype=torch.bool), scale_probs=[probs]
        )

    def no_weight_decay(self) -> set[str]:
        """The timm model's own exclusions from weight decay, under this module's parameter names."""
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups of the wrapped model, under this module's parameter names."""
        return {name: prefixed(rule, r"backbone\.") for name, rule in self.backbone.group_matcher(coarse).items()}
