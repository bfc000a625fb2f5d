"""The GMAC counter against the hand formula of a ViT, and the cost of glance and focus."""

import pytest
import timm
import torch

from ramstrans import create_model
from ramstrans.bench.flops import count_macs, model_costs


def vit_macs(side: int, patch: int, dim: int, depth: int, classes: int, mlp: int = 4) -> float:
    """Multiply-accumulates of a timm ViT with a class token: the patch embedding, per block the qkv, the attention's
    two products, the projection and the MLP, and the head."""
    patches = (side // patch) ** 2
    n = patches + 1
    embed = patches * dim * 3 * patch * patch
    block = n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim + 2 * n * dim * mlp * dim
    return embed + depth * block + dim * classes


@pytest.mark.parametrize("side", [32, 64])
def test_the_counter_matches_the_hand_formula_with_attention_unfused(side):
    vit = timm.create_model("vit_tiny_patch16_224", img_size=side, num_classes=5, depth=2, embed_dim=32, num_heads=2)
    x = torch.randn(3, 3, side, side)
    assert count_macs(vit, lambda: vit(x), 3) * 1e9 == pytest.approx(vit_macs(side, 16, 32, 2, 5), rel=1e-9)
    assert all(m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn"))  # restored after counting


def test_glance_and_focus_costs_their_two_sizes():
    """A 32-px glance and a 64-px focus from a 128-px source: the single pass is the glance's ViT; the zoom adds the
    focus pass and its last block's class-token query row (17 keys x 32 dims)."""
    kw = dict(backbone="vit_tiny_patch16_224", num_classes=5, img_size=64, depth=2, embed_dim=32, num_heads=2)
    gf = create_model(**kw, scale_sizes=[32, 64], zoom_source="source", source_size=128).eval()
    costs = model_costs(gf)
    assert costs["single"] * 1e9 == pytest.approx(vit_macs(32, 16, 32, 2, 5), rel=1e-9)
    # the capture recomputes every block's attention logits for the rollout, and the rollout multiplies the maps
    assert costs["capture"] > costs["single"]
    assert costs["zoom"] * 1e9 == pytest.approx(vit_macs(64, 16, 32, 2, 5) + 17 * 32, rel=1e-9)
    plain = model_costs(create_model(**kw, num_scales=1).eval())
    assert plain["fused"] == plain["single"] and plain["zoom"] == 0.0
