"""ViTBackbone: timm equivalence, scale-wise CLS tokens, attention capture, refusals, grid facts."""

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import tiny_model

from ramstrans.models import ViTBackbone, create_model, create_vit


def _timm_twin(model, **kw):
    """timm's own ViT with the same weights as model.backbone.vit."""
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=5, **kw)
    ref.load_state_dict(model.backbone.vit.state_dict())
    return ref.eval()


def test_forward_equals_timm_forward():
    model = tiny_model().eval()
    x = torch.randn(3, 3, 64, 64)
    ref = _timm_twin(model)
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)


def test_zoom_scale_uses_its_own_cls_token_in_the_same_position():
    model = tiny_model(num_scales=3).eval()
    with torch.no_grad():
        model.backbone.zoom_cls_tokens[1].add_(torch.randn_like(model.backbone.zoom_cls_tokens[1]))
    x = torch.randn(2, 3, 64, 64)
    ref = _timm_twin(model)
    with torch.no_grad():
        ref.cls_token.copy_(model.backbone.zoom_cls_tokens[1])
    out = model.backbone(x, scale=2)
    torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=0)
    assert not torch.allclose(out, model.backbone(x, scale=0))


def test_cls_tokens_start_equal_and_are_separate_parameters():
    bb = tiny_model(num_scales=3).backbone
    names = [n for n, _ in bb.named_parameters() if "cls_token" in n]
    assert names == ["vit.cls_token", "zoom_cls_tokens.0", "zoom_cls_tokens.1"]
    for s in (1, 2):
        assert torch.equal(bb.cls_token(s), bb.cls_token(0))
        assert bb.cls_token(s) is not bb.cls_token(0)


def _reference_attention(model, x):
    """Head-mean probabilities from timm's own unfused path (hook on attn_drop's input)."""
    ref = _timm_twin(model)
    maps = []
    for blk in ref.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda m, args, out: maps.append(args[0].mean(1)))
    ref(x)
    return maps


def test_capture_fires_for_every_block_and_matches_unfused_timm():
    model = tiny_model().eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.backbone.forward_features(x, capture="all")
    ref = _reference_attention(model, x)
    assert len(feats.attentions) == model.backbone.depth == len(ref) == 2
    for got, want in zip(feats.attentions, ref):
        assert got.shape == (2, 17, 17) and not got.requires_grad
        torch.testing.assert_close(got.sum(-1), torch.ones(2, 17))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(feats.cls_attention, ref[-1][:, 0, 1:], atol=1e-6, rtol=1e-5)
    cls_only = model.backbone.forward_features(x, capture="cls")
    assert cls_only.attentions == []
    torch.testing.assert_close(cls_only.cls_attention, ref[-1][:, 0, 1:], atol=1e-6, rtol=1e-5)


def test_fused_attention_runs_with_and_without_capture(monkeypatch):
    model = tiny_model().eval()
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    x = torch.randn(1, 3, 64, 64)
    feats = model.backbone.forward_features(x, capture="none")
    assert len(calls) == 2 and feats.attentions == [] and feats.cls_attention is None
    model.backbone.forward_features(x, capture="all")
    assert len(calls) == 4


def test_capture_keeps_nothing_for_backward():
    model = tiny_model().train()
    x = torch.randn(2, 3, 64, 64)
    feats = model.backbone.forward_features(x, capture="all")
    assert all(a.grad_fn is None for a in feats.attentions)
    model.backbone.forward_head(feats.tokens).sum().backward()
    assert model.backbone.vit.blocks[0].attn.qkv.weight.grad is not None


def test_capture_that_never_fires_is_an_error():
    import copy

    model = tiny_model()
    attn = model.backbone.vit.blocks[1].attn
    attn.forward = copy.deepcopy(attn).forward  # as if timm's Attention stopped calling its own q_norm / k_norm
    with pytest.raises(RuntimeError, match="fired in 1 of 2 modules"):
        model.backbone.forward_features(torch.randn(1, 3, 64, 64), capture="all")


@pytest.mark.parametrize(
    "name,kwargs,reason",
    [
        ("resnet18", {}, "not a timm VisionTransformer"),
        ("vit_tiny_patch16_224", {"reg_tokens": 4, "dist_token": True}, "distilled layout .* no register tokens"),
        ("vit_tiny_patch16_224", {"no_embed_class": True, "dist_token": True}, "no_embed_class"),
        ("vit_tiny_patch16_224", {"dynamic_img_size": True, "dist_token": True}, "dynamic size"),
        ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}, "no class token"),
        ("vit_tiny_patch16_224", {"global_pool": "avg"}, "pools with 'avg'"),
        ("vit_tiny_patch16_224", {"patch_drop_rate": 0.5}, "patch dropout"),
        ("no_such_model", {}, "unknown backbone"),
        ("vit_tiny_patch16_224", {"not_a_kwarg": 1}, "does not accept"),
    ],
)
def test_unsupported_backbones_are_refused(name, kwargs, reason):
    with pytest.raises(ValueError, match=reason):
        create_vit(name, img_size=64, num_classes=3, depth=1, **kwargs) if name.startswith("vit") else create_vit(
            name, img_size=64, num_classes=3, **kwargs
        )


def test_timms_distilled_vit_by_name_is_a_student_and_dist_token_false_refuses_it():
    model = create_model("deit_tiny_distilled_patch16_224", num_classes=3, img_size=64, depth=1, num_scales=2)
    assert model.backbone.has_dist_token and model.backbone.num_prefix_tokens == 2
    assert len(model.backbone.zoom_dist_tokens) == 1
    out = model.forward_multiscale(torch.randn(2, 3, 64, 64))
    assert len(out.dist_logits) == 2 and out.rollout[0].shape == (2, 4, 4)
    vit = timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, depth=1, num_classes=3)
    with pytest.raises(ValueError, match="distillation token but dist_token is False"):
        ViTBackbone(vit=vit, dist_token=False)


def test_a_built_model_that_cannot_serve_is_refused_too():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1, global_pool="avg")
    with pytest.raises(ValueError, match="pools with 'avg'"):
        ViTBackbone(vit=vit, num_scales=2)


def test_grid_patch_and_normalisation_come_from_the_backbone():
    bb = ViTBackbone(vit=create_vit("vit_base_patch16_224", img_size=448, num_classes=200, depth=1))
    assert bb.grid_size == (28, 28) and bb.patch_size == (16, 16) and bb.img_size == (448, 448)
    assert bb.mean == (0.5, 0.5, 0.5) and bb.std == (0.5, 0.5, 0.5)  # Google IN21k weights, not ImageNet's
    bb = ViTBackbone(vit=create_vit("vit_small_patch32_224", img_size=(64, 96), num_classes=3, depth=1))
    assert bb.grid_size == (2, 3) and bb.patch_size == (32, 32)
    bb = ViTBackbone(vit=create_vit("vit_base_patch16_224_miil", img_size=64, num_classes=3, depth=1))
    assert bb.mean == (0.0, 0.0, 0.0) and bb.std == (1.0, 1.0, 1.0)
