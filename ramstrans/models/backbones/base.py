"""The backbone contracts: ``Backbone``, what the pipeline (data transforms, losses, teachers, export, the CLI) reads of
a model's backbone whatever family it is, and ``ZoomBackbone``, what RAMS-Trans reads of a backbone it zooms with: its
forward stages, a saliency on a grid of cells, and the grid. ``ViTBackbone`` (timm ViTs and EVA: scale-wise tokens,
attention capture) and ``NetBackbone`` (any timm classifier: a CNN, a Swin; the activation saliency) fulfil both. A new
backbone family is a module whose class does too, with a ``build(model_cfg, num_classes, model=None)`` function, and one
``register_backbone`` line (``ramstrans.registry``) naming the saliencies it gives."""

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from torch import Tensor, nn

__all__ = ["Backbone", "ZoomBackbone", "Features", "CaptureMode", "prefixed"]

CaptureMode = Literal["none", "cls", "all"]  # nothing; what TransMix reads; everything the saliency needs


@dataclass
class Features:
    """What one pass of a backbone produces.

    Attributes:
        tokens: what the heads read: (B, N, D) final-normed tokens of a ViT (N = prefix tokens + gh * gw), or the
            final feature map of a classifier (its timm ``forward_features`` output).
        attentions: rollout only, capture "all": per block (B, N, N) head-mean softmax attention (rows sum to 1),
            detached.
        cls_attention: (B, gh * gw) head-mean attention of the query the head reads (the class token's in the last
            block, or the attention pool's latent query) over the patch keys, detached; None with capture "none" or
            without attention.
        saliency: (B, gh, gw) the map the proposal thresholds (capture "all"): the class token's attention rollout,
            the attention pool's query, the channel-summed activation, or a registered family's own; None with
            capture "none" (and, for the rollout, "cls").
    """

    tokens: Tensor
    attentions: list[Tensor] = field(default_factory=list)
    cls_attention: Tensor | None = None
    saliency: Tensor | None = None

    @property
    def captured_cls(self) -> Tensor:
        """``cls_attention`` of a pass that captured (capture "cls" or "all").

        Raises:
            RuntimeError: the pass captured nothing.
        """
        if self.cls_attention is None:
            raise RuntimeError("this pass captured no attention (capture 'none', or a backbone without attention)")
        return self.cls_attention


class Backbone(Protocol):
    """A model's feature extractor with its input normalisation, as the pipeline sees it."""

    name: str  # the timm architecture

    @property
    def has_dist_token(self) -> bool:
        """A DeiT distillation token beside the class token."""
        ...

    @property
    def num_scales(self) -> int:
        """1 for a classifier; the zoom scales RAMS-Trans runs."""
        ...

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel input mean the weights expect, in [0, 1] pixel units."""
        ...

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel input std."""
        ...

    @property
    def in_chans(self) -> int:
        """Input channels."""
        ...

    @property
    def img_size(self) -> tuple[int, int]:
        """(H, W) input size."""
        ...

    @property
    def num_classes(self) -> int:
        """K."""
        ...

    @property
    def timm_model(self) -> nn.Module:
        """The wrapped timm model (what an export writes)."""
        ...

    def check_input(self, x: Tensor, model: str) -> None:
        """Refuse a batch that is not (B, in_chans, H, W), naming ``model``."""
        ...

    def set_normalization(self, mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float]) -> None:
        """Set the input normalisation (what pretrained weights expect)."""
        ...

    def __call__(self, x: Tensor, scale: int = 0, head: Any = "mean") -> Tensor:
        """(B, C, H, W) normalised images -> (B, K) logits of one scale (its timm forward)."""
        ...

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to the backbone) kept out of weight decay."""
        ...

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups under the backbone's own parameter names."""
        ...


class ZoomBackbone(Backbone, Protocol):
    """A backbone RAMS-Trans zooms with: one pass per scale, a saliency on a (gh, gw) grid of cells of ``cell_size``
    pixels, and heads that read the pass's ``tokens``."""

    saliency: str  # how the proposal's map is made: a name of ``ramstrans.registry.saliencies()``
    training: bool

    @property
    def has_class_token(self) -> bool:
        """Whether each zoom scale has its own class token (otherwise the scales share every parameter)."""
        ...

    @property
    def grid_size(self) -> tuple[int, int]:
        """(gh, gw) cells of the saliency map."""
        ...

    @property
    def cell_size(self) -> tuple[int, int]:
        """(ch, cw) input pixels per saliency cell (the patch, or the feature map's stride)."""
        ...

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches in ``Features.tokens`` and in the captured attention (0 for a feature map)."""
        ...

    def forward_features(self, x: Tensor, scale: int = 0, capture: CaptureMode = "none") -> Features:
        """(B, C, H, W) images of ``scale`` -> Features, with what ``capture`` asks for."""
        ...

    def forward_heads(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """``tokens`` -> (B, K) class logits and (B, K) distillation logits (None without a distillation token)."""
        ...

    def forward_head(self, tokens: Tensor, head: Any = "mean") -> Tensor:
        """``tokens`` -> (B, K) test-time logits (with a distillation token: of ``head``)."""
        ...

    def pre_logits(self, tokens: Tensor) -> Tensor:
        """``tokens`` -> (B, D) pooled features the heads read."""
        ...


def prefixed(rule: str | list, prefix: str) -> str | list:
    """A timm group_matcher rule (a regex, or a list of (regex, suffix)) anchored under ``prefix`` (a module path)."""
    if isinstance(rule, str):
        return f"^{prefix}(?:{rule.lstrip('^')})"
    return [(prefixed(pattern, prefix), suffix) for pattern, suffix in rule]
