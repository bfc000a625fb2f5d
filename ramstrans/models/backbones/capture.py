"""Attention capture without giving up fused attention: hooks on ``attn.q_norm`` / ``attn.k_norm`` of every block.

The hooks are module-level functions; a call that captures arms them with its own state (its list of maps) on the
hooked modules and disarms them when it ends, so a deep copy, an EMA copy, a pickled or a compiled model works and
carries no capture state between calls, and the hooks trace into torch.compile's graph without a break. timm calls
q_norm / k_norm on the (B, heads, N, d) queries and keys just before its fused SDPA kernel, so the attention output
stays fused and the head-mean softmax probabilities are recomputed from the same q, k under ``no_grad``: nothing extra
is kept for backward.
"""

from collections.abc import Iterable
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

__all__ = ["CaptureMode", "arm", "keep_queries", "capture"]

CaptureMode = Literal["none", "cls", "all"]

# The hooked q_norm / k_norm modules own one call's capture state under this attribute (None between calls).
_TAP = "_ramstrans_tap"


def keep_queries(module: nn.Module, args: tuple, q: Tensor) -> None:
    """Forward hook of ``attn.q_norm``: keep this block's (B, heads, N, d) queries for the k_norm hook."""
    tap = module.__dict__.get(_TAP)
    if tap is not None:
        tap["q"] = q


def capture(module: nn.Module, args: tuple, k: Tensor) -> None:
    """Forward hook of ``attn.k_norm``: the block's head-mean softmax(q kᵀ · scale), appended to the call's maps."""
    tap = module.__dict__.get(_TAP)
    if tap is None:
        return
    q = tap.pop("q")
    q = q[:, :, :1] if tap["cls_only"] else q
    with torch.no_grad(), torch.autocast(device_type=k.device.type, enabled=False):
        # (B, H, Nq, d) @ (B, H, d, N) -> head-mean probabilities (B, Nq, N), masked as the block's attention
        logits = (q.float() @ k.float().transpose(-2, -1)).mul_(tap["scale"])
        if tap["mask"] is not None:
            logits.masked_fill_(~tap["mask"][: q.shape[2]], float("-inf"))
        tap["maps"].append(logits.softmax(dim=-1).mean(dim=1))


def arm(blocks: Iterable[nn.Module], mode: CaptureMode, maps: list[Tensor] | None) -> None:
    """Arm the capture hooks of the blocks for one call (``maps``: that call's own list), or disarm them (None)."""
    chosen = list(blocks)[-1:] if mode == "cls" else list(blocks)
    for attn in (cast(Any, blk).attn for blk in chosen):  # timm's Attention (untyped to mypy)
        tap = (
            None
            if maps is None
            else {
                "maps": maps,
                "cls_only": mode == "cls",
                "scale": attn.scale,
                "mask": getattr(attn, "window_mask", None),
            }
        )
        setattr(attn.q_norm, _TAP, tap)
        setattr(attn.k_norm, _TAP, tap)
