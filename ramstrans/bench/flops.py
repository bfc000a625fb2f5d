"""Multiply-accumulates per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` (GMACs: what timm's tables
call FLOPs).

The counter sees matrix products and convolutions, not the element-wise work (norms, softmax, GELU). On the CPU it does
not count the fused attention kernel (``scaled_dot_product_attention``), so the count runs with every timm attention
module's ``fused_attn`` off (as ``TIMM_FUSED_ATTN=0`` would build it): ViT-B/16 then counts 17.56 GMACs at 224 px and
78.49 at 448, timm's hand formula (tested).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "unfused_attention", "model_costs"]


@contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Every module with timm's ``fused_attn`` flag computes attention as explicit matrix products inside the block."""
    modules = [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    before = [m.fused_attn for m in modules]
    for m in modules:
        setattr(m, "fused_attn", False)  # noqa: B010  (an attribute timm's modules define, not a submodule)
    try:
        yield
    finally:
        for m, flag in zip(modules, before):
            setattr(m, "fused_attn", flag)  # noqa: B010


def count_macs(model: nn.Module, fn: Callable[[], Any], images: int) -> float:
    """GMACs per image of ``fn()`` (a call of ``model`` on a batch of ``images`` images), without gradient.

    Args:
        model: whose attention runs unfused while counting.
        fn: the call to count.
        images: images in the batch ``fn`` runs on.
    """
    counter = FlopCounterMode(display=False)
    with unfused_attention(model), torch.no_grad(), counter:
        fn()
    return counter.get_total_flops() / 2 / images / 1e9


def model_costs(model: Any, batch: int = 2) -> dict[str, float]:
    """GMACs per image of a RAMS-Trans (or classifier) at test time, on a random batch of its input size:

    - ``single``: scale 1 alone (the plain forward, no capture);
    - ``capture``: scale 1 with the attention capture, the rollout and the proposal (what adaptive zoom runs first);
    - ``fused``: every scale, the proposal included;
    - ``zoom``: what a zoomed image adds to ``capture`` (``fused - capture``): adaptive zoom costs
      ``capture + share * zoom``.
    """
    x = torch.randn(batch, model.backbone.in_chans, *model.input_size)
    single = count_macs(model, lambda: model(x), batch)
    if model.num_scales == 1:
        return {"single": single, "capture": single, "fused": single, "zoom": 0.0}
    capture = count_macs(model, lambda: model.predict(x, 1, boxes=True), batch)
    fused = count_macs(model, lambda: model.predict(x, model.num_scales, boxes=False), batch)
    return {"single": single, "capture": capture, "fused": fused, "zoom": fused - capture}
