"""What the models return, and the fusion of per-scale predictions (one code path, so every fusion is the same).

``MultiScaleOutput`` is a training forward's output, ``Prediction`` a test-time one, ``Proposal`` the scale-1 proposal
of one batch; ``fuse_probs`` / ``fused_log_probs`` fuse scales as ``predict`` does; ``zoom_confidence`` is what
adaptive zoom compares with its threshold.
"""

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

__all__ = [
    "MultiScaleOutput",
    "MultiScaleForward",
    "Prediction",
    "Proposal",
    "zoom_confidence",
    "fuse_probs",
    "fused_log_probs",
]


@dataclass
class MultiScaleOutput:
    """Everything a multi-scale training step needs.

    Attributes:
        logits: per scale, (B, K).
        boxes: per zoom (num_scales - 1 entries), (B, 4) float xyxy in original-image pixels.
        rollout: per zoom, (B, gh, gw) saliency of the scale that proposed the box.
        cls_attention: per scale, (B, gh * gw) last block's head-mean CLS attention over patches (for TransMix).
        dist_logits: per scale, (B, K) of the distillation token's head; empty without a distillation token. With
            one, ``logits`` are the class token's head (the label-supervised one).
        features: per scale, (B, D) pooled pre-logit features (timm's ``forward_head(pre_logits=True)``), in eval mode
            only (in training, reading them would draw the head dropout a second time); empty otherwise.
    """

    logits: list[Tensor]
    boxes: list[Tensor]
    rollout: list[Tensor]
    cls_attention: list[Tensor]
    dist_logits: list[Tensor] = field(default_factory=list)
    features: list[Tensor] = field(default_factory=list)

    def dist_per_scale(self) -> list[Tensor | None]:
        """Per scale, the distillation head's (B, K) logits, or None without a distillation token."""
        return list(self.dist_logits) if self.dist_logits else [None] * len(self.logits)


@dataclass
class Prediction:
    """Test-time output of ``RAMSTrans.predict``.

    Attributes:
        probs: (B, K) class probabilities (the mean of the fused scales' softmax; scale 1 alone where not zoomed).
        boxes: (B, 4) xyxy pixels of scale 1's proposal, or None when not asked for.
        zoomed: (B,) bool, which images ran the zoomed scales.
        scale_probs: per scale, (B, K) softmax; NaN rows where the scale did not run.
        head_probs: with a distillation token, the fused (B, K) probabilities of every head ("mean", "cls",
            "dist"), zoomed as ``probs``; empty without one.
    """

    probs: Tensor
    boxes: Tensor | None
    zoomed: Tensor
    scale_probs: list[Tensor]
    head_probs: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Proposal:
    """The scale-1 proposal for one batch (for visualisation and localization metrics).

    Attributes:
        logits: (B, K) scale-1 logits of the same pass.
        rollout: (B, gh, gw) patch saliency.
        mask: (B, gh, gw) bool, rollout > alpha * mean.
        component: (B, gh, gw) bool, the kept (largest 8-connected) component of the mask.
        boxes: (B, 4) float xyxy pixels of the input; the full image when the mask is empty.
    """

    logits: Tensor
    rollout: Tensor
    mask: Tensor
    component: Tensor
    boxes: Tensor


def zoom_confidence(probs: Tensor, zoom_on: str = "maxprob") -> Tensor:
    """(B, K) probabilities -> (B,) confidence: the top probability, or ("margin") top-1 minus top-2."""
    if zoom_on == "margin":
        top = probs.topk(min(2, probs.shape[-1]), dim=-1).values
        return top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0.0)
    return probs.max(dim=-1).values


def fuse_probs(probs: list[Tensor]) -> Tensor:
    """The mean of per-scale (B, K) probabilities (one code path, so every fusion is bit-identical)."""
    return torch.stack(probs).mean(dim=0)


def fused_log_probs(logits: list[Tensor]) -> Tensor:
    """Per-scale (B, K) logits -> (B, K) float32 log of the mean of their softmax: the log of the test-time fusion
    (``predict``'s probabilities), computed stably as logsumexp of the log-softmaxes minus log S."""
    log_probs = torch.stack([torch.log_softmax(z.float(), dim=-1) for z in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))


class MultiScaleForward(nn.Module):
    """A view of a model whose ``forward`` is its ``forward_multiscale``: what the trainer (and DDP) call.

    Args:
        model: the RAMSTrans (or Classifier) to train.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> MultiScaleOutput:
        """(B, C, H, W) normalised images -> the ``MultiScaleOutput`` of every scale."""
        out: MultiScaleOutput = cast(Any, self.model).forward_multiscale(x)
        return out
