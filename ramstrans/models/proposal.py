"""Dynamic Patch Proposal Module: threshold the rollout, keep the largest 8-connected component, crop and zoom.

All functions are batched. The only host work is the connected-component labelling of the small (B, gh, gw) mask,
done by one ``scipy.ndimage.label`` call for the whole batch (a 3-D structure that connects cells only within a
sample); the box arithmetic and the resampling run on the tensors' device.
"""
from typing import Tuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["threshold_rollout", "largest_component", "component_boxes", "crop_and_zoom", "compose_boxes"]

# 8-connectivity inside each (gh, gw) slice, none across the batch axis.
_EIGHT_CONNECTED_PER_SAMPLE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_PER_SAMPLE[1] = True


def threshold_rollout(rollout: Tensor, alpha: float) -> Tensor:
    """mask = g > alpha * mean(g), the mean taken per sample over the grid.

    Args:
        rollout: (B, gh, gw) patch saliency.
        alpha: threshold factor (1.3 in the paper).

    Returns:
        (B, gh, gw) bool mask.
    """
    return rollout > alpha * rollout.mean(dim=(1, 2), keepdim=True)


def largest_component(mask: Tensor) -> Tensor:
    """Keep, per sample, the largest 8-connected component of the mask.

    A tie goes to the component whose first cell comes first in row-major order. An empty mask stays empty.

    Args:
        mask: (B, gh, gw) bool.

    Returns:
        (B, gh, gw) bool, on mask's device.
    """
    m = mask.detach().cpu().numpy()
    labels, n = ndimage.label(m, structure=_EIGHT_CONNECTED_PER_SAMPLE)
    if n == 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    flat = labels.reshape(-1)
    cells = np.arange(flat.size)
    size = np.bincount(flat, minlength=n + 1)
    first = np.full(n + 1, flat.size, dtype=np.int64)
    np.minimum.at(first, flat, cells)  # first cell (row-major within the batch) of each component
    sample = first[1:] // (m.shape[1] * m.shape[2])
    # sort by sample, then size descending, then first cell ascending; the head of each sample's run wins
    order = np.lexsort((first[1:], -size[1:], sample))
    heads = order[np.r_[True, sample[order][1:] != sample[order][:-1]]]
    best = np.zeros(m.shape[0], dtype=np.int64)
    best[sample[heads]] = heads + 1
    keep = (labels == best[:, None, None]) & (best[:, None, None] > 0)
    return torch.from_numpy(keep).to(mask.device)


def component_boxes(component: Tensor, patch_size: Tuple[int, int], image_size: Tuple[int, int]) -> Tensor:
    """Pixel boxes of the kept components.

    Cells (r0..r1, c0..c1) map to x0 = c0 * pw, y0 = r0 * ph, x1 = (c1 + 1) * pw, y1 = (r1 + 1) * ph (exclusive
    ends). An empty component gives the full image (0, 0, W, H).

    Args:
        component: (B, gh, gw) bool.
        patch_size: (ph, pw) pixels per cell.
        image_size: (H, W) of the image the grid covers.

    Returns:
        (B, 4) float xyxy boxes in pixels.
    """
    B, gh, gw = component.shape
    ph, pw = patch_size
    H, W = image_size
    rows, cols = component.any(dim=2), component.any(dim=1)  # (B, gh), (B, gw)
    r0 = rows.int().argmax(dim=1)
    r1 = gh - 1 - rows.flip(1).int().argmax(dim=1)
    c0 = cols.int().argmax(dim=1)
    c1 = gw - 1 - cols.flip(1).int().argmax(dim=1)
    boxes = torch.stack([c0 * pw, r0 * ph, (c1 + 1) * pw, (r1 + 1) * ph], dim=1).float()
    full = torch.tensor([0.0, 0.0, float(W), float(H)], device=boxes.device)
    empty = ~rows.any(dim=1)
    return torch.where(empty[:, None], full, boxes)


def crop_and_zoom(images: Tensor, boxes: Tensor, out_size: Tuple[int, int]) -> Tensor:
    """Crop every image to its box and resize it bilinearly to ``out_size`` in one batched op.

    Uses ``roi_align(aligned=True, sampling_ratio=1)``: one bilinear sample at the centre of every output pixel,
    the same sampling grid as ``F.interpolate(crop, mode="bilinear", align_corners=False)``. Inputs are detached:
    the zoomed scale never back-propagates into the pixels or the boxes.

    Args:
        images: (B, C, H, W).
        boxes: (B, 4) float xyxy in pixels of ``images``.
        out_size: (h, w) of the output.

    Returns:
        (B, C, h, w) zoomed crops, same dtype as ``images``.
    """
    images, boxes = images.detach(), boxes.detach()
    idx = torch.arange(images.shape[0], device=images.device, dtype=boxes.dtype)[:, None]
    rois = torch.cat([idx, boxes.to(images.device)], dim=1)
    out = roi_align(images.float(), rois.float(), output_size=tuple(out_size), spatial_scale=1.0,
                    sampling_ratio=1, aligned=True)
    return out.to(images.dtype)


def compose_boxes(outer: Tensor, inner: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """Map boxes given in the pixels of a zoomed crop back to the pixels of the original image.

    Args:
        outer: (B, 4) xyxy box of the crop in original pixels.
        inner: (B, 4) xyxy box in the zoomed crop's pixels (the crop was resized to ``image_size``).
        image_size: (H, W) of the zoomed crop.

    Returns:
        (B, 4) xyxy in original pixels.
    """
    H, W = image_size
    sx = (outer[:, 2] - outer[:, 0]) / W
    sy = (outer[:, 3] - outer[:, 1]) / H
    scale = torch.stack([sx, sy, sx, sy], dim=1)
    offset = torch.stack([outer[:, 0], outer[:, 1], outer[:, 0], outer[:, 1]], dim=1)
    return offset + inner * scale
