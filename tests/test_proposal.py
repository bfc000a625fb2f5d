"""Proposal geometry on hand-worked grids; batched crop-and-zoom against per-sample references."""
import numpy as np
import torch
import torch.nn.functional as F

from ramstrans.models import compose_boxes, component_boxes, crop_and_zoom, largest_component, threshold_rollout

P = (16, 16)


def _grid(rows):
    return torch.tensor([[c == "#" for c in r] for r in rows])


def _box(rows, patch=P):
    m = _grid(rows)[None]
    gh, gw = m.shape[1:]
    return component_boxes(largest_component(m), patch, (gh * patch[0], gw * patch[1]))[0].tolist()


def test_one_blob():
    assert _box(["....",
                 ".##.",
                 ".#..",
                 "...."]) == [16, 16, 48, 48]


def test_two_blobs_keep_the_larger():
    assert _box(["##...",
                 "#....",
                 ".....",
                 "...##",
                 "...##"]) == [48, 48, 80, 80]


def test_diagonal_only_connection_is_one_component():
    assert _box(["#...",
                 ".#..",
                 "..#.",
                 "...."]) == [0, 0, 48, 48]


def test_tie_goes_to_the_component_first_in_row_major_order():
    # two 2-cell components; the right one starts on row 0, the left one on row 1
    assert _box(["...#",
                 "#..#",
                 "#...",
                 "...."]) == [48, 0, 64, 32]


def test_empty_mask_gives_the_full_image():
    assert _box(["...", "...", "..."]) == [0, 0, 48, 48]


def test_full_mask_gives_the_full_image():
    assert _box(["###", "###"]) == [0, 0, 48, 32]


def test_non_square_grid_and_patch():
    assert _box(["......",
                 "....##",
                 "....#.",], patch=(8, 16)) == [64, 8, 96, 24]


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
    return ((1 - wy) * (1 - wx) * a[:, yl][:, :, xl] + (1 - wy) * wx * a[:, yl][:, :, xh]
            + wy * (1 - wx) * a[:, yh][:, :, xl] + wy * wx * a[:, yh][:, :, xh])


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
