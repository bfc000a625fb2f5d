"""Mixup, CutMix and TransMix (Chen et al., CVPR 2022) for RAMS-Trans, on timm's mixup rules and targets.

Pairs are (i, B-1-i) as in timm (an odd batch pairs its middle sample with itself). λ below is always the weight of
the PASTED (partner) image in the target; the kept image gets 1 - λ.

- Mixup: λ = 1 - the blend weight, at every scale.
- CutMix: λ_area is the area share of the pasted box (with ``correct_lam``, as timm, from the box clipped to the image;
  without it, the Beta draw the box was sized from). With TransMix, λ = w·λ_area + (1 - w)·λ_attn (w = 0.5), where
  λ_attn is the share of the last block's head-mean CLS attention over patch tokens that falls on patches inside the
  box (a patch is inside when its top-left pixel is: nearest-neighbour downsampling of the pixel mask, as the official
  code). The attention is the scale-1 forward's own, detached: no extra forward. The box is drawn by timm's rule from
  a generator of the batch's own (numpy's global generator is never reseeded).
- The zoomed scales (new here): scale k + 1 saw a crop of the mixed image, so it gets its own λ from the crop:
  λ_area = share of the crop covered by the box, λ_attn = that scale's CLS attention share on the box mapped into
  the crop's grid; a crop that misses the box gets λ = 0, a crop inside the box λ = 1.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from timm.data.mixup import mixup_target
from torch import Tensor

from ramstrans.errors import UsageError

__all__ = ["MixInfo", "Mixer", "transmix_lambda", "zoomed_lambda", "patch_box_mask", "cutmix_box"]

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) pixels, exclusive ends, as timm's cutmix_bbox_and_lam


@dataclass
class MixInfo:
    """What the mixer did to a batch."""

    kind: str  # "none" | "mixup" | "cutmix"
    lam_area: float  # area (or blend) share of the partner image
    box: Box | None = None  # the pasted region (cutmix only)
    partner: Tensor | None = None  # (B,) index of each sample's partner
    lam: list[Tensor] = field(default_factory=list)  # per scale, (B,) partner weight actually used


def patch_box_mask(box: Box, crop: Tensor, image_size: tuple[int, int], grid_size: tuple[int, int]) -> Tensor:
    """Which patches of each (zoomed) view lie in the box: a patch is inside when its top-left pixel is.

    Args:
        box: (y0, y1, x0, x1) in original pixels.
        crop: (B, 4) xyxy region of the original image that each view shows, resized to ``image_size``.
        image_size: (H, W) of the view.
        grid_size: (gh, gw) patches of the view.

    Returns:
        (B, gh * gw) float mask.
    """
    (H, W), (gh, gw) = image_size, grid_size
    y0, y1, x0, x1 = box
    dev = crop.device
    # top-left pixel (its centre) of every patch, mapped from view pixels back to original pixels
    u = (torch.arange(gw, device=dev, dtype=torch.float32) * (W / gw) + 0.5)[None] * ((crop[:, 2:3] - crop[:, 0:1]) / W)
    v = (torch.arange(gh, device=dev, dtype=torch.float32) * (H / gh) + 0.5)[None] * ((crop[:, 3:4] - crop[:, 1:2]) / H)
    xs, ys = crop[:, 0:1] + u, crop[:, 1:2] + v  # (B, gw), (B, gh)
    inside_x = (xs >= x0) & (xs < x1)
    inside_y = (ys >= y0) & (ys < y1)
    return (inside_y[:, :, None] & inside_x[:, None, :]).flatten(1).float()


def cutmix_box(rng: np.random.Generator, image_size: tuple[int, int], lam: float) -> Box:
    """timm's ``rand_bbox`` rule drawn from ``rng`` (timm draws from numpy's global generator): a box of
    ``sqrt(1 - lam)`` times each side (odd sizes kept exact), centred uniformly in the image, clipped to it.

    Args:
        rng: the generator to draw the centre from.
        image_size: (H, W).
        lam: the Beta draw (share of the image that is kept, before clipping).

    Returns:
        (y0, y1, x0, x1) pixels, exclusive ends.
    """
    H, W = image_size
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(H * ratio), int(W * ratio)
    cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
    return (
        int(np.clip(cy - cut_h // 2, 0, H)),
        int(np.clip(cy + (cut_h + 1) // 2, 0, H)),
        int(np.clip(cx - cut_w // 2, 0, W)),
        int(np.clip(cx + (cut_w + 1) // 2, 0, W)),
    )


def _attention_share(cls_attention: Tensor, mask: Tensor) -> Tensor:
    attn = cls_attention.detach().float()
    return (attn * mask).sum(dim=1) / attn.sum(dim=1).clamp(min=1e-12)


def transmix_lambda(
    cls_attention: Tensor,
    box: Box,
    lam_area: float,
    image_size: tuple[int, int],
    grid_size: tuple[int, int],
    area_weight: float = 0.5,
) -> Tensor:
    """TransMix weight of the pasted image: w·λ_area + (1 - w)·λ_attn, per sample.

    Args:
        cls_attention: (B, gh * gw) last block's head-mean CLS attention over the patches.
        box: pasted region (y0, y1, x0, x1) in pixels.
        lam_area: the area weight of the pasted image (its box's share of the image, see ``Mixer``).
        image_size: (H, W).
        grid_size: (gh, gw).
        area_weight: w.

    Returns:
        (B,) partner weights.
    """
    (H, W) = image_size
    full = torch.tensor([[0.0, 0.0, W, H]], device=cls_attention.device).expand(cls_attention.shape[0], 4)
    mask = patch_box_mask(box, full, image_size, grid_size)
    return area_weight * lam_area + (1 - area_weight) * _attention_share(cls_attention, mask)


def zoomed_lambda(
    cls_attention: Tensor | None,
    crop: Tensor,
    box: Box,
    image_size: tuple[int, int],
    grid_size: tuple[int, int],
    area_weight: float = 0.5,
) -> Tensor:
    """The zoomed scale's partner weight: the crop's share covered by the box and its attention share on it.

    Args:
        cls_attention: (B, gh * gw) the zoomed scale's last-block CLS attention over its patches; None for a
            backbone without attention (the area weight alone).
        crop: (B, 4) xyxy crop in original pixels.
        box: pasted region (y0, y1, x0, x1) in original pixels.
        image_size: (H, W) of the view.
        grid_size: (gh, gw).
        area_weight: w.

    Returns:
        (B,) partner weights (0 where the crop misses the box, 1 where it lies inside it).
    """
    y0, y1, x0, x1 = box
    iw = crop[:, 2].clamp(max=float(x1)) - crop[:, 0].clamp(min=float(x0))
    ih = crop[:, 3].clamp(max=float(y1)) - crop[:, 1].clamp(min=float(y0))
    area = ((crop[:, 2] - crop[:, 0]) * (crop[:, 3] - crop[:, 1])).clamp(min=1e-12)
    lam_area = (iw.clamp(min=0) * ih.clamp(min=0)) / area
    if cls_attention is None:
        return lam_area
    mask = patch_box_mask(box, crop, image_size, grid_size)
    return area_weight * lam_area + (1 - area_weight) * _attention_share(cls_attention, mask)


class Mixer:
    """Mixes a batch and, after the forward, builds per-scale soft targets (smoothing applied once, here).

    Args:
        num_classes: K.
        image_size: (H, W) of the batches (the network input, or the source the zoom crops).
        grid_size: (gh, gw) of the backbone, or per scale (a list) when the scales run at their own sizes.
        mixup_alpha: Beta(α, α) of mixup (0 = off).
        cutmix_alpha: Beta(α, α) of cutmix (0 = off).
        prob: chance that a batch is mixed at all.
        switch_prob: chance of CutMix when both are on.
        label_smoothing: smoothing of the one-hot targets.
        correct_lam: λ_area from the clipped box (timm's correct_lam); else the Beta draw.
        transmix: re-weight CutMix labels with attention (else area only).
        area_weight: w in w·λ_area + (1 - w)·λ_attn.
        seed: base seed; a batch draws from (seed, rank, key) for exact resume.
        rank: process rank (each process mixes its own batch).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        image_size: tuple[int, int],
        grid_size: tuple[int, int] | Sequence[tuple[int, int]],
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.8,
        label_smoothing: float = 0.1,
        correct_lam: bool = True,
        transmix: bool = True,
        area_weight: float = 0.5,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1 or not 0 <= switch_prob <= 1:
            raise UsageError(
                "mix.mixup_alpha and mix.cutmix_alpha must be >= 0, mix.prob and mix.switch_prob in [0, 1]"
            )
        if not 0 <= area_weight <= 1:
            raise UsageError(f"mix.area_weight must be in [0, 1], got {area_weight}")
        self.k = num_classes
        self.image_size: tuple[int, int] = (int(image_size[0]), int(image_size[1]))
        per_scale = [grid_size] if isinstance(grid_size[0], int) else list(grid_size)
        self.grids: list[tuple[int, int]] = [(int(g[0]), int(g[1])) for g in cast(list, per_scale)]
        self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob = mixup_alpha, cutmix_alpha, prob, switch_prob
        self.smoothing, self.correct_lam, self.transmix, self.area_weight = (
            label_smoothing,
            correct_lam,
            transmix,
            area_weight,
        )
        self.seed, self.rank = seed, rank

    def _draw(self, rng: np.random.Generator) -> tuple[str, float]:
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not (use_mixup or use_cutmix) or rng.random() >= self.prob:
            return "none", 1.0
        cutmix = use_cutmix and (not use_mixup or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        return ("cutmix" if cutmix else "mixup"), float(rng.beta(alpha, alpha))

    def mix(self, x: Tensor, key: int) -> tuple[Tensor, MixInfo]:
        """Mix (B, C, H, W) images; ``key`` (the batch's position in the run) seeds the draw. Returns the mixed batch
        and what was done."""
        rng = np.random.default_rng([self.seed, self.rank, key])
        kind, keep = self._draw(rng)
        partner = torch.arange(x.shape[0] - 1, -1, -1, device=x.device)
        if kind == "none":
            return x, MixInfo(kind, 0.0, None, partner)
        if kind == "mixup":
            return x * keep + x.flip(0) * (1.0 - keep), MixInfo(kind, 1.0 - keep, None, partner)
        y0, y1, x0, x1 = cutmix_box(rng, self.image_size, keep)
        if self.correct_lam:
            keep = 1.0 - (y1 - y0) * (x1 - x0) / float(self.image_size[0] * self.image_size[1])
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        return x, MixInfo(kind, 1.0 - keep, (int(y0), int(y1), int(x0), int(x1)), partner)

    def scale_lambdas(self, info: MixInfo, cls_attention: Sequence[Tensor], crops: Sequence[Tensor]) -> list[Tensor]:
        """Per scale, (B,) partner weights; ``crops[k]`` is the original-pixel crop seen by scale k + 2. A model
        without attention (a classifier, the activation saliency: no ``cls_attention``) gets the area weights: of the
        image at scale 1, of the box within the crop at the zoomed scales."""
        assert info.partner is not None  # set by mix()
        B, dev = info.partner.shape[0], info.partner.device
        first = torch.full((B,), info.lam_area, device=dev)
        if info.kind != "cutmix" or info.box is None:
            return [first] * (1 + len(crops))
        grid = lambda scale: self.grids[min(scale, len(self.grids) - 1)]  # noqa: E731  (one grid: every scale's)
        if not cls_attention:
            return [first] + [
                zoomed_lambda(None, c, info.box, self.image_size, grid(k + 1), 1.0) for k, c in enumerate(crops)
            ]
        w = self.area_weight if self.transmix else 1.0
        lams = [transmix_lambda(cls_attention[0], info.box, info.lam_area, self.image_size, grid(0), w)]
        for k, (attn, crop) in enumerate(zip(cls_attention[1:], crops)):
            lams.append(zoomed_lambda(attn, crop, info.box, self.image_size, grid(k + 1), w))
        return lams

    def targets(self, labels: Tensor, info: MixInfo, lams: Sequence[Tensor]) -> list[Tensor]:
        """Per scale, (B, K) soft targets: (1 - λ)·y + λ·y_partner with label smoothing applied once."""
        return [
            mixup_target(labels, self.k, lam=(1.0 - lam.float())[:, None], smoothing=self.smoothing) for lam in lams
        ]

    def __call__(self, x: Tensor, y: Tensor, key: int) -> tuple[Tensor, Callable]:
        """Mix a batch (``key``: its position in the run, which seeds the draw); the returned function maps the model's
        MultiScaleOutput to (per-scale targets, what was done: ``MixInfo`` with the per-scale λ)."""
        x, info = self.mix(x, key)

        def targets_for(out: Any) -> tuple[list[Tensor], MixInfo]:  # a MultiScaleOutput
            info.lam = self.scale_lambdas(info, out.cls_attention, out.boxes)
            return self.targets(y, info, info.lam), info

        return x, targets_for
