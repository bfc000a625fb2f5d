"""Proposal geometry on hand-worked grids; batched crop-and-zoom against per-sample references."""

import numpy as np
import torch
import torch.nn.functional as F

from ramstrans.models import component_boxes, compose_boxes, crop_and_zoom, largest_component, threshold_rollout

P = (16, 16)


def _grid(rows):
    return torch.tensor([[c == "#" for c in r] for r in rows])


def _box(rows, patch=P):
    m = _grid(rows)[None]
    gh, gw = m.shape[1:]
    return component_boxes(largest_component(m), patch, (gh * patch[0], gw * patch[1]))[0].tolist()


def test_one_blob():
    assert _box(["....", ".##.", ".#..", "...."]) == [16, 16, 48, 48]


def test_two_blobs_keep_the_larger():
    assert _box(["##...", "#....", ".....", "...##", "...##"]) == [48, 48, 80, 80]


def test_diagonal_only_connection_is_one_component():
    assert _box(["#...", ".#..", "..#.", "...."]) == [0, 0, 48, 48]


def test_tie_goes_to_the_component_first_in_row_major_order():
    # two 2-cell components; the right one starts on row 0, the left one on row 1
    assert _box(["...#", "#..#", "#...", "...."]) == [48, 0, 64, 32]


def test_empty_mask_gives_the_full_image():
    assert _box(["...", "...", "..."]) == [0, 0, 48, 48]


def test_full_mask_gives_the_full_image():
    assert _box(["###", "###"]) == [0, 0, 48, 32]


def test_non_square_grid_and_patch():
    assert _box(["......", "....##", "....#."], patch=(8, 16)) == [64, 8, 96, 24]


def test_batch_is_labelled_without_crossing_samples():
    a = _grid(["##..", "....", "....", "...."])
    b = _grid(["....", "....", "....", "##.."])
    comp = largest_component(torch.stack([a, b, torch.zeros(4, 4, dtype=torch.bool)]))
    assert torch.equal(comp[0], a) and torch.equal(comp[1], b) and not comp[2].any()
    boxes = component_boxes(comp, P, (64, 64))
    assert boxes.tolist() == [[0, 0, 32, 16], [0, 48, 32, 64], [0, 0, 64, 64]]


def test_threshold_is_alpha_times_the_per_sample_mean():
    g = torch.tensor([[[1.0, 1.0], [1.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])  # means 2 and 2
    mask = threshold_rollout(g, 1.3)
    assert mask.tolist() == [[[False, False], [False, True]], [[False, False], [False, False]]]


def _bilinear_reference(img, box, out_hw):
    """float64 bilinear sampling at output-pixel centres of the box, image borders clamped (numpy)."""
    C, H, W = img.shape
    x0, y0, x1, y1 = box
    oh, ow = out_hw
    ys = y0 + (np.arange(oh) + 0.5) * (y1 - y0) / oh - 0.5
    xs = x0 + (np.arange(ow) + 0.5) * (x1 - x0) / ow - 0.5
    ys, xs = np.clip(ys, 0, H - 1), np.clip(xs, 0, W - 1)
    yl, xl = np.floor(ys).astype(int), np.floor(xs).astype(int)
    yh, xh = np.minimum(yl + 1, H - 1), np.minimum(xl + 1, W - 1)
    wy, wx = (ys - yl)[:, None], (xs - xl)[None, :]
    a = img.double().numpy()
    return (
        (1 - wy) * (1 - wx) * a[:, yl][:, :, xl]
        + (1 - wy) * wx * a[:, yl][:, :, xh]
        + wy * (1 - wx) * a[:, yh][:, :, xl]
        + wy * wx * a[:, yh][:, :, xh]
    )


def test_crop_and_zoom_matches_per_sample_references():
    imgs = torch.randn(3, 3, 48, 64)
    boxes = torch.tensor([[16.0, 8.0, 48.0, 40.0], [0.0, 0.0, 64.0, 48.0], [0.0, 16.0, 16.0, 48.0]])
    out = crop_and_zoom(imgs, boxes, (48, 64))
    assert out.shape == (3, 3, 48, 64)
    for i in range(3):
        want = _bilinear_reference(imgs[i], boxes[i].tolist(), (48, 64))
        np.testing.assert_allclose(out[i].double().numpy(), want, atol=1e-5)
    # against crop + F.interpolate: identical where the samples fall inside the crop
    x0, y0, x1, y1 = boxes[0].int().tolist()
    ref = F.interpolate(imgs[:1, :, y0:y1, x0:x1], size=(48, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[0, :, 1:-1, 1:-1], ref[0, :, 1:-1, 1:-1], atol=1e-5, rtol=0)
    # a box on the left and bottom image borders: identical along those edges too (both clamp there)
    x0, y0, x1, y1 = boxes[2].int().tolist()
    ref = F.interpolate(imgs[2:, :, y0:y1, x0:x1], size=(48, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[2, :, 1:, :-2], ref[0, :, 1:, :-2], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], imgs[1], atol=1e-5, rtol=0)  # the full box is the identity


def test_crop_and_zoom_carries_no_gradient():
    imgs = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = crop_and_zoom(imgs, torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 24.0, 32.0]]), (32, 32))
    assert not out.requires_grad


def test_compose_boxes_maps_zoomed_pixels_back():
    outer = torch.tensor([[16.0, 32.0, 48.0, 64.0]])  # a 32x32 crop zoomed to 64x64
    inner = torch.tensor([[0.0, 32.0, 32.0, 64.0]])  # bottom-left quarter of the zoomed view
    assert compose_boxes(outer, inner, (64, 64)).tolist() == [[16.0, 48.0, 32.0, 64.0]]


def _scipy_largest(mask: np.ndarray) -> np.ndarray:
    """The reference: scipy's 8-connected labelling, largest component, ties to the first cell in row-major order."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())[1:]
    first = [np.flatnonzero(labels.ravel() == k + 1)[0] for k in range(n)]
    best = min(range(n), key=lambda k: (-sizes[k], first[k]))
    return labels == best + 1


def _long_paths(h, w):
    """A serpentine and a one-cell-wide spiral: components whose paths are as long as the grid allows."""
    snake = np.zeros((h, w), bool)
    snake[::2] = True
    for i, r in enumerate(range(1, h, 2)):
        snake[r, w - 1 if i % 2 == 0 else 0] = True
    spiral = np.zeros((h, w), bool)
    top, left, bottom, right = 0, 0, h - 1, w - 1
    while top <= bottom and left <= right:
        spiral[top, left : right + 1] = spiral[top : bottom + 1, right] = True
        if bottom - top >= 2:
            spiral[bottom, left : right + 1] = True
        if right - left >= 2:
            spiral[top + 2 : bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    return [snake, spiral, snake.T.copy() if h == w else snake[::-1].copy()]


def test_device_components_equal_scipy_on_random_and_adversarial_masks():
    rng = np.random.default_rng(0)
    total = 0
    for h, w in [(1, 1), (1, 7), (3, 2), (4, 4), (6, 9), (8, 8), (14, 14), (28, 28), (20, 35)]:
        masks = [rng.random((h, w)) < p for p in np.linspace(0.0, 1.0, 150)]  # empty ... full
        masks += [
            np.kron(rng.random(((h + 1) // 2, (w + 1) // 2)) < 0.4, np.ones((2, 2), bool))[:h, :w] for _ in range(20)
        ]  # blocky shapes: many equal-size components, so many ties
        masks += _long_paths(h, w)
        got = largest_component(torch.from_numpy(np.stack(masks))).numpy()
        for m, g in zip(masks, got):
            np.testing.assert_array_equal(g, _scipy_largest(m))
        total += len(masks)
    assert total >= 1000


def test_the_two_scale_forward_is_one_graph_and_exports_with_a_dynamic_batch():
    from conftest import tiny_model

    model = tiny_model(num_scales=2).eval()
    with torch.no_grad():
        for blk in model.backbone.vit.blocks:
            blk.attn.qkv.weight[: 2 * 192].mul_(6.0)  # peaked attention: real boxes, not the full image
    x = torch.randn(4, 3, 64, 64)
    assert torch._dynamo.explain(model.forward_multiscale)(x).graph_break_count == 0

    class Boxes(torch.nn.Module):
        def forward(self, images):
            return model.forward_multiscale(images).boxes[0]

    program = torch.export.export(Boxes(), (x,), dynamic_shapes={"images": {0: torch.export.Dim("batch", max=512)}})
    other = torch.randn(3, 3, 64, 64)  # another batch size and other images: nothing was traced as a constant
    want = model.forward_multiscale(other).boxes[0]
    assert (want != torch.tensor([0.0, 0.0, 64.0, 64.0])).any()
    assert torch.equal(program.module()(other), want)


def test_crop_and_zoom_is_torchvisions_roi_align():
    from torchvision.ops import roi_align

    gen = torch.Generator().manual_seed(3)
    imgs = torch.randn(6, 3, 48, 64, generator=gen)
    lo = torch.rand(6, 2, generator=gen) * torch.tensor([40.0, 30.0])
    boxes = torch.cat([lo, lo + 4 + torch.rand(6, 2, generator=gen) * (torch.tensor([64.0, 48.0]) - lo - 4)], 1)
    want = roi_align(
        imgs,
        torch.cat([torch.arange(6.0)[:, None], boxes], 1),
        output_size=(48, 64),
        spatial_scale=1.0,
        sampling_ratio=1,
        aligned=True,
    )
    # both are float32 computations of the same samples (each within ~1e-5 of float64 bilinear sampling)
    torch.testing.assert_close(crop_and_zoom(imgs, boxes, (48, 64)), want, atol=3e-5, rtol=0)
