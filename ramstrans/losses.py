"""Multi-scale classification loss: a weighted cross-entropy per scale, returned as named terms."""
from typing import Dict, Optional, Sequence, Union

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiScaleLoss"]


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

    def forward(self, logits: Sequence[Tensor], targets: Union[Tensor, Sequence[Tensor]]) -> Dict[str, Tensor]:
        """Weighted per-scale terms.

        Args:
            logits: per scale, (B, K).
            targets: (B,) indices or (B, K) soft targets shared by all scales, or a sequence with one per scale.

        Returns:
            {"ce_scale1": ..., "ce_scale2": ..., ...}: weighted scalar terms; the total loss is their sum.
        """
        if len(logits) != len(self.weights):
            raise ValueError(f"got logits for {len(logits)} scales but {len(self.weights)} loss weights")
        per_scale = list(targets) if isinstance(targets, (list, tuple)) else [targets] * len(logits)
        return {f"ce_scale{s + 1}": w * self._ce(lg, t)
                for s, (lg, t, w) in enumerate(zip(logits, per_scale, self.weights))}
