"""Global + sliding-window attention for the distilled transformer (spec §4): an option of the timm ViT, not a copy.

The class and distillation tokens are global (they attend to every token and every token attends to them); a patch
token attends to the prefix tokens and to the patches within Chebyshev distance r on the patch grid ((2r + 1)² at
most), Vision Longformer's exact mode. ``WindowAttention`` is a subclass of timm's ``Attention`` given to timm as
``attn_layer`` (a class: timm builds it); ``set_window`` gives it a non-persistent boolean mask buffer built from the
backbone's grid, which timm's own forward passes to its attention kernel, so ``vit.blocks(x)``, gradient checkpointing
and export keep working. The backbone's attention capture applies the same mask.
"""

from typing import Any

import torch
from timm.layers import Attention
from torch import Tensor

__all__ = ["WindowAttention", "window_mask"]


def window_mask(
    grid_size: tuple[int, int], num_prefix_tokens: int, radius: int, device: torch.device | None = None
) -> Tensor:
    """(N, N) boolean mask, True where query row i may attend to key column j; N = prefix + gh * gw.

    Prefix rows and columns are all True; patch (y, x) sees patch (y', x') iff max(|y - y'|, |x - x'|) <= radius.
    """
    gh, gw = grid_size
    ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near = ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)
    n = num_prefix_tokens + gh * gw
    mask = torch.ones(n, n, dtype=torch.bool, device=device)
    mask[num_prefix_tokens:, num_prefix_tokens:] = near
    return mask


class WindowAttention(Attention):
    """timm's Attention with an optional fixed window mask (``window_mask``, None = global attention)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("window_mask", None, persistent=False)
        self.radius = 0

    def set_window(self, grid_size: tuple[int, int], num_prefix_tokens: int, radius: int) -> None:
        """Attend within ``radius`` patches (0: globally, no mask)."""
        self.radius = int(radius)
        self.window_mask = (
            window_mask(grid_size, num_prefix_tokens, radius, self.qkv.weight.device) if radius > 0 else None
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """(B, N, D) -> (B, N, D); a given ``attn_mask`` (boolean) is combined with the window."""
        mask = self.window_mask
        if mask is not None and attn_mask is not None:
            mask = mask & attn_mask
        return super().forward(x, attn_mask=attn_mask if mask is None else mask, is_causal=is_causal)
