"""RAMS-Trans: one shared backbone run at several scales, each zooming on the previous scale's saliency proposal.

Scale 1 sees the image; its saliency (the attention rollout of a ViT, the attention pool's map, or a CNN's channel-
summed activation) is thresholded into a box (the Dynamic Patch Proposal Module); scale k + 1 sees that box of the
ORIGINAL image resized to its input size (one resampling however deep the recursion, so no blur accumulates), with its
own CLS token where the backbone has one. At test time only scale 1 runs: ``forward`` is the plain timm forward.

Each scale may run at its own size (``scale_sizes``: a small glance, then a sharp focus), and the image the model
takes may hold more pixels than any scale (``source_size``: the zoom crops the source's own pixels): scale 1 sees the
antialiased downsample of the batch, its box is carried in the batch's pixels, and every zoomed scale is cropped from
the batch (antialiased where the crop is shrunk). With the defaults the batch is the model input and nothing is
resampled.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ramstrans.errors import UsageError
from ramstrans.models.backbones.base import Features, ZoomBackbone, prefixed
from ramstrans.models.backbones.distilled import HEADS, Head, select_head
from ramstrans.models.gate import ZoomGate
from ramstrans.models.outputs import MultiScaleOutput, Prediction, Proposal, zoom_confidence
from ramstrans.models.proposal import (
    component_boxes,
    compose_boxes,
    crop_and_zoom,
    largest_component,
    resample,
    samples_for,
    threshold_rollout,
)
from ramstrans.models.testtime import ZoomCriterion, assemble_prediction, check_zoom_on, head_probs

__all__ = ["RAMSTrans", "check_backbone"]


def check_backbone(backbone: Any, model: str) -> None:
    """Refuse anything but a built backbone module (a name, a bare timm model), saying how to build one.

    Raises:
        UsageError: naming ``model`` and what it was given.
    """
    if isinstance(backbone, nn.Module) and hasattr(backbone, "forward_features") and hasattr(backbone, "img_size"):
        return
    raise UsageError(
        f"{model} takes a built backbone (a ViTBackbone, a NetBackbone or a registered family's), got a "
        f"{type(backbone).__name__}: ramstrans.create_model(backbone=NAME, ...) or "
        "ramstrans.models.build_backbone(model_cfg) builds one by name, ViTBackbone(vit=MODEL) wraps a built timm ViT"
    )


class RAMSTrans(nn.Module):
    """Recurrent attention multi-scale transformer on a backbone that gives a saliency map (a timm ViT's attention
    rollout or attention pool, any timm model's activation, or a registered family's own map).

    Args:
        backbone: a built ``ZoomBackbone``; its ``num_scales`` are the scales run (1 is the plain ViT baseline, 2 the
            paper's model; more recurse). ``build_backbone(cfg.model)`` builds one from a config.
        alpha: proposal threshold factor: mask = g > alpha * mean(g).
        eval_head: with a distillation token, the test-time logits: "mean" of the two heads (DeiT's), "cls" or "dist".
        scale_sizes: per scale, the side it runs at (``model.scale_sizes``; None: every scale at the backbone's
            ``img_size``); the backbone must serve each (``check_size``).
        source_size: the side of the batches the model takes when the zoom crops a larger source
            (``model.zoom_source: source``, ``data.source_size``); None: the batches are at the backbone's ``img_size``.

    Attributes:
        temperature: () buffer every scale's test-time logits are divided by (1 until ``eval --calibrate`` fits one;
            the reader of a model source sets it).
        zoom_gate: the fitted zoom gate of ``zoom_on="gate"`` (``ramstrans fit-gate``), an optional submodule.
    """

    temperature: Tensor

    def __init__(
        self,
        *,
        backbone: ZoomBackbone,
        alpha: float = 1.3,
        eval_head: Head = "mean",
        scale_sizes: Sequence[int] | None = None,
        source_size: int | None = None,
    ) -> None:
        super().__init__()
        check_backbone(backbone, "RAMSTrans")
        if not alpha > 0:
            raise UsageError(f"alpha must be > 0, got {alpha!r}")
        if eval_head not in HEADS or (eval_head == "dist" and not backbone.has_dist_token):
            raise UsageError(
                f"eval_head must be one of {', '.join(HEADS)} (dist needs a distillation token), got {eval_head!r}"
            )
        self.backbone = backbone
        self.eval_head: Head = eval_head
        self.num_classes = backbone.num_classes
        self.num_scales = backbone.num_scales
        self.alpha = float(alpha)
        self.scale_sizes, self.input_size = _sizes(backbone, scale_sizes, source_size)
        self.zoom_gate: ZoomGate | None = None
        self.register_buffer("temperature", torch.ones((), dtype=torch.float64), persistent=False)

    @property
    def zoom_passes(self) -> int:
        """Backbone passes adaptive zoom adds for a zoomed image: the zoomed scales (scale 1's pass is reused)."""
        return self.num_scales - 1

    def set_temperature(self, temperature: float) -> None:
        """Divide every scale's test-time logits by ``temperature`` (> 0) from now on."""
        if not temperature > 0:
            raise UsageError(f"the temperature must be > 0, got {temperature!r}")
        self.temperature.fill_(float(temperature))

    def forward(self, x: Tensor) -> Tensor:
        """Single-scale logits: the test-time path, exactly a plain ViT forward with fused attention.

        Args:
            x: (B, C, H, W) normalised images at ``input_size``.

        Returns:
            (B, K) logits (with a distillation token: of ``eval_head``).
        """
        self.check_input(x)
        return self.backbone(self.glance(x), scale=0, head=self.eval_head)

    def check_input(self, x: Tensor) -> None:
        """Refuse a batch that is not (B, in_chans, *input_size).

        Raises:
            UsageError: the expected and the given shapes.
        """
        C, (H, W) = self.backbone.in_chans, self.input_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (C, H, W):
            raise UsageError(f"RAMSTrans expects a (B, {C}, {H}, {W}) batch, got shape {tuple(x.shape)}")

    def glance(self, x: Tensor) -> Tensor:
        """(B, C, *input_size) -> (B, C, *scale_sizes[0]): what scale 1 sees (the batch itself at the defaults)."""
        return resample(x, self.scale_sizes[0])

    def zoom(self, x: Tensor, boxes: Tensor, scale: int) -> Tensor:
        """What zoomed ``scale`` (0-based, >= 1) sees: the (B, 4) ``boxes`` (in the batch's pixels) of the batch
        (B, C, *input_size), cropped and resized to the scale's size, antialiased as far as the crop can shrink."""
        (H, W), size = self.input_size, self.scale_sizes[scale]
        return crop_and_zoom(x, boxes, size, (samples_for(H, size[0]), samples_for(W, size[1])))

    def _propose_boxes(self, feats: Features, scale: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The backbone's (B, gh, gw) saliency of ``scale``'s pass -> mask -> largest component -> (B, 4) pixel boxes
        of that scale's own input."""
        bb = self.backbone
        rollout = feats.saliency
        if rollout is None:
            raise RuntimeError("this pass captured no saliency (capture 'none')")
        mask = threshold_rollout(rollout, self.alpha)
        component = largest_component(mask)
        return rollout, mask, component, component_boxes(component, bb.cell_size, self.scale_sizes[scale])

    def _to_input(self, box: Tensor) -> Tensor:
        """(B, 4) boxes in scale 1's pixels -> in the batch's (``input_size``) pixels."""
        (h, w), (H, W) = self.scale_sizes[0], self.input_size
        if (h, w) == (H, W):
            return box
        return box * torch.tensor([W / w, H / h, W / w, H / h], device=box.device)

    def _num_scales(self, num_scales: int | str | None) -> int:
        num_scales = self.num_scales if num_scales is None else num_scales
        if not isinstance(num_scales, int) or not 1 <= num_scales <= self.num_scales:
            raise UsageError(f"this model has {self.num_scales} scale(s); cannot run {num_scales}")
        return num_scales

    def forward_multiscale(self, x: Tensor, num_scales: int | None = None) -> MultiScaleOutput:
        """All scales, for training: scale k + 1 zooms on the proposal of scale k.

        Args:
            x: (B, C, H, W) normalised images at ``input_size``.
            num_scales: run only the first this many scales (default: all).

        Returns:
            MultiScaleOutput with num_scales logits and num_scales - 1 boxes (in the batch's pixels) / rollouts.
        """
        self.check_input(x)
        num_scales = self._num_scales(num_scales)
        bb = self.backbone
        feats = bb.forward_features(self.glance(x), scale=0, capture="cls" if num_scales == 1 else "all")
        out = MultiScaleOutput(logits=[], boxes=[], rollout=[], cls_attention=[])
        _append_heads(out, bb, feats)
        if num_scales > 1:
            rollout, _, _, box = self._propose_boxes(feats)
            box = self._to_input(box)
            out.rollout.append(rollout)
            out.boxes.append(box)
            self._zoom_scales(x, box, num_scales, out)
        return out

    def _zoom_scales(self, x: Tensor, box: Tensor, num_scales: int, out: MultiScaleOutput) -> None:
        """Scales 2 .. ``num_scales`` from scale 1's proposal ``box`` (B, 4) in the batch's pixels, appended to
        ``out``."""
        bb = self.backbone
        for scale in range(1, num_scales):
            is_last = scale == num_scales - 1
            feats = bb.forward_features(self.zoom(x, box, scale), scale=scale, capture="cls" if is_last else "all")
            _append_heads(out, bb, feats)
            if is_last:
                break
            rollout, _, _, local = self._propose_boxes(feats, scale)
            box = compose_boxes(box, local, self.scale_sizes[scale])
            out.rollout.append(rollout)
            out.boxes.append(box)

    @torch.no_grad()
    def predict(
        self,
        x: Tensor,
        scales: int | str = 1,
        zoom_threshold: float = 0.5,
        zoom_on: ZoomCriterion = "maxprob",
        boxes: bool = True,
    ) -> Prediction:
        """Test-time class probabilities: single scale, the fusion of the first ``scales`` scales, or adaptive.

        Adaptive (``scales="auto"``): every image runs scale 1; only those whose scale-1 confidence (``zoom_on``: the
        top probability, the margin between the top two, or ``gate``: 1 − the fitted zoom gate's probability that the
        zoom changes the answer) is below ``zoom_threshold`` run the zoomed scales, and
        their scales' probabilities are averaged. Threshold 0 is the single-scale model, a threshold above 1 the full
        fusion. Fused probabilities are the mean of the scales' softmax. With a distillation token the probabilities
        are those of ``eval_head`` (the zoom decision too), and every head's are in ``head_probs``.

        Args:
            x: (B, C, H, W) normalised images at ``input_size``.
            scales: 1, a number of scales to fuse, or "auto".
            zoom_threshold: adaptive only: zoom the images whose confidence is below it.
            zoom_on: "maxprob", "margin" or "gate" (needs ``zoom_gate``).
            boxes: also return scale 1's proposal (single scale: costs the attention capture).

        Returns:
            Prediction with (B, K) probabilities, (B, 4) boxes (or None), (B,) zoomed flags and the per-scale
            probabilities (NaN rows for scales not run).
        """
        self.check_input(x)
        adaptive = scales == "auto"
        num_scales = self.num_scales if adaptive else self._num_scales(scales)
        check_zoom_on(zoom_on, adaptive, self.zoom_gate is not None)
        bb = self.backbone
        captured = boxes or num_scales > 1
        feats = bb.forward_features(self.glance(x), scale=0, capture="all" if captured else "none")
        box = self._to_input(self._propose_boxes(feats)[3]) if captured else None
        first = head_probs(*bb.forward_heads(feats.tokens), self.temperature)
        main = self.eval_head if bb.has_dist_token else "cls"
        zoomed = torch.full_like(first[main][:, 0], num_scales > 1, dtype=torch.bool)
        if adaptive:
            zoomed = self.zoom_score(bb.pre_logits(feats.tokens), first[main], zoom_on) < zoom_threshold
        idx = zoomed.nonzero(as_tuple=True)[0] if adaptive else None  # the images to zoom: one host sync per batch
        sub = MultiScaleOutput(logits=[], boxes=[], rollout=[], cls_attention=[])
        if num_scales > 1 and (idx is None or idx.numel() > 0):
            assert box is not None  # captured: num_scales > 1
            self._zoom_scales(x if idx is None else x[idx], box if idx is None else box[idx], num_scales, sub)
        zooms = [head_probs(c, d, self.temperature) for c, d in zip(sub.logits, sub.dist_per_scale())]
        return assemble_prediction(first, zooms, idx, main, box if boxes else None, zoomed, bb.has_dist_token)

    def zoom_score(self, pooled: Tensor, probs: Tensor, zoom_on: ZoomCriterion) -> Tensor:
        """(B,) scale-1 confidence that adaptive zoom compares with its threshold (zoom below it).

        Args:
            pooled: (B, D) scale-1 pooled features.
            probs: (B, K) scale-1 probabilities (of the test-time head).
            zoom_on: "maxprob", "margin", or "gate": 1 − the zoom gate's probability that zooming changes the answer.
        """
        if zoom_on == "gate":
            if self.zoom_gate is None:
                raise UsageError("zoom_on 'gate' needs a fitted zoom gate (ramstrans fit-gate)")
            return 1.0 - self.zoom_gate(pooled, probs)
        return zoom_confidence(probs, zoom_on)

    def head_logits(self, out: MultiScaleOutput) -> list[Tensor]:
        """Per scale, the (B, K) test-time logits of ``out``: the class head's, or with a distillation token those of
        ``eval_head``."""
        if not out.dist_logits:
            return list(out.logits)
        return [select_head(c, d, self.eval_head) for c, d in zip(out.logits, out.dist_logits)]

    @torch.no_grad()
    def propose(self, x: Tensor) -> Proposal:
        """The scale-1 proposal from one pass (no gradient).

        Args:
            x: (B, C, H, W) normalised images at ``input_size``.

        Returns:
            Proposal with the rollout, mask, kept component, boxes (in the batch's pixels) and the scale-1 logits.
        """
        self.check_input(x)
        feats = self.backbone.forward_features(self.glance(x), scale=0, capture="all")
        rollout, mask, component, boxes = self._propose_boxes(feats)
        return Proposal(
            logits=self.backbone.forward_head(feats.tokens, self.eval_head),
            rollout=rollout,
            mask=mask,
            component=component,
            boxes=self._to_input(boxes),
        )

    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay: the backbone's (tokens, position
        embedding)."""
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups (for layer-wise lr decay): the backbone's, under this module's parameter names."""
        return {name: prefixed(rule, r"backbone\.") for name, rule in self.backbone.group_matcher(coarse).items()}


def _sizes(
    backbone: ZoomBackbone, scale_sizes: Sequence[int] | None, source_size: int | None
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Per scale the (H, W) it runs at, and the (H, W) of the batches, each served by the backbone.

    Raises:
        UsageError: not one size per scale, a size the backbone cannot take (its sentence), or a source smaller than the
            input.
    """
    sizes = [backbone.img_size] * backbone.num_scales
    if scale_sizes:
        if len(scale_sizes) != backbone.num_scales:
            raise UsageError(
                f"model.scale_sizes {list(scale_sizes)} must give one size per scale ({backbone.num_scales})"
            )
        sizes = [(int(s), int(s)) for s in scale_sizes]
    for size in sizes:
        if size == backbone.img_size:
            continue
        check = getattr(backbone, "check_size", None)
        if check is None:
            raise UsageError(
                f"model.scale_sizes {size[0]}: the '{backbone.saliency}' backbone family runs only at model.img_size"
            )
        check(size)
    if source_size is None:
        return sizes, backbone.img_size
    if getattr(backbone, "check_size", None) is None:
        raise UsageError(
            f"model.zoom_source source needs a backbone family that serves other input sizes; the "
            f"'{backbone.saliency}' family runs only at model.img_size"
        )
    if source_size < max(backbone.img_size):
        raise UsageError(f"data.source_size {source_size} must be at least model.img_size {max(backbone.img_size)}")
    return sizes, (int(source_size), int(source_size))


def _append_heads(out: MultiScaleOutput, bb: ZoomBackbone, feats: Features) -> None:
    """One scale's class-token logits (and distillation-token logits), pooled features and head query's attention
    (where the backbone has attention) from its pass onto ``out``."""
    tokens = feats.tokens
    if feats.cls_attention is not None:
        out.cls_attention.append(feats.cls_attention)
    cls, dist = bb.forward_heads(tokens)
    out.logits.append(cls)
    if dist is not None:
        out.dist_logits.append(dist)
    if not bb.training:
        out.features.append(bb.pre_logits(tokens))
