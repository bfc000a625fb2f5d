"""The zoom as scale 1's teacher: scale self-distillation from the fused (or deepest) prediction of the same forward,
or of the EMA weights' forward."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramstrans.distill.loss import kd_term
from ramstrans.errors import UsageError
from ramstrans.losses import MultiScaleLoss, Targets
from ramstrans.models import MultiScaleOutput, RAMSTrans, fused_log_probs
from ramstrans.models.backbones.distilled import Head, select_head

__all__ = ["SelfDistillationLoss"]


class SelfDistillationLoss(nn.Module):
    """RAMS-Trans with its own zoom as scale 1's teacher: the multi-scale CE of ``base`` plus
    ``sd_scale1`` = β · τ² · KL(target_τ ‖ softmax(z_1 / τ)) (batchmean), where target_τ = softmax(log p / τ) of the
    detached target p: the fusion of all scales (the mean of their softmax, exactly ``RAMSTrans.predict``'s) or the
    deepest scale alone. At τ = 1 target_τ is p itself.

    The target comes from the same forward (no extra pass), detached: on a mixed batch it is the prediction of the
    mixed image. With ``ema`` it comes from the EMA weights' own multi-scale forward of the same inputs instead (two
    passes without gradient). With a distillation token the scale-1 distillation head takes the term and the class
    head keeps the labels (DeiT's split); the target is fused from the ``head`` logits of every scale.

    Args:
        base: the multi-scale CE (scale weights, label smoothing); at least two scales.
        beta: β >= 0.
        tau: τ > 0.
        target: "fused" or "last".
        head: with a distillation token, the head whose logits make the target (the model's test-time head).
        ema: a RAMSTrans (the EMA copy) whose forward gives the target, or None for the step's own output.
    """

    def __init__(
        self,
        *,
        base: MultiScaleLoss,
        beta: float,
        tau: float = 1.0,
        target: str = "fused",
        head: Head = "mean",
        ema: RAMSTrans | None = None,
    ) -> None:
        super().__init__()
        if len(base.weights) < 2:
            raise UsageError("self-distillation needs at least two scales: the zoomed scales are scale 1's teacher")
        if not beta >= 0 or not tau > 0 or target not in ("fused", "last"):
            raise UsageError(
                f"self-distillation needs beta >= 0, tau > 0 and target fused or last, got {beta}, {tau} and {target!r}"
            )
        self.base, self.beta, self.tau, self.target = base, float(beta), float(tau), target
        self.head, self.ema = head, ema

    def target_log_probs(self, inputs: Tensor, output: MultiScaleOutput) -> Tensor:
        """(B, K) detached float32 log-probabilities of the target at τ = 1."""
        if self.ema is not None:
            with torch.no_grad():
                output = self.ema.forward_multiscale(inputs)
        dists = output.dist_per_scale()
        logits = [(c if d is None else select_head(c, d, self.head)).detach() for c, d in zip(output.logits, dists)]
        return fused_log_probs(logits) if self.target == "fused" else F.log_softmax(logits[-1].float(), dim=-1)

    def forward(self, inputs: Tensor, output: MultiScaleOutput, targets: Targets) -> dict[str, Tensor]:
        """The base terms (with a distillation token, ``ce_scale1`` of the class head alone) and ``sd_scale1``.

        Args:
            inputs: (B, C, H, W) the (mixed) images the model saw at scale 1.
            output: the model's MultiScaleOutput.
            targets: as ``MultiScaleLoss``.
        """
        terms = self.base(inputs, output, targets)
        student = output.logits[0]
        if output.dist_logits:
            student = output.dist_logits[0]
            label = self.base.per_scale_targets(output, targets)[0]
            terms["ce_scale1"] = self.base.weights[0] * self.base.ce(output.logits[0], label)
        terms["sd_scale1"] = self.beta * kd_term(student, self.target_log_probs(inputs, output), "soft", self.tau)
        return terms
