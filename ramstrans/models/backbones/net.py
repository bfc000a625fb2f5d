"""Any timm classifier (a CNN such as ``resnet50``, a Swin, a ConvNeXt) as a backbone of the pipeline: its input
normalisation and the facts the pipeline reads (``Backbone``), and, for RAMS-Trans, the activation saliency
(``ZoomBackbone``).

The activation saliency is SCDA's (Wei et al., 2017), the map RAMS-Trans's proposal was drawn from: the last feature
map summed over channels. SCDA sums post-ReLU activations; a ConvNeXt's or a Swin's last stage is a residual stream with
both signs, so the map here sums the channels' magnitudes, Σ_c |f_c| (identical to SCDA's on a ResNet, whose last
stage ends in a ReLU). It is read from timm's ``forward_intermediates`` before the final norm (a LayerNorm after the
last stage would make every position's magnitude alike), in the same pass that gives the heads' features. The cells
are the map's stride (``feature_info``), e.g. 32 pixels for a ResNet, ConvNeXt or Swin. There is no class token: every
scale shares every parameter, and only its input differs. ``build_net`` is the family's entry in
``ramstrans.registry.BACKBONES`` (and builds a classifier's backbone, ``model.type: classifier``).
"""

from collections.abc import Sequence
from typing import Any, cast

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from ramstrans.config import ModelConfig
from ramstrans.errors import UsageError
from ramstrans.models.backbones.base import CaptureMode, Features, prefixed
from ramstrans.models.backbones.create import pair as _pair
from ramstrans.models.backbones.create import timm_arguments
from ramstrans.models.backbones.inputs import InputNorm
from ramstrans.models.backbones.pretrained import load_net_weights

__all__ = ["NetBackbone", "create_net", "build_net"]

_VIT_ONLY = {"dist_token": False, "attn_window": 0, "ffn": "mlp", "fwt": "off"}  # options a classifier cannot take


def create_net(
    name: str, img_size: int | tuple[int, int] | None = None, num_classes: int | None = None, **timm_kwargs: Any
) -> nn.Module:
    """A timm classifier by name; ``img_size`` goes to models that take one (ViTs), not to CNNs.

    Raises:
        UsageError: unknown name, or arguments the model does not take.
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
        raise UsageError(f"model '{name}' cannot be built with {timm_kwargs or 'these arguments'}: {detail}") from e


class NetBackbone(InputNorm):
    """A timm classifier with its input normalisation, the facts the pipeline reads, and the activation saliency.

    Args:
        net: a built timm classifier.
        img_size: the input size (H, W) it is trained and evaluated at.
        in_chans: input channels.
        mean: per-channel input mean; None takes the model's pretrained config (ImageNet's without one).
        std: per-channel input std; None as ``mean``.
        num_scales: the scales RAMS-Trans runs it at (1 for a classifier); they share every parameter.
    """

    has_dist_token = False
    has_class_token = False
    num_prefix_tokens = 0
    saliency = "activation"

    def __init__(
        self,
        *,
        net: nn.Module,
        img_size: int | tuple[int, int],
        in_chans: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        num_scales: int = 1,
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
        self.num_scales = num_scales

    def check_zoomable(self) -> None:
        """Refuse, for RAMS-Trans, a model without timm's feature API or an input size that is not a whole number of
        the saliency's cells (a classifier needs neither)."""
        info = getattr(self.net, "feature_info", None)
        if not info or not hasattr(self.net, "forward_intermediates"):
            raise UsageError(
                f"backbone '{self.name}' is not supported with model.saliency activation: timm gives it no "
                "forward_intermediates / feature_info"
            )
        for side, cell in zip(self._img_size, self.cell_size):
            if side % cell:
                raise UsageError(
                    f"model.img_size {side} is not a multiple of the {cell}-pixel stride of '{self.name}''s last "
                    f"feature map: use {side - side % cell or cell} or {side - side % cell + cell}"
                )

    def check_size(self, size: tuple[int, int]) -> None:
        """Serve (H, W) inputs besides ``img_size`` (a scale of ``model.scale_sizes``): whole cells of the last
        feature map, and a model that runs at that size (one trial pass; a Swin's windows may refuse it).

        Raises:
            UsageError: the sentence naming ``model.scale_sizes`` and why.
        """
        for side, cell in zip(size, self.cell_size):
            if side % cell:
                raise UsageError(
                    f"model.scale_sizes {side} is not a multiple of the {cell}-pixel stride of '{self.name}''s last "
                    f"feature map: use {side - side % cell or cell} or {side - side % cell + cell}"
                )
        was_training = self.net.training
        try:
            with torch.no_grad():  # in eval mode: a trial pass must not move the norms' running statistics
                cast(Any, self.net.eval()).forward_features(torch.zeros(1, self.in_chans, *size))
        except (RuntimeError, AssertionError, ValueError) as e:
            raise UsageError(
                f"model.scale_sizes {size[0]}: '{self.name}' cannot run at another size than model.img_size "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from e
        finally:
            self.net.train(was_training)

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

    @property
    def cell_size(self) -> tuple[int, int]:
        """The last feature map's stride in pixels."""
        reduction = int(cast(Any, self.net).feature_info[-1]["reduction"])
        return reduction, reduction

    @property
    def grid_size(self) -> tuple[int, int]:
        """(gh, gw) cells of the last feature map at ``img_size``."""
        return self._img_size[0] // self.cell_size[0], self._img_size[1] // self.cell_size[1]

    def forward_features(self, x: Tensor, scale: int = 0, capture: CaptureMode = "none") -> Features:
        """(B, C, H, W) normalised images -> Features: timm's final features, and with a capture the (B, gh, gw)
        activation saliency of the last stage (``scale`` selects nothing: the scales share every parameter). Capture
        "cls" (what TransMix reads) gives nothing more: there is no attention."""
        net = cast(Any, self.net)
        if capture != "all":
            return Features(tokens=net.forward_features(x))
        final, (last,) = net.forward_intermediates(x, indices=1, norm=False, output_fmt="NCHW")
        return Features(tokens=final, saliency=last.detach().float().abs().sum(dim=1))

    def forward_heads(self, tokens: Tensor) -> tuple[Tensor, None]:
        """Final features -> (B, K) logits; there is no distillation head."""
        return cast(Any, self.net).forward_head(tokens), None

    def forward_head(self, tokens: Tensor, head: Any = "mean") -> Tensor:
        """Final features -> (B, K) logits (``head`` is for distilled ViTs; there is one head)."""
        return self.forward_heads(tokens)[0]

    def pre_logits(self, tokens: Tensor) -> Tensor:
        """Final features -> (B, D) pooled features the head reads."""
        return cast(Any, self.net).forward_head(tokens, pre_logits=True)

    def no_weight_decay(self) -> set[str]:
        """The timm model's own exclusions, under this module's names."""
        own = getattr(self.net, "no_weight_decay", None)
        return {f"net.{n}" for n in (own() if callable(own) else ())}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups of the model under this module's parameter names."""
        groups = cast(Any, self.net).group_matcher(coarse=coarse)
        return {name: prefixed(rule, r"net\.") for name, rule in groups.items()}

    def forward(self, x: Tensor, scale: int = 0, head: Any = "mean") -> Tensor:
        """(B, C, H, W) normalised images -> (B, K) logits."""
        return self.net(x)

    def load_pretrained(self, source: str, download_timeout_s: float = 60.0) -> None:
        """Initialise from pretrained weights (``pretrained.load_net_weights``: a file, shipped weights or a timm
        tag)."""
        load_net_weights(self, source, download_timeout_s)


def build_net(cfg: ModelConfig, num_classes: int | None, model: nn.Module | None = None) -> NetBackbone:
    """The backbone of a model config that runs any timm classifier as it is: RAMS-Trans's with ``model.saliency:
    activation`` (its entry in ``ramstrans.registry.BACKBONES``), or a classifier's (``model.type: classifier``).

    Args:
        cfg: the model section (the timm name, ``img_size``, ``backbone_kwargs``, the scales, the pretrained weights).
        num_classes: K; None keeps the model's own.
        model: a built timm classifier to serve instead of one by name (an export folder's); its weights are kept.

    Raises:
        UsageError: a ViT-only option, a name timm does not know, an input size that is not a whole number of the
            map's cells, or pretrained weights that do not fit.
    """
    zoom = cfg.type != "classifier"
    for key, default in _VIT_ONLY.items():
        if zoom and getattr(cfg, key) != default:
            raise UsageError(f"model.{key} needs a ViT backbone; saliency 'activation' runs any timm model as it is")
    timm_kwargs = timm_arguments(cfg)
    net = model if model is not None else create_net(cfg.backbone, cfg.img_size, num_classes, **timm_kwargs)
    in_chans = int(timm_kwargs.get("in_chans", 3))
    backbone = NetBackbone(net=net, img_size=cfg.img_size, in_chans=in_chans, num_scales=cfg.num_scales if zoom else 1)
    if zoom:
        backbone.check_zoomable()
    if model is None and cfg.pretrained:
        backbone.load_pretrained(cfg.pretrained, cfg.download_timeout_s)
    return backbone
