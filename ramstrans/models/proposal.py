"""Dynamic Patch Proposal Module: threshold the rollout, keep the largest 8-connected component, crop and zoom.

Everything runs batched on the tensors' device with a fixed amount of work per grid size: no host transfer, no Python
loop over samples, traceable by torch.compile, torch.export and ONNX. The connected components are labelled by tree
hooking with pointer jumping (Shiloach-Vishkin style): every masked cell starts as its own tree labelled with its
row-major index; each round, every tree hooks its root onto the smallest label among the trees touching it (a 3 x 3
min-pool finds the touching labels, a scatter-min hooks the roots), then pointer jumping flattens the trees. Labels
only decrease and always name a cell of the same component, so each component ends labelled with its first cell in
row-major order, which is also the tie rule. A tree that does not hook in a round has a neighbour that hooked, so it
hooks in the next one: the number of trees of a component at least halves every two rounds, and 2 ceil(log2 N) + 1
rounds (N cells) always suffice. scipy's ``ndimage.label`` is the reference the tests compare against.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "threshold_rollout",
    "largest_component",
    "component_labels",
    "component_boxes",
    "crop_and_zoom",
    "samples_for",
    "resample",
    "compose_boxes",
]


def threshold_rollout(rollout: Tensor, alpha: float) -> Tensor:
    """mask = g > alpha * mean(g), the mean taken per sample over the grid.

    Args:
        rollout: (B, gh, gw) patch saliency.
        alpha: threshold factor (1.3 in the paper).

    Returns:
        (B, gh, gw) bool mask.
    """
    return rollout > alpha * rollout.mean(dim=(1, 2), keepdim=True)


def component_labels(mask: Tensor) -> Tensor:
    """8-connected component labels of a batch of masks.

    Args:
        mask: (B, gh, gw) bool.

    Returns:
        (B, gh, gw) long: every masked cell labelled with the row-major index of its component's first cell;
        unmasked cells hold gh * gw.
    """
    B, gh, gw = mask.shape
    n = gh * gw
    on = mask.reshape(B, n)
    cells = torch.arange(n, device=mask.device).expand(B, n)
    background = torch.full((B, 1), n, dtype=torch.long, device=mask.device)
    # (B, n + 1) parent pointers; slot n is the background, a sink that every unmasked cell points to
    parent = torch.cat([torch.where(on, cells, n), background], dim=1)
    jumps = max(1, math.ceil(math.log2(n + 1)))  # pointer doubling flattens any tree of up to n cells
    # Eager on the CPU, a converged round can be seen for free (no device to sync with): stop there. Traced, compiled,
    # exported or on an accelerator, the fixed bound runs without a host round trip; the labels are the same.
    early_exit = mask.device.type == "cpu" and not (torch.compiler.is_compiling() or torch.jit.is_tracing())
    for _ in range(2 * jumps + 1):
        before = parent
        # the smallest label touching each cell (labels < 2^24 are exact in float32)
        grid = parent[:, :n].reshape(B, 1, gh, gw).float()
        touching = (-F.max_pool2d(-grid, 3, stride=1, padding=1)).long().reshape(B, n)
        touching = torch.where(on, touching, n)
        roots = torch.where(on, parent[:, :n], n)
        parent = parent.scatter_reduce(1, roots, touching, reduce="amin")  # roots hook onto the smallest neighbour
        parent = torch.cat([torch.minimum(parent[:, :n], touching), background], dim=1)
        for _ in range(jumps):
            jumped = parent.gather(1, parent)
            if early_exit and torch.equal(jumped, parent):
                break
            parent = jumped
        if early_exit and torch.equal(parent, before):
            break
    return parent[:, :n].reshape(B, gh, gw)


def largest_component(mask: Tensor) -> Tensor:
    """Keep, per sample, the largest 8-connected component of the mask.

    A tie goes to the component whose first cell comes first in row-major order. An empty mask stays empty.

    Args:
        mask: (B, gh, gw) bool.

    Returns:
        (B, gh, gw) bool, on mask's device.
    """
    B, gh, gw = mask.shape
    n = gh * gw
    labels = component_labels(mask).reshape(B, n)
    sizes = torch.zeros(B, n + 1, dtype=torch.long, device=mask.device).scatter_add_(1, labels, torch.ones_like(labels))
    # largest size first, then the smallest label (the earliest first cell); the background slot never wins
    score = sizes[:, :n] * (n + 1) - torch.arange(n, device=mask.device)
    best = score.argmax(dim=1, keepdim=True)
    return ((labels == best) & mask.reshape(B, n)).reshape(B, gh, gw)


def component_boxes(component: Tensor, patch_size: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
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


def samples_for(source: int, out: int) -> int:
    """Samples per output pixel and axis that antialias the largest shrink from ``source`` to ``out`` pixels (a crop as
    large as the whole source): ceil(source / out), 1 when nothing is shrunk."""
    return max(1, -(-int(source) // int(out)))


def crop_and_zoom(
    images: Tensor, boxes: Tensor, out_size: tuple[int, int], samples: tuple[int, int] = (1, 1)
) -> Tensor:
    """Crop every image to its box and resize it bilinearly to ``out_size`` in one batched op.

    Each output pixel is the mean of ``samples`` (sy, sx) bilinear samples spread evenly over its footprint, coordinates
    clamped to the image: the sampling of ``torchvision.ops.roi_align(aligned=True, sampling_ratio=s)`` (s = 1: one
    sample at the centre of every output pixel, that of ``F.interpolate(crop, mode="bilinear", align_corners=False)``;
    s = ceil(shrink): an area average that antialiases a crop shrunk by up to s). Computed in pixel coordinates as two
    gathers (rows, then columns), so it is exact to float32 and exportable (ONNX Gather). Inputs are detached: the
    zoomed scale never back-propagates into the pixels or boxes.

    Args:
        images: (B, C, H, W).
        boxes: (B, 4) float xyxy in pixels of ``images``.
        out_size: (h, w) of the output.
        samples: (sy, sx) samples per output pixel and axis (``samples_for``).

    Returns:
        (B, C, h, w) zoomed crops, same dtype as ``images``.
    """
    images, boxes = images.detach(), boxes.detach().float()
    B, C, H, W = images.shape
    h, w = out_size
    sy, sx = samples
    dev = images.device

    def taps(lo: Tensor, hi: Tensor, n: int, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """Lower / upper source index and weight of the upper one, (B, n), for n sample positions."""
        step = ((hi - lo) / n)[:, None]  # roi_align's order of operations: start + (i + 1/2) * (span / n)
        pos = (lo - 0.5)[:, None] + (torch.arange(n, device=dev, dtype=torch.float32) + 0.5) * step
        pos = pos.clamp(0, size - 1)
        low = pos.floor()
        return low.long(), (low.long() + 1).clamp(max=size - 1), pos - low

    y_lo, y_hi, wy = taps(boxes[:, 1], boxes[:, 3], h * sy, H)
    x_lo, x_hi, wx = taps(boxes[:, 0], boxes[:, 2], w * sx, W)
    src = images.float()
    wy, wx = wy[:, None, :, None], wx[:, None, None, :]
    rows = (
        src.gather(2, y_lo[:, None, :, None].expand(B, C, h * sy, W)) * (1 - wy)
        + src.gather(2, y_hi[:, None, :, None].expand(B, C, h * sy, W)) * wy
    )
    if sy > 1:  # (B, C, h * sy, W) -> the mean of each output row's samples
        rows = rows.unflatten(2, (h, sy)).mean(3)
    out = (
        rows.gather(3, x_lo[:, None, None, :].expand(B, C, h, w * sx)) * (1 - wx)
        + rows.gather(3, x_hi[:, None, None, :].expand(B, C, h, w * sx)) * wx
    )
    if sx > 1:
        out = out.unflatten(3, (w, sx)).mean(4)
    return out.to(images.dtype)


def resample(images: Tensor, out_size: tuple[int, int]) -> Tensor:
    """The whole (B, C, H, W) images at ``out_size``, antialiased where shrunk (``crop_and_zoom`` of the full frame
    with ``samples_for`` each axis); the images themselves when they already are that size."""
    B, _, H, W = images.shape
    if (H, W) == tuple(out_size):
        return images
    full = torch.tensor([0.0, 0.0, float(W), float(H)], device=images.device).expand(B, 4)
    return crop_and_zoom(images, full, out_size, (samples_for(H, out_size[0]), samples_for(W, out_size[1])))


def compose_boxes(outer: Tensor, inner: Tensor, image_size: tuple[int, int]) -> Tensor:
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
