"""The training criterion of RAMS-Trans: the multi-scale CE. Like DeiT's, a criterion sees the inputs and the model's
output and returns named scalar terms whose sum is the loss; teachers (``ramstrans.distill``) wrap it."""

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ramstrans.errors import UsageError
from ramstrans.models import MultiScaleOutput

__all__ = ["MultiScaleLoss", "Targets"]

Targets = Tensor | Sequence[Tensor]


class MultiScaleLoss(nn.Module):
    """Sum over scales of weight_s * CE(logits_s, target_s).

    Hard targets are (B,) class indices (label smoothing applied here); soft targets are (B, K) rows summing to 1
    (from mixing, which has applied any smoothing already, so it is not applied twice). With logit adjustment (Menon
    et al., ICLR 2021) every label term sees logits + τ·log(prior): the model learns the balanced posterior, and its
    own logits are used at test time. Teachers' terms (``ramstrans.distill``) compare plain logits; their label terms
    go through ``ce`` and are adjusted too.

    Args:
        weights: per-scale weights (λ for the zoomed scales); length = number of scales.
        label_smoothing: smoothing for hard targets.
        prior: (K,) class frequencies of the training split (for ``logit_adjust``).
        logit_adjust: τ >= 0 (0: off, bit-identical to no adjustment).
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0),
        label_smoothing: float = 0.0,
        prior: Tensor | None = None,
        logit_adjust: float = 0.0,
    ) -> None:
        super().__init__()
        if not weights or any(w < 0 for w in weights):
            raise UsageError(f"loss weights must be a non-empty list of non-negative numbers, got {list(weights)}")
        if not 0.0 <= label_smoothing < 1.0:
            raise UsageError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not 0.0 <= logit_adjust < float("inf") or (logit_adjust > 0 and (prior is None or not (prior > 0).all())):
            raise UsageError(f"logit_adjust must be finite and >= 0 with a positive prior, got {logit_adjust}")
        self.weights = tuple(float(w) for w in weights)
        self.label_smoothing = float(label_smoothing)
        # (K,) τ·log(prior), added to the logits of every label term; not part of any checkpoint (recounted on resume)
        offset = logit_adjust * prior.double().log() if prior is not None and logit_adjust > 0 else None
        self.register_buffer("offset", None if offset is None else offset.float(), persistent=False)
        self.offset: Tensor | None

    def ce(self, logits: Tensor, target: Tensor) -> Tensor:
        """CE of (B, K) logits (adjusted by the prior when configured) against (B,) indices (smoothed) or (B, K) soft
        targets, in float32."""
        logits = logits.float() if self.offset is None else logits.float() + self.offset
        if target.dim() == 2:
            return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def forward(self, inputs: Tensor, output: MultiScaleOutput, targets: Targets) -> dict[str, Tensor]:
        """Weighted per-scale terms.

        Args:
            inputs: (B, C, H, W) the images the model saw (unused here; a distillation criterion needs them).
            output: the model's MultiScaleOutput with one (B, K) logits tensor per scale.
            targets: (B,) indices or (B, K) soft targets shared by all scales, or a sequence with one per scale.

        Returns:
            {"ce_scale1": ..., "ce_scale2": ..., ...}: weighted scalar terms; the total loss is their sum. With a
            distillation token and no teacher, both heads learn the labels: each scale's term is the mean of the
            class head's and the distillation head's CE.
        """
        per_scale = self.per_scale_targets(output, targets)
        dist = output.dist_per_scale()
        return {
            f"ce_scale{s + 1}": w * self.label_term(lg, d, t)
            for s, (lg, d, t, w) in enumerate(zip(output.logits, dist, per_scale, self.weights))
        }

    def label_term(self, cls: Tensor, dist: Tensor | None, target: Tensor) -> Tensor:
        """One scale's CE on the labels: the class head's, or the mean of both heads' when there is a distillation
        head (which then learns the labels too)."""
        return self.ce(cls, target) if dist is None else (self.ce(cls, target) + self.ce(dist, target)) / 2

    def per_scale_targets(self, output: MultiScaleOutput, targets: Targets) -> list[Tensor]:
        """One target per scale (the shared one repeated), checked against the number of scales."""
        if len(output.logits) != len(self.weights):
            raise UsageError(f"got logits for {len(output.logits)} scales but {len(self.weights)} loss weights")
        if isinstance(targets, Tensor):
            return [targets] * len(output.logits)
        return list(targets)
