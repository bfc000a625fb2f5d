"""Glance and focus: each scale at its own size (``model.scale_sizes``) and the zoom cropped from the source
(``model.zoom_source: source``), against independent references."""

import itertools

import numpy as np
import pytest
import timm
import torch

from ramstrans import create_model
from ramstrans.errors import ConfigError, UsageError
from ramstrans.models.proposal import component_boxes, crop_and_zoom, largest_component, resample, threshold_rollout
from tests.conftest import TINY

TINY_KW = dict(TINY, num_classes=5, embed_dim=32, num_heads=2)


def sharpened(model):
    """Make the attention peaky so that the proposals are real boxes, not the whole image."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn.qkv.weight"):
                p[: 2 * p.shape[1]].mul_(8.0)
    return model


def test_default_is_todays_model_bit_for_bit():
    """Empty scale_sizes and the input as the zoom's source: the fused logits are exactly today's composition
    (scale 1 on the input, the proposal on its grid, the bilinear crop of the input at img_size)."""
    model = sharpened(create_model(**TINY_KW)).eval()
    assert model.scale_sizes == [(64, 64), (64, 64)] and model.input_size == (64, 64)
    x = torch.randn(3, 3, 64, 64)
    bb = model.backbone
    with torch.no_grad():
        out = model.forward_multiscale(x)
        feats = bb.forward_features(x, scale=0, capture="all")
        box = component_boxes(largest_component(threshold_rollout(feats.saliency, model.alpha)), (16, 16), (64, 64))
        zoomed = bb(crop_and_zoom(x, box, (64, 64)), scale=1)
        assert torch.equal(out.boxes[0], box)
        assert torch.equal(out.logits[0], bb(x, scale=0))
        assert torch.equal(out.logits[1], zoomed)
        assert torch.equal(model(x), bb.vit(x))  # the single pass is timm's own forward


def _bilinear64(img: np.ndarray, y: float, x: float) -> np.ndarray:
    """roi_align's bilinear sample of (C, H, W) float64 at (y, x), coordinates clamped to the image."""
    H, W = img.shape[1:]
    y, x = min(max(y, 0.0), H - 1), min(max(x, 0.0), W - 1)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
    wy, wx = y - y0, x - x0
    top = img[:, y0, x0] * (1 - wx) + img[:, y0, x1] * wx
    bottom = img[:, y1, x0] * (1 - wx) + img[:, y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def _crop64(img: np.ndarray, box, out: int, s: int) -> np.ndarray:
    """Independent float64 crop: every output pixel the mean of s x s bilinear samples spread over its footprint."""
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = (x1 - x0) / out, (y1 - y0) / out
    res = np.zeros((img.shape[0], out, out))
    for i, j in itertools.product(range(out), range(out)):
        acc = 0.0
        for a, b in itertools.product(range(s), range(s)):
            acc = acc + _bilinear64(img, y0 + i * bh + (a + 0.5) * bh / s - 0.5, x0 + j * bw + (b + 0.5) * bw / s - 0.5)
        res[:, i, j] = acc / (s * s)
    return res


def test_source_crop_equals_an_independent_float64_crop():
    """The focus scale's view is the box of the 128-px source cropped at 64 px with 2 x 2 samples per pixel; the
    glance is the 2 x 2 block mean of the source (an area downsample)."""
    model = sharpened(create_model(**TINY_KW, scale_sizes=[32, 64], zoom_source="source", source_size=128)).eval()
    assert model.input_size == (128, 128) and model.scale_sizes == [(32, 32), (64, 64)]
    x = torch.rand(2, 3, 128, 128)
    boxes = torch.tensor([[16.0, 8.0, 120.0, 100.0], [0.0, 0.0, 128.0, 128.0]])
    got = model.zoom(x, boxes, 1).double().numpy()
    for i in range(2):
        want = _crop64(x[i].double().numpy(), boxes[i].tolist(), 64, 2)
        np.testing.assert_allclose(got[i], want, atol=2e-6)
    glance = model.glance(x)
    blocks = x.double().reshape(2, 3, 32, 4, 32, 4).mean(dim=(3, 5))
    torch.testing.assert_close(glance.double(), blocks, atol=2e-6, rtol=0)
    assert resample(x, (128, 128)) is x  # nothing resampled at the batch's own size


def test_boxes_are_found_on_the_glance_grid_and_carried_in_source_pixels():
    model = sharpened(create_model(**TINY_KW, scale_sizes=[32, 64], zoom_source="source", source_size=128)).eval()
    x = torch.randn(4, 3, 128, 128)
    prop = model.propose(x)
    assert prop.component.shape == (4, 2, 2)  # the 32-px glance: a 2 x 2 grid of 16-px patches
    want = component_boxes(prop.component, (16, 16), (32, 32)) * 4.0  # 128 / 32
    assert torch.equal(prop.boxes, want)
    with torch.no_grad():
        out = model.forward_multiscale(x)
        assert torch.equal(out.boxes[0], want)
        zoomed = model.backbone(crop_and_zoom(x, want, (64, 64), (2, 2)), scale=1)
        torch.testing.assert_close(out.logits[1], zoomed)


@pytest.mark.parametrize("flip", [False, True])
def test_the_source_and_the_input_see_the_same_view_under_crop_and_flip(flip):
    """The training augmentation is applied once, in source coordinates: with the same seed, the source pipeline's
    box is the input pipeline's at twice the pixels (to the one pixel that integer crop offsets round)."""
    from ramstrans.data.transforms import Transform

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)
    box = (30.0, 20.0, 150.0, 110.0)
    kw = dict(train=True, mean=(0.5,) * 3, std=(0.5,) * 3, hflip=flip)
    for seed in range(6):
        small = Transform(crop=64, resize=72, **kw)(image, box, seed)
        large = Transform(crop=128, resize=144, **kw)(image, box, seed)
        assert large[0].shape == (3, 128, 128)
        np.testing.assert_allclose(np.array(large[1]) / 2, np.array(small[1]), atol=1.0)


def test_per_scale_sizes_resample_the_position_embedding_with_timms_function():
    """A 32-px scale of a 64-px ViT equals timm's own ViT built at 32 px with the resampled position embedding."""
    model = create_model(**TINY_KW, scale_sizes=[32, 64]).eval()
    vit = model.backbone.vit
    ref = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5, depth=2, embed_dim=32, num_heads=2)
    state = {k: v for k, v in vit.state_dict().items() if k != "pos_embed"}
    ref.load_state_dict(state, strict=False)
    with torch.no_grad():
        ref.pos_embed.copy_(timm.layers.resample_abs_pos_embed(vit.pos_embed, [2, 2], [4, 4], num_prefix_tokens=1))
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model.backbone(x, scale=0), ref.eval()(x))
        torch.testing.assert_close(model(torch.randn(2, 3, 64, 64)).shape, torch.Size([2, 5]))


def test_bad_sizes_are_one_sentence():
    with pytest.raises(ConfigError, match="model.scale_sizes"):
        create_model(**TINY_KW, scale_sizes=[32])
    with pytest.raises(UsageError, match="model.scale_sizes 40 is not a multiple of the 16-pixel patch"):
        create_model(**TINY_KW, scale_sizes=[40, 64])
    with pytest.raises(ConfigError, match="data.source_size"):
        create_model(**TINY_KW, zoom_source="source", source_size=48)
    with pytest.raises(ConfigError, match="data.source_size"):
        create_model(**TINY_KW, source_size=128)  # read only with the source as the zoom's
    with pytest.raises(UsageError, match="window attention"):
        create_model(**TINY_KW, scale_sizes=[32, 64], attn_window=1)


def test_a_cnn_serves_other_sizes_and_a_swin_is_refused_in_one_sentence():
    """The activation family runs a timm CNN at a glance size; a Swin (windows sized for img_size) is refused."""
    cnn = create_model(
        "resnet10t", 5, img_size=64, saliency="activation", scale_sizes=[32, 64], zoom_source="source", source_size=96
    ).eval()
    with torch.no_grad():
        out = cnn.forward_multiscale(torch.randn(2, 3, 96, 96))
    assert [tuple(lg.shape) for lg in out.logits] == [(2, 5), (2, 5)] and out.boxes[0].max() <= 96
    with pytest.raises(UsageError, match="model.scale_sizes 32: 'swin"):
        create_model(
            "swin_tiny_patch4_window7_224",
            5,
            img_size=224,
            saliency="activation",
            scale_sizes=[32, 224],
            depths=(1, 1, 1, 1),
            embed_dim=24,
            num_heads=(1, 1, 1, 1),
        )
