"""The backbone contract: what the pipeline (data transforms, losses, teachers, export, the CLI) reads of a model's
backbone, whatever family it is. ``ViTBackbone`` (timm ViTs: scale-wise tokens, attention capture, a patch grid) and
``NetBackbone`` (any timm classifier) fulfil it; a new backbone family is a module in this folder that does too."""

from typing import Protocol

from torch import Tensor, nn

__all__ = ["Backbone"]


class Backbone(Protocol):
    """A model's feature extractor with its input normalisation, as the pipeline sees it."""

    name: str  # the timm architecture
    has_dist_token: bool  # a DeiT distillation token beside the class token
    num_scales: int  # 1 for a classifier; the zoom scales of a ViT

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
