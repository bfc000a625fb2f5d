"""Attention rollout (Abnar & Zuidema, 2020) as RAMS-Trans uses it, computed as vector x matrix products.

With A_l the head-mean attention of block l and Â_l = rownorm(A_l + χI), the rollout is R = Â_L ... Â_1 and the
saliency of the patches is one row of R (the CLS query row) or the mean of its rows (the official code). Instead of
the N x N chain (L matrix products, ~7% of a ViT-B/16 forward at 448 px) we carry a row vector from the last block
backwards: v <- v Â_l, each step O(N^2).
"""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ramstrans.errors import UsageError

__all__ = ["attention_rollout", "RolloutRows"]

RolloutRows = Literal["cls", "mean"]


def attention_rollout(
    attentions: Sequence[Tensor],
    grid_size: tuple[int, int],
    residual: float = 1.0,
    rows: RolloutRows = "cls",
    num_prefix_tokens: int = 1,
) -> Tensor:
    """Patch saliency g from per-block attention maps.

    Args:
        attentions: per block, first to last, (B, N, N) head-mean attention (query rows, key columns).
        grid_size: (gh, gw) with gh * gw = N - num_prefix_tokens.
        residual: χ, the weight of the identity added for the residual path.
        rows: "cls" takes the CLS query row of the rollout, "mean" the mean over all query rows.
        num_prefix_tokens: tokens before the patches (1: the CLS token).

    Returns:
        (B, gh, gw) saliency of every patch (non-negative; not normalised).
    """
    if not attentions:
        raise UsageError("attention_rollout needs at least one attention map")
    if rows not in ("cls", "mean"):
        raise UsageError(f"rollout rows must be 'cls' or 'mean', got {rows!r}")
    B, N, _ = attentions[-1].shape
    gh, gw = grid_size
    if gh * gw != N - num_prefix_tokens:
        raise UsageError(f"grid {gh}x{gw} does not match {N} tokens with {num_prefix_tokens} prefix token(s)")
    last = attentions[-1]
    if rows == "cls":
        v = torch.zeros(B, N, dtype=last.dtype, device=last.device)
        v[:, 0] = 1.0
    else:
        v = torch.full((B, N), 1.0 / N, dtype=last.dtype, device=last.device)
    for attn in reversed(attentions):
        # v Â = (v / d) (A + χI) with d the row sums of A + χI: no N x N temporary.
        u = v / (attn.sum(dim=-1) + residual)
        v = torch.bmm(u.unsqueeze(1), attn).squeeze(1) + residual * u
    return v[:, num_prefix_tokens:].reshape(B, gh, gw)
