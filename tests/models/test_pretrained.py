"""Pretrained loading from files the tests write in the real on-disk formats."""

import time

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import tiny_model
from safetensors.torch import save_file


def _source(num_classes=7, img_size=64, depth=2):
    torch.manual_seed(1)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=img_size, depth=depth, num_classes=num_classes
    ).eval()


def write_google_npz(vit, path, extra=None):
    """Write a timm ViT in the layout of Google's original ViT-B_16.npz (Flax names, HWIO / (D, heads, hd))."""
    sd = {k: v.detach().numpy() for k, v in vit.state_dict().items()}
    D = vit.embed_dim
    H = vit.blocks[0].attn.num_heads
    hd = D // H
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
        "pre_logits/kernel": np.zeros((D, D), np.float32),  # IN21k files carry it; loaders ignore it
        "pre_logits/bias": np.zeros((D,), np.float32),
    }
    for i in range(len(vit.blocks)):
        b, p = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        qkv_w, qkv_b = sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]
        for j, n in enumerate(("query", "key", "value")):
            w[f"{b}MultiHeadDotProductAttention_1/{n}/kernel"] = qkv_w[j * D : (j + 1) * D].T.reshape(D, H, hd)
            w[f"{b}MultiHeadDotProductAttention_1/{n}/bias"] = qkv_b[j * D : (j + 1) * D].reshape(H, hd)
        w[f"{b}MultiHeadDotProductAttention_1/out/kernel"] = sd[p + "attn.proj.weight"].T.reshape(H, hd, D)
        w[f"{b}MultiHeadDotProductAttention_1/out/bias"] = sd[p + "attn.proj.bias"]
        for ln, n in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[f"{b}{ln}/scale"], w[f"{b}{ln}/bias"] = sd[p + n + ".weight"], sd[p + n + ".bias"]
        for r in range(2):
            w[f"{b}MlpBlock_3/Dense_{r}/kernel"] = sd[p + f"mlp.fc{r + 1}.weight"].T
            w[f"{b}MlpBlock_3/Dense_{r}/bias"] = sd[p + f"mlp.fc{r + 1}.bias"]
    w.update(extra or {})
    np.savez(path, **w)


def _resampled(pos, grid, mode, antialias):
    """Independent pos-embed resampling: CLS entry kept, the patch grid interpolated."""
    cls, grid_tok = pos[:, :1], pos[:, 1:]
    n = int(grid_tok.shape[1] ** 0.5)
    g = grid_tok.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=grid, mode=mode, antialias=antialias, align_corners=False)
    return torch.cat([cls, g.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)


def _assert_same_weights(vit, src, skip=()):
    got, want = vit.state_dict(), src.state_dict()
    for k in want:
        if k not in skip:
            torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0, msg=k)


def test_google_npz_round_trip_and_zoom_tokens(tmp_path):
    src = _source(num_classes=5)
    write_google_npz(src, tmp_path / "ViT-Ti_16.npz")
    model = tiny_model(num_scales=3, pretrained=str(tmp_path / "ViT-Ti_16.npz")).eval()
    _assert_same_weights(model.backbone.vit, src)  # head kept: the class count matches
    for t in model.backbone.zoom_cls_tokens:
        assert torch.equal(t, src.cls_token)
    assert model.backbone.mean == (0.5, 0.5, 0.5) and model.backbone.std == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), src(x), atol=1e-5, rtol=0)


def test_google_npz_at_another_resolution_resamples_pos_embed_like_timm(tmp_path):
    src = _source(num_classes=21)  # IN21k-style head, another class count than the model's 5
    write_google_npz(src, tmp_path / "w.npz")
    model = tiny_model(img_size=96, pretrained=str(tmp_path / "w.npz"))
    vit = model.backbone.vit
    want_pos = _resampled(src.pos_embed.detach(), (6, 6), "bilinear", antialias=False)
    torch.testing.assert_close(vit.pos_embed, want_pos, atol=1e-6, rtol=0)
    _assert_same_weights(vit, src, skip=("pos_embed", "head.weight", "head.bias"))
    assert vit.head.weight.shape == (5, 192)
    timm_own = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=96,
        depth=2,
        num_classes=5,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "w.npz"), custom_load=True),
    )
    _assert_same_weights(vit, timm_own, skip=("head.weight", "head.bias"))


def test_safetensors_and_pth_state_dicts(tmp_path):
    src = _source(num_classes=5)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    model = tiny_model(pretrained=str(tmp_path / "w.safetensors"))
    _assert_same_weights(model.backbone.vit, src)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    model = tiny_model(img_size=96, pretrained=str(tmp_path / "w.pth"))
    want_pos = _resampled(src.pos_embed.detach(), (6, 6), "bicubic", antialias=True)
    torch.testing.assert_close(model.backbone.vit.pos_embed, want_pos, atol=1e-5, rtol=0)
    _assert_same_weights(model.backbone.vit, src, skip=("pos_embed",))


def test_ramstrans_checkpoint_keeps_its_zoom_tokens(tmp_path):
    trained = tiny_model(num_scales=2)
    with torch.no_grad():
        trained.backbone.zoom_cls_tokens[0].fill_(0.25)
    trained.backbone.set_normalization([0.1, 0.2, 0.3], [1.0, 1.0, 1.0])
    torch.save({"format": "ramstrans", "model": trained.state_dict()}, tmp_path / "ck.pth")
    model = tiny_model(num_scales=3, pretrained=str(tmp_path / "ck.pth"))
    _assert_same_weights(model.backbone.vit, trained.backbone.vit)
    assert torch.all(model.backbone.zoom_cls_tokens[0] == 0.25)
    assert torch.equal(model.backbone.zoom_cls_tokens[1], trained.backbone.vit.cls_token)  # none saved for scale 3
    assert model.backbone.mean == (0.1, 0.2, 0.3)


def _written(path, data):
    path.write_bytes(data)
    return path


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda d: d / "missing.npz", FileNotFoundError, "does not exist"),
        (lambda d: _written(d / "t.pth", b"not a checkpoint"), ValueError, "not a readable"),
        (lambda d: _written(d / "t.safetensors", b"\0" * 20), ValueError, "not a readable"),
        (lambda d: torch.save({"obj": _Evil()}, d / "evil.pth") or d / "evil.pth", ValueError, "not a readable"),
        (lambda d: np.savez(d / "r.npz", a=np.zeros(3)) or d / "r.npz", ValueError, "not a Google ViT .npz"),
        (lambda d: write_google_npz(_source(depth=1), d / "d1.npz") or d / "d1.npz", ValueError, "not a Google ViT"),
        (
            lambda d: (
                save_file(
                    timm.create_model("vit_small_patch16_224", img_size=64, depth=2).state_dict(),
                    str(d / "s.safetensors"),
                )
                or d / "s.safetensors"
            ),
            ValueError,
            "has shape",
        ),
        (
            lambda d: save_file({"foo": torch.zeros(2)}, str(d / "f.safetensors")) or d / "f.safetensors",
            ValueError,
            "do not fit",
        ),
    ],
)
def test_bad_pretrained_files_are_refused(tmp_path, make, exc, match):
    path = make(tmp_path)
    with pytest.raises(exc, match=match):
        tiny_model(pretrained=str(path))


def test_hub_weights_without_network_fail_fast():
    start = time.monotonic()
    with pytest.raises(ValueError, match="pass the file as pretrained=PATH"):
        tiny_model(pretrained="augreg_in21k")
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match="no pretrained weights"):
        tiny_model(pretrained="no_such_tag")


def test_the_network_check_asks_huggingface_hubs_own_endpoint(monkeypatch):
    """A user behind a mirror (HF_ENDPOINT) is online when the mirror answers, whatever huggingface.co does."""
    import http.server
    import socket
    import threading

    from ramstrans.models.backbones import pretrained

    monkeypatch.setattr(pretrained.hf_constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this test may not
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(pretrained.hf_constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert pretrained._online(2.0) is True
    finally:
        server.shutdown()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    monkeypatch.setattr(pretrained.hf_constants, "ENDPOINT", f"http://127.0.0.1:{free}")
    assert pretrained._online(2.0) is False


@pytest.mark.parametrize("no_embed_class", [True, False])
def test_plain_vit_weights_lift_into_a_register_layout_keeping_every_tokens_input(tmp_path, no_embed_class):
    # Source: a plain ViT (class position embedded). Target: 4 registers, with or without no_embed_class. The class
    # token's input (token + its position) and every patch's input must be the source's; registers stay as built.
    from ramstrans.models import create_model

    src = _source(num_classes=5)
    with torch.no_grad():
        src.pos_embed.normal_()
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.manual_seed(3)
    model = create_model(
        backbone="vit_tiny_patch16_224",
        img_size=64,
        depth=2,
        num_classes=5,
        reg_tokens=4,
        no_embed_class=no_embed_class,
        pretrained=str(tmp_path / "w.safetensors"),
    ).eval()
    vit = model.backbone.vit
    torch.manual_seed(3)
    fresh = timm.create_model(
        "vit_tiny_patch16_224", img_size=64, depth=2, num_classes=5, reg_tokens=4, no_embed_class=no_embed_class
    )
    assert torch.equal(vit.reg_token, fresh.reg_token)  # new: the model's own initialisation
    pos, src_pos = vit.pos_embed.detach(), src.pos_embed.detach()
    cls_in = vit.cls_token + (0 if no_embed_class else pos[:, :1])
    torch.testing.assert_close(cls_in, src.cls_token + src_pos[:, :1], atol=0, rtol=0)
    torch.testing.assert_close(pos[:, -16:], src_pos[:, 1:], atol=0, rtol=0)
    if not no_embed_class:
        assert torch.equal(pos[:, 1:5], torch.zeros(1, 4, src.embed_dim))  # the registers' positions: none before
    _assert_same_weights(vit, src, skip=("cls_token", "pos_embed", "reg_token"))
