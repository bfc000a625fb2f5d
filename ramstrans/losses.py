"""Training criteria. Like DeiT's, a criterion sees the inputs and the model's output (a distillation loss runs a
teacher on the inputs), and returns named scalar terms whose sum is the loss."""
from typing import Dict, Sequence, Union

import torch.nn.functional as F
from torch import Tensor, nn

from .models import MultiScaleOutput

__all__ = ["MultiScaleLoss", "build_criterion"]

Targets = Union[Tensor, Sequence[Tensor]]


class MultiScaleLoss(nn.Module):
    """Sum over scales of weight_s * CE(logits_s, target_s).

    Hard targets are (B,) class indices (label smoothing applied here); soft targets are (B, K) rows summing to 1
    (from mixing, which has applied any smoothing already, so it is not applied twice).

    Args:
        weights: per-scale weights (λ for the zoomed scales); length = number of scales.
        label_smoothing: smoothing for hard targets.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0), label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not weights or any(w < 0 for w in weights):
            raise ValueError(f"loss weights must be a non-empty list of non-negative numbers, got {list(weights)}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.weights = tuple(float(w) for w in weights)
        self.label_smoothing = float(label_smoothing)

    def _ce(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.dim() == 2:
            return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)

    def forward(self, inputs: Tensor, output: MultiScaleOutput, targets: Targets) -> Dict[str, Tensor]:
        """Weighted per-scale terms.

        Args:
            inputs: (B, C, H, W) the images the model saw (unused here; a distillation criterion needs them).
            output: the model's MultiScaleOutput with one (B, K) logits tensor per scale.
            targets: (B,) indices or (B, K) soft targets shared by all scales, or a sequence with one per scale.

        Returns:
            {"ce_scale1": ..., "ce_scale2": ..., ...}: weighted scalar terms; the total loss is their sum.
        """
        logits = output.logits
        if len(logits) != len(self.weights):
            raise ValueError(f"got logits for {len(logits)} scales but {len(self.weights)} loss weights")
        per_scale = list(targets) if isinstance(targets, (list, tuple)) else [targets] * len(logits)
        return {f"ce_scale{s + 1}": w * self._ce(lg, t)
                for s, (lg, t, w) in enumerate(zip(logits, per_scale, self.weights))}


def build_criterion(loss_cfg, num_scales: int) -> MultiScaleLoss:
    """The only place that maps ``cfg.loss`` to a criterion.

    Raises:
        ValueError: ``loss.scale_weights`` does not have one entry per scale.
    """
    if len(loss_cfg.scale_weights) != num_scales:
        raise ValueError(f"loss.scale_weights has {len(loss_cfg.scale_weights)} entries but model.num_scales is "
                         f"{num_scales}")
    return MultiScaleLoss(weights=loss_cfg.scale_weights, label_smoothing=loss_cfg.label_smoothing)
