"""RAMS-Trans: one shared backbone run at several scales, each zooming on the previous scale's saliency proposal.

Scale 1 sees the image; its saliency (the attention rollout of a ViT, the attention pool's map, or a CNN's channel-
summed activation) is thresholded into a box (the Dynamic Patch Proposal Module); scale k + 1 sees that box of the
ORIGINAL image resized to the input size (one resampling however deep the recursion, so no blur accumulates), with its
own CLS token where the backbone has one. At test time only scale 1 runs: ``forward`` is the plain timm forward.
"""

from typing import TYPE_CHECKING, Any, cast

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ramstrans.errors import UsageError
from ramstrans.models.backbones.base import SALIENCIES, Features, Saliency, ZoomBackbone, prefixed
from ramstrans.models.backbones.distilled import HEADS, Head, select_head
from ramstrans.models.backbones.net import NetBackbone, create_net
from ramstrans.models.backbones.pretrained import load_pretrained
from ramstrans.models.backbones.vit import ViTBackbone, create_vit
from ramstrans.models.gate import ZoomGate
from ramstrans.models.outputs import (
    MultiScaleOutput,
    Prediction,
    Proposal,
    fuse_probs,
    fused_log_probs,
    zoom_confidence,
)
from ramstrans.models.proposal import (
    component_boxes,
    compose_boxes,
    crop_and_zoom,
    largest_component,
    threshold_rollout,
)
from ramstrans.models.rollout import RolloutRows, attention_rollout
from ramstrans.models.testtime import ZOOM_CRITERIA, ZoomCriterion, assemble_prediction, check_zoom_on, head_probs

if TYPE_CHECKING:  # the classifier imports this module
    from ramstrans.models.classifier import Classifier

__all__ = [
    "RAMSTrans",
    "MultiScaleForward",
    "MultiScaleOutput",
    "Prediction",
    "Proposal",
    "ZoomCriterion",
    "create_model",
    "zoom_confidence",
    "fused_log_probs",
    "fuse_probs",
    "ZOOM_CRITERIA",
]


class RAMSTrans(nn.Module):
    """Recurrent attention multi-scale transformer on a timm ViT (or, with the activation saliency, any timm model).

    Args:
        backbone: a timm model name (a ViT with one CLS token and token pooling, an Eva, an attention-pooled ViT with
            ``saliency="attn_pool"``, any classifier with ``saliency="activation"``), a built timm model, or a built
            ``ViTBackbone`` / ``NetBackbone`` (whose number of scales must be ``num_scales``).
        num_classes: number of classes K; None keeps the model's own (a name: timm's default).
        img_size: input size (int or (H, W)) of a backbone built by name; None keeps timm's default.
        num_scales: 1 is the plain ViT baseline, 2 the paper's model; more recurse.
        alpha: proposal threshold factor: mask = g > alpha * mean(g).
        residual: χ in Â = rownorm(A + χI).
        rollout_rows: "cls" (CLS query row) or "mean" (mean of all query rows, as the official code).
        pretrained: optional weights source (see ``load_pretrained``).
        download_timeout_s: the longest a download of hub weights may take in all.
        dist_token: a class and a distillation token per scale on timm's distilled layout (a DeiT student).
        eval_head: with a distillation token, the test-time logits: "mean" of the two heads (DeiT's), "cls" or "dist".
        attn_window: 0 (global attention) or the radius of sliding-window attention on the patch grid (a backbone
            given by name).
        ffn: "mlp" (timm's) or "conv" (``ConvMlp``: a depthwise convolution of the patch tokens; by name).
        ffn_kernel: the conv feed-forward's odd kernel.
        ffn_prefix: the conv feed-forward's treatment of the class / distillation tokens: "mlp" or "bypass".
        fwt: "off", "fixed" or "learned": the feature-wise transformation layers (training only).
        saliency: what the proposal thresholds: "rollout" (the class token's attention rollout), "attn_pool" (an
            attention pool's query over the patches) or "activation" (the last feature map's channel-summed
            magnitude, SCDA's; any timm model).
        **backbone_kwargs: passed on to ``timm.create_model`` when ``backbone`` is a name.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "vit_base_patch16_224",
        num_classes: int | None = None,
        img_size: int | tuple[int, int] | None = None,
        num_scales: int = 2,
        alpha: float = 1.3,
        residual: float = 1.0,
        rollout_rows: RolloutRows = "cls",
        pretrained: str | None = None,
        download_timeout_s: float = 60.0,
        dist_token: bool = False,
        eval_head: Head = "mean",
        attn_window: int = 0,
        ffn: str = "mlp",
        ffn_kernel: int = 3,
        ffn_prefix: str = "mlp",
        fwt: str = "off",
        saliency: Saliency = "rollout",
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not isinstance(num_scales, int) or num_scales < 1:
            raise UsageError(f"num_scales must be an integer >= 1, got {num_scales!r}")
        if not alpha > 0:
            raise UsageError(f"alpha must be > 0, got {alpha!r}")
        if not residual >= 0:
            raise UsageError(f"residual must be >= 0, got {residual!r}")
        if rollout_rows not in ("cls", "mean"):
            raise UsageError(f"rollout_rows must be 'cls' or 'mean', got {rollout_rows!r}")
        if eval_head not in HEADS:
            raise UsageError(f"eval_head must be one of {', '.join(HEADS)}, got {eval_head!r}")
        if ffn not in ("mlp", "conv"):
            raise UsageError(f"ffn must be 'mlp' or 'conv', got {ffn!r}")
        if saliency not in SALIENCIES:
            raise UsageError(f"saliency must be one of {', '.join(SALIENCIES)}, got {saliency!r}")
        options = dict(
            saliency=saliency,
            dist_token=dist_token,
            attn_window=attn_window,
            ffn=ffn,
            ffn_kernel=ffn_kernel,
            ffn_prefix=ffn_prefix,
            fwt=fwt,
        )
        self.backbone = _as_backbone(backbone, num_classes, img_size, num_scales, options, backbone_kwargs)
        self.eval_head: Head = eval_head
        self.num_classes = self.backbone.num_classes
        self.num_scales = num_scales
        self.alpha = float(alpha)
        self.residual = float(residual)
        self.rollout_rows: RolloutRows = rollout_rows
        self.zoom_gate: ZoomGate | None = None  # fitted after training (``fit_zoom_gate``) for zoom_on="gate"
        self.temperature = 1.0  # every scale's test-time logits are divided by it (eval --calibrate fits it)
        if pretrained:
            load_pretrained(self.backbone, pretrained, download_timeout_s)

    def forward(self, x: Tensor) -> Tensor:
        """Single-scale logits: the test-time path, exactly a plain ViT forward with fused attention.

        Args:
            x: (B, C, H, W) normalised images.

        Returns:
            (B, K) logits (with a distillation token: of ``eval_head``).
        """
        self.backbone.check_input(x, "RAMSTrans")
        return self.backbone(x, scale=0, head=self.eval_head)

    def saliency_map(self, feats: Features) -> Tensor:
        """(B, gh, gw) saliency of a pass that captured (capture "all"): the attention rollout, or the map the
        backbone gives directly (attention pool, activation)."""
        bb = self.backbone
        if bb.saliency == "rollout":
            return attention_rollout(
                feats.attentions, bb.grid_size, self.residual, self.rollout_rows, bb.num_prefix_tokens
            )
        if feats.saliency is None:
            raise RuntimeError("this pass captured no saliency (capture 'none')")
        return feats.saliency

    def _propose_boxes(self, feats: Features) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Saliency -> mask -> largest component -> (B, 4) pixel boxes of the scale's own input."""
        bb = self.backbone
        rollout = self.saliency_map(feats)
        mask = threshold_rollout(rollout, self.alpha)
        component = largest_component(mask)
        return rollout, mask, component, component_boxes(component, bb.cell_size, bb.img_size)

    def _num_scales(self, num_scales: int | str | None) -> int:
        num_scales = self.num_scales if num_scales is None else num_scales
        if not isinstance(num_scales, int) or not 1 <= num_scales <= self.num_scales:
            raise UsageError(f"this model has {self.num_scales} scale(s); cannot run {num_scales}")
        return num_scales

    def forward_multiscale(self, x: Tensor, num_scales: int | None = None) -> MultiScaleOutput:
        """All scales, for training: scale k + 1 zooms on the proposal of scale k.

        Args:
            x: (B, C, H, W) normalised images.
            num_scales: run only the first this many scales (default: all).

        Returns:
            MultiScaleOutput with num_scales logits and num_scales - 1 boxes / rollouts.
        """
        self.backbone.check_input(x, "RAMSTrans")
        num_scales = self._num_scales(num_scales)
        bb = self.backbone
        feats = bb.forward_features(x, scale=0, capture="cls" if num_scales == 1 else "all")
        out = MultiScaleOutput(logits=[], boxes=[], rollout=[], cls_attention=[])
        _append_heads(out, bb, feats)
        if num_scales > 1:
            rollout, _, _, box = self._propose_boxes(feats)
            out.rollout.append(rollout)
            out.boxes.append(box)
            self._zoom_scales(x, box, num_scales, out)
        return out

    def _zoom_scales(self, x: Tensor, box: Tensor, num_scales: int, out: MultiScaleOutput) -> None:
        """Scales 2 .. ``num_scales`` from scale 1's proposal ``box`` (B, 4), appended to ``out``."""
        bb = self.backbone
        H, W = bb.img_size
        for scale in range(1, num_scales):
            is_last = scale == num_scales - 1
            feats = bb.forward_features(crop_and_zoom(x, box, (H, W)), scale=scale, capture="cls" if is_last else "all")
            _append_heads(out, bb, feats)
            if is_last:
                break
            rollout, _, _, local = self._propose_boxes(feats)
            box = compose_boxes(box, local, (H, W))
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
            x: (B, C, H, W) normalised images.
            scales: 1, a number of scales to fuse, or "auto".
            zoom_threshold: adaptive only: zoom the images whose confidence is below it.
            zoom_on: "maxprob", "margin" or "gate" (needs ``zoom_gate``).
            boxes: also return scale 1's proposal (single scale: costs the attention capture).

        Returns:
            Prediction with (B, K) probabilities, (B, 4) boxes (or None), (B,) zoomed flags and the per-scale
            probabilities (NaN rows for scales not run).
        """
        self.backbone.check_input(x, "RAMSTrans")
        adaptive = scales == "auto"
        num_scales = self.num_scales if adaptive else self._num_scales(scales)
        check_zoom_on(zoom_on, adaptive, self.zoom_gate is not None)
        bb = self.backbone
        captured = boxes or num_scales > 1
        feats = bb.forward_features(x, scale=0, capture="all" if captured else "none")
        box = self._propose_boxes(feats)[3] if captured else None
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
            x: (B, C, H, W) normalised images.

        Returns:
            Proposal with the rollout, mask, kept component, boxes and the scale-1 logits.
        """
        self.backbone.check_input(x, "RAMSTrans")
        feats = self.backbone.forward_features(x, scale=0, capture="all")
        rollout, mask, component, boxes = self._propose_boxes(feats)
        return Proposal(
            logits=self.backbone.forward_head(feats.tokens, self.eval_head),
            rollout=rollout,
            mask=mask,
            component=component,
            boxes=boxes,
        )

    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay: the backbone's (tokens, position
        embedding)."""
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups (for layer-wise lr decay): the backbone's, under this module's parameter names."""
        return {name: prefixed(rule, r"backbone\.") for name, rule in self.backbone.group_matcher(coarse).items()}


class MultiScaleForward(nn.Module):
    """A view of a RAMSTrans whose ``forward`` is ``forward_multiscale``: what the trainer (and DDP) call.

    Args:
        model: the RAMSTrans to train.
    """

    def __init__(self, model: "RAMSTrans | Classifier") -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> MultiScaleOutput:
        return self.model.forward_multiscale(x)


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


def _as_backbone(
    backbone: str | nn.Module,
    num_classes: int | None,
    img_size: int | tuple[int, int] | None,
    num_scales: int,
    options: dict[str, Any],
    kwargs: dict[str, Any],
) -> ViTBackbone | NetBackbone:
    """The backbone from a name, a timm model or a built backbone, checked against the arguments (``options``:
    saliency, dist_token, attn_window, ffn, ffn_kernel, ffn_prefix, fwt)."""
    if options["saliency"] == "activation":
        return _as_net(backbone, num_classes, img_size, num_scales, options, kwargs)
    dist_token = options["dist_token"]
    sizing = {k: options[k] for k in ("attn_window", "ffn_kernel", "ffn_prefix", "fwt", "saliency")}
    if isinstance(backbone, str):
        vit = create_vit(
            backbone,
            img_size,
            num_classes,
            window_attention=options["attn_window"] > 0,
            conv_ffn=options["ffn"] == "conv",
            attn_window=options["attn_window"],
            ffn_kernel=options["ffn_kernel"],
            ffn_prefix=options["ffn_prefix"],
            dist_token=dist_token,
            saliency=options["saliency"],
            **kwargs,
        )
        return ViTBackbone(vit=vit, num_scales=num_scales, dist_token=dist_token or None, **sizing)
    _refuse_sizing(backbone, img_size, kwargs)
    if isinstance(backbone, NetBackbone):
        raise UsageError("a NetBackbone zooms with saliency 'activation' only")
    if not isinstance(backbone, ViTBackbone):
        backbone = ViTBackbone(
            vit=cast(VisionTransformer, backbone), num_scales=num_scales, dist_token=dist_token or None, **sizing
        )
    if backbone.saliency != options["saliency"]:
        raise UsageError(f"the given backbone's saliency is {backbone.saliency}, saliency is {options['saliency']}")
    if dist_token and not backbone.has_dist_token:
        raise UsageError("dist_token is True but the given backbone has no distillation token")
    return _checked(backbone, num_scales, num_classes)


def _as_net(
    backbone: str | nn.Module,
    num_classes: int | None,
    img_size: int | tuple[int, int] | None,
    num_scales: int,
    options: dict[str, Any],
    kwargs: dict[str, Any],
) -> NetBackbone:
    """A NetBackbone for the activation saliency: none of the ViT-only options may be set."""
    vit_only = {"dist_token": False, "attn_window": 0, "ffn": "mlp", "fwt": "off"}
    for key, default in vit_only.items():
        if options[key] != default:
            raise UsageError(f"model.{key} needs a ViT backbone; saliency 'activation' runs any timm model as it is")
    if isinstance(backbone, str):
        net = create_net(backbone, img_size, num_classes, **kwargs)
        size = img_size or tuple(cast(Any, net).pretrained_cfg["input_size"][1:])
        backbone = NetBackbone(net=net, img_size=size, num_scales=num_scales)
    else:
        _refuse_sizing(backbone, img_size, kwargs)
    if not isinstance(backbone, NetBackbone):
        raise UsageError(f"saliency 'activation' needs a model name or a NetBackbone, got a {type(backbone).__name__}")
    backbone.check_zoomable()
    return _checked(backbone, num_scales, num_classes)


def _refuse_sizing(backbone: nn.Module, img_size: int | tuple[int, int] | None, kwargs: dict[str, Any]) -> None:
    """Refuse sizes and timm arguments for a backbone that is already built."""
    if kwargs or img_size is not None:
        raise UsageError(
            "img_size and timm keyword arguments apply to a backbone given by name, not to a built "
            f"{type(backbone).__name__}"
        )


def _checked(backbone: Any, num_scales: int, num_classes: int | None) -> Any:
    """A built backbone, refused when its scales or classes differ from the arguments."""
    if backbone.num_scales != num_scales:
        raise UsageError(f"the given backbone has {backbone.num_scales} scale(s), num_scales is {num_scales}")
    if num_classes is not None and backbone.num_classes != num_classes:
        raise UsageError(f"the given backbone has {backbone.num_classes} classes, num_classes is {num_classes}")
    return backbone


def create_model(**kwargs: Any) -> RAMSTrans:
    """Build a RAMSTrans; keyword arguments as ``RAMSTrans``."""
    return RAMSTrans(**kwargs)
