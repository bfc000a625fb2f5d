"""Backbones the class-token rollout cannot serve, each on a tiny randomly initialised instance timm builds locally:
EVA-02 (RoPE after q_norm / k_norm), SigLIP's attention pool (``saliency="attn_pool"``), and ConvNeXt, Swin and ResNet
through the activation saliency (SCDA's channel-summed last feature map). For each: timm's own forward bit for bit,
the saliency against an independent float64 recomputation, a hand-built map's box, the exports, and the refusals."""

import copy
import json

import numpy as np
import pytest
import timm
import torch

from ramstrans.errors import CheckpointError, UsageError
from ramstrans.models import Features, RAMSTrans, create_model

EVA = dict(backbone="eva02_tiny_patch14_224", img_size=56, depth=2, embed_dim=32, num_heads=2, global_pool="token")
SIGLIP = dict(backbone="vit_base_patch16_siglip_224", img_size=64, depth=2, embed_dim=32, num_heads=2)
NETS = {
    "convnext": ("convnext_atto", {"dims": (8, 16, 24, 32)}, 64),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 2},
        64,
    ),
    "resnet": ("resnet10t", {"channels": (8, 16, 24, 32)}, 64),
    "gap_vit": ("vit_base_patch16_reg4_gap_256", {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 64}, 64),
}
VIT = dict(backbone="vit_tiny_patch16_224", img_size=64, depth=2, embed_dim=32, num_heads=2)


# Every family the README's table lists, as (model, input size): what the export round trips run on.
KINDS = {
    "convnext": lambda: _net("convnext"),
    "gap_vit": lambda: _net("gap_vit"),
    "attn_pool": lambda: (create_model(num_classes=5, saliency="attn_pool", **SIGLIP).eval(), 64),
    "eva": lambda: (create_model(num_classes=5, **EVA).eval(), 56),
    "rope_vit": lambda: (create_model(num_classes=5, **ROPE_VIT).eval(), 64),
    "registers": lambda: (create_model(num_classes=5, reg_tokens=4, no_embed_class=True, **VIT).eval(), 64),
    "dynamic": lambda: (create_model(num_classes=5, dynamic_img_size=True, **VIT).eval(), 64),
    "deit3": lambda: (create_model(num_classes=5, **{**VIT, "backbone": "deit3_small_patch16_224"}).eval(), 64),
    "distilled": lambda: (create_model(num_classes=5, dist_token=True, **VIT).eval(), 64),
}


def _net(family: str, **kw) -> tuple[RAMSTrans, int]:
    name, extra, size = NETS[family]
    extra = {k: v for k, v in extra.items() if k != "img_size"}
    return create_model(backbone=name, img_size=size, num_classes=5, saliency="activation", **extra, **kw).eval(), size


def _timm_copy(model: RAMSTrans, name: str, **kw) -> torch.nn.Module:
    ref = timm.create_model(name, num_classes=5, **kw).eval()
    ref.load_state_dict(model.backbone.timm_model.state_dict())
    return ref


# ---- EVA-02 ------------------------------------------------------------------------------------------------------
def test_eva_single_scale_is_timms_own_forward_and_the_zoom_has_its_own_class_token():
    torch.manual_seed(0)
    model = create_model(num_classes=5, **EVA).eval()
    kw = {k: v for k, v in EVA.items() if k != "backbone"}
    ref = _timm_copy(model, EVA["backbone"], **kw)
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
        feats = model.backbone.forward_features(x, capture="all")
        assert torch.equal(model.backbone.forward_head(feats.tokens), ref(x))  # capturing changes nothing
        model.backbone.zoom_cls_tokens[0].add_(1.0)
        assert not torch.equal(model.backbone(x, scale=1), ref(x))


ROPE_VIT = dict(backbone="vit_small_patch16_rope_224", img_size=64, depth=2, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("kind", ["eva02", "rope_vit"])
def test_rotary_captured_attention_equals_timms_unfused_attention_in_float64(kind):
    # The reference is timm's own explicit path (fused_attn off) of a float64 copy: its softmax probabilities, RoPE
    # applied by EvaAttention / AttentionRope itself, read at the attention dropout's input.
    torch.manual_seed(1)
    model = create_model(num_classes=5, **(EVA if kind == "eva02" else ROPE_VIT)).eval()
    size = model.backbone.img_size[0]
    ref = copy.deepcopy(model).double()
    probs = []
    for blk in ref.backbone.vit.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda m, a, out: probs.append(a[0].mean(1)))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        got = model.backbone.forward_features(x, capture="all").attentions
        ref.backbone.vit.forward_features(x.double())
    assert model.backbone.vit.rope is not None and len(got) == len(probs) == 2
    for g, want in zip(got, probs):
        torch.testing.assert_close(g.double(), want, atol=2e-6, rtol=0)


def test_average_pooled_eva_weights_load_into_the_token_pooled_eva(tmp_path):
    from safetensors.torch import save_file

    kw = {k: v for k, v in EVA.items() if k not in ("backbone", "global_pool")}
    src = timm.create_model(EVA["backbone"], num_classes=5, **kw)  # timm's default: average pooling, fc_norm
    save_file(src.state_dict(), str(tmp_path / "eva.safetensors"))
    model = create_model(num_classes=5, pretrained=str(tmp_path / "eva.safetensors"), **EVA)
    got, want = model.backbone.vit.state_dict(), src.state_dict()
    for k, v in want.items():
        assert torch.equal(got[k.replace("fc_norm.", "norm.")], v), k  # the final LayerNorm moves to the tokens


# ---- SigLIP's attention pool ----------------------------------------------------------------------------------
def test_attn_pool_saliency_is_the_pools_query_over_the_patches_in_float64():
    torch.manual_seed(2)
    model = create_model(num_classes=5, saliency="attn_pool", **SIGLIP).eval()
    bb = model.backbone
    assert not bb.has_class_token and bb.num_prefix_tokens == 0 and len(bb.zoom_cls_tokens) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = bb.forward_features(x, capture="all")
        pool = copy.deepcopy(bb.vit.attn_pool).double()
        tokens = feats.tokens.double()  # (B, N, D) final-normed tokens: what the pool reads
        B, N, D = tokens.shape
        h = pool.num_heads
        q = pool.q(pool.latent.expand(B, -1, -1)).reshape(B, 1, h, D // h).transpose(1, 2)
        k = pool.kv(tokens).reshape(B, N, 2, h, D // h)[:, :, 0].transpose(1, 2)
        want = ((pool.q_norm(q) @ pool.k_norm(k).transpose(-2, -1)) * pool.scale).softmax(-1).mean(1)[:, 0]
        ref = _timm_copy(model, SIGLIP["backbone"], **{k: v for k, v in SIGLIP.items() if k != "backbone"})
        assert torch.equal(model(x), ref(x))
    torch.testing.assert_close(feats.cls_attention.double(), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(feats.saliency.double(), want.reshape(B, 4, 4), atol=1e-6, rtol=0)
    assert feats.attentions == []  # the blocks are not captured: the pool's map is the saliency


# ---- the activation saliency (CNN, Swin) -----------------------------------------------------------------------
@pytest.mark.parametrize("family", NETS)
def test_activation_model_is_timms_forward_and_its_saliency_the_last_stage_summed(family):
    torch.manual_seed(3)
    model, size = _net(family)
    name, extra, _ = NETS[family]
    extra = {**extra, "img_size": size} if family == "swin" else extra  # timm's Swin is built for its input size
    ref = _timm_copy(model, name, **extra).double()
    last = ref.get_submodule(
        {"convnext": "stages.3", "swin": "layers.3", "resnet": "layer4", "gap_vit": "blocks.1"}[family]
    )
    kept = []
    last.register_forward_hook(lambda m, a, out: kept.append(out))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), _timm_copy(model, name, **extra)(x))
        feats = model.backbone.forward_features(x, capture="all")
        ref(x.double())
    stage = kept[0].permute(0, 3, 1, 2) if family == "swin" else kept[0]  # timm's Swin stages are NHWC
    if family == "gap_vit":  # (B, 4 registers + 16 patches, D) tokens -> (B, D, 4, 4)
        stage = stage[:, 4:].transpose(1, 2).unflatten(2, (4, 4))
    cells = 16 if family == "gap_vit" else 32
    assert model.backbone.cell_size == (cells, cells) and model.backbone.grid_size == (64 // cells, 64 // cells)
    torch.testing.assert_close(feats.saliency.double(), stage.abs().sum(1), rtol=1e-5, atol=1e-5)
    assert feats.cls_attention is None


def test_a_hand_built_activation_map_selects_its_box():
    # A 4 x 4 map of 32-pixel cells at 128 px: cells (1, 2), (1, 3), (2, 2) bright, one isolated bright cell at
    # (3, 0). Mean 1.5 (24 / 16), threshold 1.3 x 1.5 = 1.95: the four bright cells pass; the largest 8-connected
    # component is the three-cell one; its box spans rows 1-2 and columns 2-3: x 64..128, y 32..96.
    model = create_model(backbone="resnet10t", img_size=128, num_classes=5, saliency="activation").eval()
    g = torch.ones(1, 4, 4)
    g[0, 1, 2] = g[0, 1, 3] = g[0, 2, 2] = g[0, 3, 0] = 3.0
    g *= 24.0 / g.sum()
    _, mask, component, boxes = model._propose_boxes(Features(tokens=torch.zeros(1), saliency=g))
    assert mask.sum().item() == 4 and component.sum().item() == 3
    assert boxes.tolist() == [[64.0, 32.0, 128.0, 96.0]]


def test_activation_model_trains_two_scales_with_cutmix_area_weights_per_scale():
    from ramstrans.training.mixing import Mixer

    torch.manual_seed(4)
    model, size = _net("convnext")
    model.train()
    mixer = Mixer(
        num_classes=5,
        image_size=(size, size),
        grid_size=model.backbone.grid_size,
        mixup_alpha=0.0,
        transmix=False,
        label_smoothing=0.0,
    )
    x, y = torch.randn(4, 3, size, size), torch.arange(4) % 5
    xm, targets_for = mixer(x, y, 0)
    out = model.forward_multiscale(xm)
    targets, info = targets_for(out)
    assert len(targets) == 2 and out.cls_attention == []
    y0, y1, x0, x1 = info.box
    crop = out.boxes[0]
    iw = (crop[:, 2].clamp(max=x1) - crop[:, 0].clamp(min=x0)).clamp(min=0)
    ih = (crop[:, 3].clamp(max=y1) - crop[:, 1].clamp(min=y0)).clamp(min=0)
    want = iw * ih / ((crop[:, 2] - crop[:, 0]) * (crop[:, 3] - crop[:, 1]))
    torch.testing.assert_close(info.lam[1], want)  # the zoomed view's share of the pasted box, by area
    assert torch.all(info.lam[0] == info.lam_area)


@pytest.mark.parametrize("kind", KINDS)
def test_cutmix_weights_read_the_heads_attention_where_there_is_one_and_the_area_otherwise(kind):
    # area_weight 0: λ of scale 1 is the pasted box's share of the attention of the query the head reads (TransMix),
    # recomputed here from the captured map; without attention it is the box's share of the image.
    from ramstrans.training.mixing import Mixer

    torch.manual_seed(7)
    model, size = KINDS[kind]()
    bb = model.backbone
    mixer = Mixer(num_classes=5, image_size=(size, size), grid_size=bb.grid_size, mixup_alpha=0.0, area_weight=0.0)
    x = torch.randn(2, 3, size, size)
    xm, targets_for = mixer(x, torch.arange(2), 0)
    with torch.no_grad():
        out = model.forward_multiscale(xm)
    _, info = targets_for(out)
    y0, y1, x0, x1 = info.box
    ch, cw = bb.cell_size
    rows, cols = torch.arange(bb.grid_size[0]) * ch + 0.5, torch.arange(bb.grid_size[1]) * cw + 0.5
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None]  # top-left pixels in the box
    if bb.saliency == "activation":  # the area weights: of the image at scale 1, of the zoomed crop at scale 2
        crop = out.boxes[0]
        iw = (crop[:, 2].clamp(max=x1) - crop[:, 0].clamp(min=x0)).clamp(min=0)
        ih = (crop[:, 3].clamp(max=y1) - crop[:, 1].clamp(min=y0)).clamp(min=0)
        share = iw * ih / ((crop[:, 2] - crop[:, 0]) * (crop[:, 3] - crop[:, 1]))
        assert out.cls_attention == [] and info.lam_area == (y1 - y0) * (x1 - x0) / size**2
        torch.testing.assert_close(info.lam[1], share)
    else:
        attn = out.cls_attention[0]
        want = (attn * inside.flatten()).sum(1) / attn.sum(1)
        torch.testing.assert_close(info.lam[0], want)
    assert len(info.lam) == 2


# ---- exports -------------------------------------------------------------------------------------------------------
# The families whose fused graph differs in how the saliency is made: the activation (forward_intermediates), the
# attention pool's query, the RoPE capture (EVA-02's; the RoPE ViTs' is the same code), the resampled position
# embedding (dynamic size). Register tokens export in tests/models/test_backbone_families.py, the distilled layout in
# tests/distill/test_distill.py; the other layouts' graphs differ only in the embedding, which predict and the export
# share. Each is exported once, at a fitted temperature.
GRAPHS = ("convnext", "attn_pool", "eva", "dynamic")


@pytest.mark.parametrize("kind", GRAPHS)
def test_fused_two_scale_onnx_export_matches_predict(tmp_path, kind):
    import onnxruntime as ort

    from ramstrans.export.onnx import write_onnx

    torch.manual_seed(5)
    model, size = KINDS[kind]()
    model.set_temperature(2.5)  # the fused graph divides every scale's logits by it, as predict does
    x = torch.randn(3, 3, size, size)
    path = write_onnx(model, tmp_path / f"{kind}.onnx", 2, {"class_names": "[]"})
    logits, probs, boxes = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()}
    )
    with torch.no_grad():
        want = model.predict(x, 2)
    np.testing.assert_allclose(probs, want.probs.numpy(), atol=1e-5, rtol=0)
    assert np.array_equal(boxes, want.boxes.numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_timm_folder_export_round_trips_with_its_saliency(tmp_path, kind):
    from ramstrans.export.timm import _write_timm_folder
    from ramstrans.inference.load import model_from_export

    torch.manual_seed(6)
    model, size = KINDS[kind]()
    with torch.no_grad():
        for token in getattr(model.backbone, "zoom_cls_tokens", []):
            token.add_(0.5)  # the zoom token must travel with the folder
    cfg = _config(model, size)
    info = {"model_type": "rams", "num_scales": 2, "class_names": list("abcde"), "provenance": _PROVENANCE}
    _write_timm_folder(tmp_path / "out", model, cfg, info)
    back, names, _ = model_from_export(tmp_path / "out")
    assert names == list("abcde") and back.backbone.saliency == model.backbone.saliency
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        a, b = model.predict(x, 2), back.predict(x, 2)
    torch.testing.assert_close(a.probs, b.probs, atol=0, rtol=0)
    assert torch.equal(a.boxes, b.boxes)


_PROVENANCE = {
    "dataset": "synthetic",
    "exported_by": "test",
    "initial_weights": "random",
    "backbone": "tiny",
    "step": 0,
    "weights": "raw",
}


def _config(model: RAMSTrans, size: int):
    from ramstrans.config import Config

    cfg = Config()
    cfg.model.img_size, cfg.data.resize = size, size
    return cfg


# ---- refusals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(backbone="resnet10t", img_size=64), "model.saliency: activation"),  # rollout on a CNN
        (dict(SIGLIP), "it has no class token, whose attention the rollout reads: use model.saliency attn_pool"),
        (dict(backbone="vit_tiny_patch16_224", img_size=64, depth=2, saliency="attn_pool"), "attention-pooling head"),
        ({**EVA, "global_pool": "avg"}, "pools with 'avg' instead of the class token"),
        (dict(backbone="resnet10t", img_size=80, saliency="activation"), "not a multiple of the 32-pixel stride"),
        (dict(backbone="resnet10t", img_size=64, saliency="activation", dist_token=True), "model.dist_token needs"),
        (dict(backbone="no_such_net_v9", img_size=64, saliency="activation"), "timm has no model of that name"),
        (dict(backbone="resnet10t", img_size=64, saliency="gradcam"), "'model.saliency' must be one of"),
    ],
)
def test_a_saliency_the_backbone_cannot_give_is_refused_in_one_sentence(kwargs, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        create_model(num_classes=5, **kwargs)


def test_a_fitted_temperature_travels_with_both_exports(tmp_path):
    import onnxruntime as ort  # noqa: F401  (the deploy session needs it)

    from ramstrans.deploy.session import OnnxModel
    from ramstrans.export.onnx import write_onnx
    from ramstrans.export.timm import _write_timm_folder
    from ramstrans.inference.load import model_from_export

    torch.manual_seed(8)
    model, size = KINDS["convnext"]()
    model.set_temperature(2.5)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        single, fused = model.predict(x, 1), model.predict(x, 2)
    path = write_onnx(model, tmp_path / "t1.onnx", 1, {"class_names": json.dumps(list("abcde"))})
    got = OnnxModel(path).predict(x.numpy(), 1)  # the fused graph's: test_fused_two_scale_onnx_export_matches_predict
    np.testing.assert_allclose(got.probs, single.probs.numpy(), atol=1e-5, rtol=0)
    info = {"model_type": "rams", "num_scales": 2, "class_names": list("abcde"), "provenance": _PROVENANCE}
    _write_timm_folder(tmp_path / "tf", model, _config(model, size), info)
    back = model_from_export(tmp_path / "tf")[0]
    assert back.temperature == 2.5
    with torch.no_grad():
        torch.testing.assert_close(back.predict(x, 2).probs, fused.probs, atol=0, rtol=0)
    record = tmp_path / "tf" / "ramstrans.json"
    for edited in ("warm", -1, float("nan")):  # a hand-edited record: one sentence naming the file and the field
        record.write_text(json.dumps({**json.loads(record.read_text()), "temperature": edited}))
        with pytest.raises(CheckpointError, match=r"ramstrans.json field 'temperature' must be a number > 0"):
            model_from_export(tmp_path / "tf")


def test_a_distillation_token_on_an_attention_pool_is_refused():
    with pytest.raises(UsageError, match="needs a class token read by the head"):
        create_model(num_classes=5, saliency="attn_pool", dist_token=True, **SIGLIP)
