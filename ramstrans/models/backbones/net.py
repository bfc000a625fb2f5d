"""Any timm classifier (a CNN such as ``resnet50``, a Swin, a ConvNeXt) as a backbone of the pipeline: its input
normalisation and the facts the pipeline reads (``Backbone``); one scale, no attention, no patch grid."""

from collections.abc import Sequence
from typing import Any, cast

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from ramstrans.errors import UsageError
from ramstrans.models.backbones.create import pair as _pair
from ramstrans.models.backbones.inputs import InputNorm

__all__ = ["NetBackbone", "create_net"]


def create_net(
    name: str, img_size: int | tuple[int, int] | None = None, num_classes: int | None = None, **timm_kwargs: Any
) -> nn.Module:
    """A timm classifier by name; ``img_size`` goes to models that take one (ViTs), not to CNNs.

    Raises:
        ValueError: unknown name, or arguments the model does not take.
    """
    if not timm.is_model(name):
        raise UsageError(f"unknown model '{name}': timm has no model of that name")
    kwargs: dict[str, Any] = dict(timm_kwargs, **({} if num_classes is None else {"num_classes": num_classes}))
    try:
        try:
            size: dict[str, Any] = {} if img_size is None else {"img_size": img_size}
            return timm.create_model(name, pretrained=False, **kwargs, **size)
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
        return int(cast(Any, self.net).num_classes)

    @property
    def timm_model(self) -> nn.Module:
        """The wrapped timm model (what an export writes)."""
        return self.net

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> (B, K) logits."""
        return self.net(x)
