"""Any timm classifier (a CNN teacher such as ``resnet50``) behind the interface the trainer, evaluation, prediction and
export use for RAMSTrans: one scale, no attention and no proposal.

``ramstrans train`` with ``model.type: classifier`` trains it on the same data sets, splits, transforms and schedule as
RAMS-Trans; its checkpoint then serves as a distillation teacher (``ramstrans.distill.teacher``).
"""

from typing import Any

import torch
from torch import Tensor, nn

from ramstrans.errors import UsageError
from ramstrans.models.backbones.base import Backbone, prefixed
from ramstrans.models.outputs import MultiScaleOutput, Prediction
from ramstrans.models.rams import check_backbone
from ramstrans.models.testtime import ZoomCriterion

__all__ = ["Classifier"]


class Classifier(nn.Module):
    """A timm classifier as a one-scale model of the pipeline.

    Args:
        backbone: a built ``NetBackbone`` (``build_backbone`` of a ``model.type: classifier`` config builds one by
            name).

    Attributes:
        temperature: () buffer the test-time logits are divided by (``eval --calibrate`` fits it).
    """

    num_scales = 1
    eval_head = "cls"
    zoom_gate = None  # nothing to zoom
    zoom_passes = 0
    temperature: Tensor

    def __init__(self, *, backbone: Backbone) -> None:
        super().__init__()
        check_backbone(backbone, "Classifier")
        self.backbone = backbone
        self.num_classes = backbone.num_classes
        self.register_buffer("temperature", torch.ones((), dtype=torch.float64), persistent=False)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the batches the model takes: its backbone's input."""
        return self.backbone.img_size

    def set_temperature(self, temperature: float) -> None:
        """Divide the test-time logits by ``temperature`` (> 0) from now on."""
        if not temperature > 0:
            raise UsageError(f"the temperature must be > 0, got {temperature!r}")
        self.temperature.fill_(float(temperature))

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
