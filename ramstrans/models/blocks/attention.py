"""Global + sliding-window attention for the distilled transformer (spec §4): an option of the timm ViT, not a copy.

The class and distillation tokens are global (they attend to every token and every token attends to them); a patch
token attends to the prefix tokens and to the patches within Chebyshev distance r on the patch grid ((2r + 1)² at
most), Vision Longformer's exact mode. ``WindowAttention`` is a subclass of timm's ``Attention`` given to timm as
``attn_layer`` with the backbone's grid, prefix-token count and radius bound (``window_attention_layer``;
``create_vit`` computes them before timm builds the model), so it is complete when built: a non-persistent boolean
mask buffer made
from the grid, which timm's own forward passes to its attention kernel, so ``vit.blocks(x)``, gradient checkpointing
and export keep working. The backbone's attention capture applies the same mask.
"""

from typing import Any

import torch
from timm.layers import Attention
from torch import Tensor

__all__ = ["WindowAttention", "window_attention_layer", "window_mask"]


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
    """timm's Attention with an optional fixed window mask (``window_mask``, None = global attention).

    Args:
        *args: timm's ``Attention`` arguments (timm passes them).
        grid_size: the backbone's (gh, gw) patch grid.
        num_prefix_tokens: tokens before the patches (the class token, and the distillation token when there is one).
        radius: attend within ``radius`` patches (0: globally, no mask).
        **kwargs: timm's ``Attention`` keyword arguments.
    """

    def __init__(
        self, *args: Any, grid_size: tuple[int, int], num_prefix_tokens: int, radius: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("window_mask", None, persistent=False)
        self.set_window(grid_size, num_prefix_tokens, radius)

    def set_window(self, grid_size: tuple[int, int], num_prefix_tokens: int, radius: int) -> None:
        """Re-size the mask: attend within ``radius`` patches (0: globally, no mask).

        Kept for one path only: ``ViTBackbone`` given a model built elsewhere, whose blocks were built for another
        layout than the backbone's final one (``make_distilled`` adds a distillation token to a built plain ViT, in
        place, after its blocks exist; or another grid or radius). A model built by ``create_vit`` is built sized.
        """
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_prefix_tokens, self.radius = int(num_prefix_tokens), int(radius)
        self.window_mask = (
            window_mask(grid_size, num_prefix_tokens, radius, self.qkv.weight.device) if radius > 0 else None
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """(B, N, D) -> (B, N, D); a given ``attn_mask`` (boolean) is combined with the window."""
        mask = self.window_mask
        if mask is not None and attn_mask is not None:
            mask = mask & attn_mask
        return super().forward(x, attn_mask=attn_mask if mask is None else mask, is_causal=is_causal)


def window_attention_layer(grid_size: tuple[int, int], num_prefix_tokens: int, radius: int) -> type[WindowAttention]:
    """timm's ``attn_layer`` for this layout: ``WindowAttention`` with its sizing bound.

    Not a ``functools.partial`` (as the ``ConvMlp`` one is): timm asks ``issubclass`` of its attention layer, so this
    is a subclass whose construction returns a plain ``WindowAttention`` built with the layout (its ``__init__`` is not
    run again: the instance is not of the subclass), so the blocks hold the module class itself, which pickles.
    """

    def build(cls: type, *args: Any, **kwargs: Any) -> WindowAttention:
        return WindowAttention(*args, grid_size=grid_size, num_prefix_tokens=num_prefix_tokens, radius=radius, **kwargs)

    # timm's _create_attn takes an attention class (it asks issubclass) and passes only its own keywords: it offers no
    # constructor that binds the layout, so a subclass's __new__ does.
    return type("SizedWindowAttention", (WindowAttention,), {"__new__": build, "__module__": __name__})
