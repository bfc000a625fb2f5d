"""RAMSTrans: structure of every output, gradient flow per scale, recursion geometry, bad input."""

import pytest
import torch
from conftest import tiny_model

from ramstrans.models import attention_rollout, component_boxes, crop_and_zoom, largest_component, threshold_rollout


def _sharpened(**kw):
    """A tiny model whose attention is peaked, so that proposals are real boxes, not the full image."""
    model = tiny_model(**kw)
    with torch.no_grad():
        for blk in model.backbone.vit.blocks:
            blk.attn.qkv.weight[: 2 * 192].mul_(6.0)  # queries and keys
    return model


@pytest.mark.parametrize("num_scales", [1, 2, 3])
def test_forward_multiscale_structure(num_scales):
    model = _sharpened(num_scales=num_scales).eval()
    x = torch.randn(4, 3, 64, 64)
    out = model.forward_multiscale(x)
    assert len(out.logits) == len(out.cls_attention) == num_scales
    assert len(out.boxes) == len(out.rollout) == num_scales - 1
    assert all(lg.shape == (4, 5) for lg in out.logits)
    assert all(a.shape == (4, 16) for a in out.cls_attention)
    assert all(r.shape == (4, 4, 4) for r in out.rollout)
    assert all(b.shape == (4, 4) for b in out.boxes)
    torch.testing.assert_close(out.logits[0], model(x), atol=1e-5, rtol=0)


def test_scale2_sees_the_zoomed_proposal_of_scale1_and_recursion_nests():
    model = _sharpened(num_scales=3).eval()
    x = torch.randn(6, 3, 64, 64)
    out = model.forward_multiscale(x)
    bb = model.backbone
    feats = bb.forward_features(x, capture="all")
    comp = largest_component(threshold_rollout(attention_rollout(feats.attentions, (4, 4)), 1.3))
    box1 = component_boxes(comp, (16, 16), (64, 64))
    assert (box1 != torch.tensor([0.0, 0.0, 64.0, 64.0])).any(), "test needs at least one real proposal"
    torch.testing.assert_close(out.boxes[0], box1)
    torch.testing.assert_close(out.logits[1], bb(crop_and_zoom(x, box1, (64, 64)), scale=1), atol=1e-5, rtol=0)
    b1, b2 = out.boxes
    assert (b2[:, :2] >= b1[:, :2] - 1e-4).all() and (b2[:, 2:] <= b1[:, 2:] + 1e-4).all()
    torch.testing.assert_close(out.logits[2], bb(crop_and_zoom(x, b2, (64, 64)), scale=2), atol=1e-5, rtol=0)


def test_every_scale_loss_reaches_the_backbone_and_only_its_own_cls_token():
    model = _sharpened(num_scales=3).train()
    x = torch.randn(2, 3, 64, 64)
    for s in range(3):
        model.zero_grad(set_to_none=True)
        model.forward_multiscale(x).logits[s].logsumexp(-1).sum().backward()
        bb = model.backbone
        assert bb.vit.patch_embed.proj.weight.grad.abs().sum() > 0
        assert bb.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        for t in range(3):
            g = bb.cls_token(t).grad
            assert (g is not None and g.abs().sum() > 0) == (t == s)


def test_zoomed_inputs_carry_no_gradient():
    model = _sharpened(num_scales=2)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = model.forward_multiscale(x)
    out.logits[1].sum().backward(retain_graph=True)
    assert x.grad is None  # no path from scale 2 back to the pixels or the box
    out.logits[0].sum().backward()
    assert x.grad is not None


def test_propose_is_the_scale1_pipeline():
    model = _sharpened().eval()
    x = torch.randn(3, 3, 64, 64)
    p = model.propose(x)
    assert p.rollout.shape == (3, 4, 4) and p.mask.dtype == torch.bool and p.boxes.shape == (3, 4)
    assert torch.equal(p.mask, threshold_rollout(p.rollout, 1.3))
    assert torch.equal(p.component, largest_component(p.mask))
    assert (p.component <= p.mask).all()
    torch.testing.assert_close(p.boxes, model.forward_multiscale(x).boxes[0])
    torch.testing.assert_close(p.logits, model(x), atol=1e-5, rtol=0)


def test_mean_rows_option_is_used():
    model = _sharpened(rollout_rows="mean").eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.backbone.forward_features(x, capture="all")
    torch.testing.assert_close(model.propose(x).rollout, attention_rollout(feats.attentions, (4, 4), rows="mean"))


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (3, 64, 64), (2, 1, 64, 64)])
def test_wrong_input_shape_is_refused(shape):
    model = tiny_model()
    for fn in (model, model.forward_multiscale, model.propose):
        with pytest.raises(ValueError, match=r"expects a \(B, 3, 64, 64\) batch"):
            fn(torch.randn(*shape))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"num_scales": 0}, "num_scales"),
        ({"rollout_rows": "max"}, "rollout_rows"),
        ({"residual": -1.0}, "residual"),
    ],
)
def test_bad_constructor_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(**kwargs)


def test_create_model_is_the_public_entry():
    import ramstrans

    model = ramstrans.create_model(backbone="vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3, num_scales=1)
    assert isinstance(model, ramstrans.RAMSTrans) and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, ckpt = _sharpened(num_scales=2), _sharpened(num_scales=2)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.backbone.vit.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    for m in (plain, ckpt):
        out = m.forward_multiscale(x)
        (out.logits[0].logsumexp(-1).sum() + out.logits[1].logsumexp(-1).sum()).backward()
    torch.testing.assert_close(
        ckpt.backbone.vit.blocks[0].attn.qkv.weight.grad,
        plain.backbone.vit.blocks[0].attn.qkv.weight.grad,
        atol=1e-5,
        rtol=1e-4,
    )
    torch.testing.assert_close(
        ckpt.backbone.zoom_cls_tokens[0].grad, plain.backbone.zoom_cls_tokens[0].grad, atol=1e-5, rtol=1e-4
    )


def _same_output(a, b):
    for got, want in zip(
        [a.logits, a.boxes, a.rollout, a.cls_attention], [b.logits, b.boxes, b.rollout, b.cls_attention]
    ):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_copies_emas_pickles_and_compiled_models_run_every_scale():
    import copy
    import io

    from timm.utils import ModelEmaV3

    model = _sharpened(num_scales=3).eval()
    x = torch.randn(3, 3, 64, 64)
    want = model.forward_multiscale(x)
    _same_output(copy.deepcopy(model).forward_multiscale(x), want)
    ema = ModelEmaV3(model, decay=0.9)
    torch.testing.assert_close(ema.module.propose(x).boxes, model.propose(x).boxes)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    _same_output(torch.load(buf, weights_only=False).forward_multiscale(x), want)
    torch._dynamo.reset()
    compiled = torch.compile(model.backbone.forward_features, backend="aot_eager")
    feats = compiled(x, capture="all")
    ref = model.backbone.forward_features(x, capture="all")
    assert len(feats.attentions) == model.backbone.depth
    for got, exp in zip(feats.attentions, ref.attentions):
        torch.testing.assert_close(got, exp, atol=1e-6, rtol=1e-5)
    explained = torch._dynamo.explain(model.backbone.forward_features)(x, capture="all")
    assert explained.graph_break_count == 0  # the capture hooks trace into the graph


def test_no_capture_state_survives_a_call():
    model = tiny_model()
    model.forward_multiscale(torch.randn(1, 3, 64, 64))
    for blk in model.backbone.vit.blocks:
        assert blk.attn.q_norm.__dict__.get("_ramstrans_tap") is None
        assert blk.attn.k_norm.__dict__.get("_ramstrans_tap") is None


def test_ramstrans_takes_a_built_backbone():
    import timm

    from ramstrans import RAMSTrans
    from ramstrans.errors import UsageError
    from ramstrans.models import ViTBackbone

    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=4)
    bb = ViTBackbone(vit=vit, num_scales=3)
    model = RAMSTrans(backbone=bb)
    assert model.backbone is bb and model.backbone.vit is vit and model.num_classes == 4 and model.num_scales == 3
    assert model.backbone.img_size == (64, 64)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.eval()(x), vit.eval()(x))
    for given, kind in ((vit, "VisionTransformer"), ("vit_tiny_patch16_224", "str")):
        with pytest.raises(UsageError, match=f"RAMSTrans takes a built backbone .*, got a {kind}: "):
            RAMSTrans(backbone=given)
    with pytest.raises(UsageError, match="dist needs a distillation token"):
        RAMSTrans(backbone=bb, eval_head="dist")


def test_normalisation_travels_in_the_state_dict():
    a, b = tiny_model(), tiny_model()
    a.backbone.set_normalization([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert a.state_dict()["backbone.norm_mean"].tolist() == [0.1, 0.2, 0.3]
    b.load_state_dict(a.state_dict())
    assert b.backbone.mean == (0.1, 0.2, 0.3) and b.backbone.std == (0.4, 0.5, 0.6)
    assert "norm_mean" not in "".join(a.backbone.vit.state_dict())  # the deployable timm model is untouched
    with pytest.raises(ValueError, match="3 values"):
        a.backbone.set_normalization([0.5], [0.5])
