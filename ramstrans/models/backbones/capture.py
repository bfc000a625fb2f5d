"""Attention capture without giving up fused attention: hooks on ``q_norm`` / ``k_norm`` of timm attention modules.

The hooks are module-level functions; a call that captures arms them with its own state (its list of maps) on the
hooked modules and disarms them when it ends, so a deep copy, an EMA copy, a pickled or a compiled model works and
carries no capture state between calls, and the hooks trace into torch.compile's graph without a break. timm calls
q_norm / k_norm on the (B, heads, N, d) queries and keys just before its fused SDPA kernel, so the attention output
stays fused and the head-mean softmax probabilities are recomputed from the same q, k under ``no_grad``: nothing extra
is kept for backward.

Three kinds of timm module are served: a ViT block's ``Attention``; the rotary ones, EVA's ``EvaAttention`` and
``AttentionRope`` (the ``vit_*_rope_*`` models), which rotate the patch queries and keys by RoPE after q_norm / k_norm
(a pre-hook keeps the call's ``rope`` argument and the capture applies timm's own ``apply_rot_embed_cat`` as the
module does; grouped-query keys are repeated per query head as it does); and the attention pool's
``AttentionPoolLatent`` (a latent query over every token; its map is the pool's attention).
"""

from collections.abc import Iterable
from typing import Any

import torch
from timm.layers import AttentionRope, apply_rot_embed_cat
from timm.models.eva import EvaAttention
from torch import Tensor, nn

from ramstrans.models.backbones.base import CaptureMode

__all__ = ["CaptureMode", "arm", "hook", "keep_rope"]

# The hooked modules own one call's capture state under this attribute (None between calls).
_TAP = "_ramstrans_tap"
ROTARY = (EvaAttention, AttentionRope)  # attention modules that rotate q, k by the ``rope`` argument of their call


def keep_rope(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook of an ``EvaAttention``: keep the call's rotary embedding for the k_norm hook."""
    tap = module.q_norm.__dict__.get(_TAP)
    if tap is not None:
        tap["rope"] = kwargs.get("rope")


def keep_queries(module: nn.Module, args: tuple, q: Tensor) -> None:
    """Forward hook of ``q_norm``: keep this module's (B, heads, Nq, d) queries for the k_norm hook."""
    tap = module.__dict__.get(_TAP)
    if tap is not None:
        tap["q"] = q


def _rotated(x: Tensor, tap: dict[str, Any]) -> Tensor:
    """(B, heads, N, d) queries or keys with the patch tokens rotated by the call's RoPE, as EvaAttention does."""
    rope, npt = tap.get("rope"), tap["num_prefix_tokens"]
    if rope is None:
        return x
    return torch.cat([x[:, :, :npt], apply_rot_embed_cat(x[:, :, npt:], rope.float(), half=tap["half"])], dim=2)


def capture(module: nn.Module, args: tuple, k: Tensor) -> None:
    """Forward hook of ``k_norm``: the module's head-mean softmax(q kᵀ · scale), appended to the call's maps."""
    tap = module.__dict__.get(_TAP)
    if tap is None:
        return
    with torch.no_grad(), torch.autocast(device_type=k.device.type, enabled=False):
        q, k = _rotated(tap.pop("q").float(), tap), _rotated(k.float(), tap)
        if k.shape[1] != q.shape[1]:  # grouped-query attention: query head h reads key head h // groups
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        q = q[:, :, :1] if tap["cls_only"] else q
        # (B, H, Nq, d) @ (B, H, d, N) -> head-mean probabilities (B, Nq, N), masked as the module's attention
        logits = (q @ k.transpose(-2, -1)).mul_(tap["scale"])
        if tap["mask"] is not None:
            logits.masked_fill_(~tap["mask"][: q.shape[2]], float("-inf"))
        tap["maps"].append(logits.softmax(dim=-1).mean(dim=1))


def hook(module: nn.Module) -> None:
    """Install the capture hooks on one timm attention module (and keep its fused kernel: capture never needs the
    unfused path)."""
    attn: Any = module  # timm's attention modules (untyped to mypy)
    attn.fused_attn = True
    attn.q_norm.register_forward_hook(keep_queries)
    attn.k_norm.register_forward_hook(capture)
    if isinstance(attn, ROTARY):  # its patch queries and keys are rotated after k_norm
        attn.register_forward_pre_hook(keep_rope, with_kwargs=True)


def arm(attns: Iterable[nn.Module], maps: list[Tensor] | None, cls_only: bool = False) -> None:
    """Arm the capture hooks of the attention modules for one call (``maps``: that call's own list; ``cls_only``:
    only the first query row), or disarm them (None)."""
    for attn in attns:
        tap = (
            None
            if maps is None
            else {
                "maps": maps,
                "cls_only": cls_only,
                "scale": attn.scale,
                "mask": getattr(attn, "window_mask", None),
                "num_prefix_tokens": attn.num_prefix_tokens if isinstance(attn, ROTARY) else 0,
                "half": bool(getattr(attn, "rotate_half", False)) if isinstance(attn, ROTARY) else False,
            }
        )
        setattr(attn.q_norm, _TAP, tap)
        setattr(attn.k_norm, _TAP, tap)
