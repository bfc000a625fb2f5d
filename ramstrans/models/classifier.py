"""Any timm classifier (a CNN teacher such as ``resnet50``) behind the interface the trainer, evaluation, prediction and
export use for RAMSTrans: one scale, no attention and no proposal.

``ramstrans train`` with ``model.type: classifier`` trains it on the same data sets, splits, transforms and schedule as
RAMS-Trans; its checkpoint then serves as a distillation teacher (``ramstrans.distill.teacher``).
"""

from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from ramstrans.errors import UsageError
from ramstrans.models.backbones.inputs import InputNorm
from ramstrans.models.backbones.pretrained import load_pretrained
from ramstrans.models.backbones.vit import _pair
from ramstrans.models.rams import MultiScaleOutput, Prediction, _prefixed

__all__ = ["Classifier", "NetBackbone", "create_net"]


def create_net(
    name: str, img_size: int | tuple[int, int] | None = None, num_classes: int | None = None, **timm_kwargs
) -> nn.Module:
    """A timm classifier by name; ``img_size`` goes to models that take one (ViTs), not to CNNs.

    Raises:
        ValueError: unknown name, or arguments the model does not take.
    """
    if not timm.is_model(name):
        raise UsageError(f"unknown model '{name}': timm has no model of that name")
    kwargs = dict(timm_kwargs, **({} if num_classes is None else {"num_classes": num_classes}))
    try:
        try:
            return timm.create_model(
                name, pretrained=False, **kwargs, **({} if img_size is None else {"img_size": img_size})
            )
        except TypeError as e:
            if img_size is None or "img_size" not in str(e):
                raise
            return timm.create_model(name, pretrained=False, **kwargs)  # a CNN: any input size
    except (TypeError, AssertionError, ValueError, RuntimeError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"model '{name}' cannot be built with {timm_kwargs or 'these arguments'}: {detail}") from None


class NetBackbone(InputNorm):
    """A timm classifier with its input normalisation and the facts the pipeline reads.

    Args:
        net: a built timm classifier.
        img_size: the input size (H, W) it is trained and evaluated at.
        in_chans: input channels.
        mean: per-channel input mean; None takes the model's pretrained config (ImageNet's without one).
        std: per-channel input std; None as ``mean``.
    """

    has_dist_token = False
    num_scales = 1

    def __init__(
        self,
        *,
        net: nn.Module,
        img_size: int | tuple[int, int],
        in_chans: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        cfg = getattr(net, "pretrained_cfg", None) or {}
        super().__init__(
            in_chans,
            mean if mean is not None else cfg.get("mean", IMAGENET_DEFAULT_MEAN),
            std if std is not None else cfg.get("std", IMAGENET_DEFAULT_STD),
        )
        self.net = net
        self.name: str = cfg.get("architecture") or type(net).__name__
        self._img_size = _pair(img_size)

    @property
    def img_size(self) -> tuple[int, int]:
        return self._img_size

    @property
    def in_chans(self) -> int:
        return int(self.norm_mean.numel())

    @property
    def num_classes(self) -> int:
        return int(self.net.num_classes)

    @property
    def timm_model(self) -> nn.Module:
        """The wrapped timm model (what an export writes)."""
        return self.net

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> (B, K) logits."""
        return self.net(x)


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

    def __init__(
        self,
        backbone: str | NetBackbone = "resnet50",
        num_classes: int | None = None,
        img_size: int | tuple[int, int] | None = None,
        pretrained: str | None = None,
        download_timeout_s: float = 60.0,
        **backbone_kwargs,
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
        zoom_on: str = "maxprob",
        boxes: bool = True,
    ) -> Prediction:
        """Test-time probabilities (one scale; "auto" is the same; no boxes)."""
        if scales not in (1, "auto"):
            raise UsageError(f"a classifier has 1 scale; cannot fuse {scales}")
        probs = self(x).float().softmax(-1)
        return Prediction(
            probs=probs, boxes=None, zoomed=torch.zeros_like(probs[:, 0], dtype=torch.bool), scale_probs=[probs]
        )

    def no_weight_decay(self) -> set[str]:
        net = self.backbone.net
        return {f"backbone.net.{n}" for n in (net.no_weight_decay() if hasattr(net, "no_weight_decay") else ())}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups of the wrapped model, under this module's parameter names."""
        return {
            name: _prefixed(rule, r"backbone\.net\.")
            for name, rule in self.backbone.net.group_matcher(coarse=coarse).items()
        }
