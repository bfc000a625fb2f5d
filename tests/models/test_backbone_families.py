"""ViT layouts beyond the plain one: register tokens (DINOv2-reg), no_embed_class (DeiT-III) and a dynamic image
size, each on a tiny randomly initialised instance timm builds locally: timm's own forward bit for bit, the captured
attention against a float64 recomputation, registers outside the saliency, a two-scale ONNX round trip, and the
layouts still refused."""

import numpy as np
import pytest
import torch

from ramstrans.errors import UsageError
from ramstrans.models import attention_rollout, create_model

TINY = dict(depth=2, embed_dim=32, num_heads=2)
FAMILIES = {
    "registers (DINOv2-reg)": ("vit_small_patch14_reg4_dinov2", {}, 56),
    "no_embed_class (DeiT-III)": ("deit3_small_patch16_224", {}, 64),
    "dynamic_img_size": ("vit_tiny_patch16_224", {"dynamic_img_size": True}, 64),
}


def _model(family, **kw):
    name, extra, size = FAMILIES[family]
    return create_model(backbone=name, img_size=size, num_classes=5, **TINY, **extra, **kw).eval(), size


@pytest.mark.parametrize("family", FAMILIES)
def test_single_scale_is_timms_own_forward_bit_for_bit(family):
    model, size = _model(family)
    with torch.no_grad():
        model.backbone.vit.pos_embed.normal_()  # timm starts some at zero: make the position embedding count
        x = torch.randn(3, 3, size, size)
        assert torch.equal(model(x), model.backbone.vit(x))
        zoomed = model.backbone(x, scale=1)
        model.backbone.vit.cls_token.copy_(model.backbone.zoom_cls_tokens[0].detach() + 1.0)
        assert not torch.equal(zoomed, model.backbone(x, scale=0))  # the zoom scale has its own class token


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_attention_equals_a_float64_recomputation(family):
    model, size = _model(family)
    x = torch.randn(2, 3, size, size)
    inputs = []
    hooks = [blk.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for blk in model.backbone.vit.blocks]
    with torch.no_grad():
        feats = model.backbone.forward_features(x, capture="all")
    for h in hooks:
        h.remove()
    prefix = model.backbone.num_prefix_tokens
    assert prefix == 1 + model.backbone.vit.num_reg_tokens
    for blk, tokens, got in zip(model.backbone.vit.blocks, inputs, feats.attentions):
        attn = blk.attn.double()
        B, N, D = tokens.shape
        qkv = attn.qkv(tokens.double()).reshape(B, N, 3, attn.num_heads, D // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        want = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1).mean(1)
        assert got.shape == (B, N, N)
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_registers_are_never_in_the_saliency_but_share_every_rows_normalisation():
    # 1 class token, 4 registers, a 2 x 2 grid; the class row gives half its attention to register 1 and half to
    # patch 3; every other row attends to itself. With residual 1: u = e_cls / 2, v = u A + u, so the class token
    # keeps 0.5, register 1 gets 0.25 and patch 3 gets 0.25: the saliency is 0.25 at patch 3 and 0 elsewhere.
    n = 1 + 4 + 4
    attn = torch.eye(n, dtype=torch.float64)[None]
    attn[0, 0] = 0.0
    attn[0, 0, 1], attn[0, 0, 5 + 3] = 0.5, 0.5
    g = attention_rollout([attn], (2, 2), 1.0, "cls", num_prefix_tokens=5)
    assert torch.equal(g, torch.tensor([[[0.0, 0.0], [0.0, 0.25]]], dtype=torch.float64))


def test_a_register_model_exports_its_fused_two_scales_to_onnx(tmp_path):
    import onnxruntime as ort

    from ramstrans.export.onnx import write_onnx

    model, size = _model("registers (DINOv2-reg)")
    with torch.no_grad():
        for blk in model.backbone.vit.blocks:  # sharpen attention: a real box, not the whole image
            blk.attn.qkv.weight[: 2 * 32].mul_(8.0)
    x = torch.randn(3, 3, size, size)
    path = write_onnx(model, tmp_path / "reg.onnx", 2, {"class_names": "[]"})
    logits, probs, boxes = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()}
    )
    with torch.no_grad():
        want = model.predict(x, 2)
    np.testing.assert_allclose(probs, want.probs.numpy(), atol=1e-5, rtol=0)
    assert np.array_equal(boxes, want.boxes.numpy())


@pytest.mark.parametrize(
    "name,extra,fragment",
    [
        ("vit_base_patch16_reg4_gap_256", {}, "it has no class token"),
        ("vit_small_patch14_reg4_dinov2", {"dist_token": True}, "DeiT's distilled layout (model.dist_token) has no"),
    ],
)
def test_layouts_still_refused_name_what_is_missing(name, extra, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        create_model(backbone=name, img_size=56 if "14" in name else 64, num_classes=5, **TINY, **extra)
