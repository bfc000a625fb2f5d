"""A DeiT student on timm's own distilled ViT (``VisionTransformerDistilled``: the class token at 0, the distillation
token at 1, both with a position embedding, each read by its own head): a plain ViT converted in place, and the
choice of test-time head."""

import copy
from typing import Any, Literal, cast

import torch
from timm.layers import trunc_normal_
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ramstrans.errors import UsageError

__all__ = ["Head", "HEADS", "select_head", "with_dist_position", "make_distilled"]

Head = Literal["mean", "cls", "dist"]
HEADS: tuple[Head, ...] = ("mean", "cls", "dist")


def select_head(cls: Tensor, dist: Tensor, head: Head) -> Tensor:
    """(B, K) logits of ``head``: the class head's, the distillation head's, or their mean (timm's and DeiT's)."""
    if head not in HEADS:
        raise UsageError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    return cls if head == "cls" else dist if head == "dist" else (cls + dist) / 2


def with_dist_position(pos: Tensor) -> Tensor:
    """(1, 1 + n, D) plain position embedding -> (1, 2 + n, D): the distillation row copies the class token's."""
    return torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)


def make_distilled(vit: VisionTransformer) -> VisionTransformerDistilled:
    """timm's distilled layout on a built plain ViT, in place (timm's class, so timm's forward, loading and export
    apply): the distillation token and its position embedding start as copies of the class token's, ``head_dist``
    fresh (timm's init); ``set_distilled_training(True)``, so timm's forward in train mode returns both heads.

    Args:
        vit: a plain timm VisionTransformer with one class token.

    Returns:
        The same module, now a VisionTransformerDistilled.
    """
    if isinstance(vit, VisionTransformerDistilled):
        vit.set_distilled_training(True)
        return vit
    v = cast(Any, vit)  # timm's attributes, untyped to mypy
    pos = v.pos_embed.detach()
    # timm builds its distilled ViT only through the deit_*_distilled_* entry points: no constructor takes another
    # ViT's arguments, so the built model becomes one in place (its blocks, weights and arguments kept).
    v.__class__ = VisionTransformerDistilled
    v.num_prefix_tokens = 2
    v.dist_token = nn.Parameter(v.cls_token.detach().clone())
    v.pos_embed = nn.Parameter(with_dist_position(pos).clone())
    if isinstance(v.head, nn.Linear):
        v.head_dist = nn.Linear(v.head.in_features, v.head.out_features).to(v.head.weight)
        trunc_normal_(v.head_dist.weight, std=0.02)
        nn.init.zeros_(v.head_dist.bias)
    else:
        v.head_dist = copy.deepcopy(v.head)
    v.weight_init_mode = "reset"
    v.set_distilled_training(True)
    return cast(VisionTransformerDistilled, vit)
