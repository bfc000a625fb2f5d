"""DeiT's distillation from a frozen teacher (soft or hard, into the distillation token's head, or into the only head
of a student without one), on RAMS-Trans scales: the teacher sees the inputs, and on a zoomed scale the same crop."""

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ramstrans.errors import UsageError
from ramstrans.losses import MultiScaleLoss, Targets
from ramstrans.models import MultiScaleOutput, crop_and_zoom

__all__ = ["DistillationLoss", "kd_term"]


def kd_term(
    student: Tensor, teacher: Tensor, kind: str = "soft", tau: float = 1.0, reduction: str = "batchmean"
) -> Tensor:
    """The distillation term of the student head's (B, K) logits against the teacher's (B, K) logits or
    log-probabilities (the same up to a constant per row: a fused teacher gives the log of its fused probabilities).

    soft: τ² · KL(softmax(teacher / τ) ‖ softmax(student / τ)), summed over classes and divided by B ("batchmean",
    timm's TokenDistillationTask) or by B · K ("classes", DeiT's code). hard: CE(student, argmax teacher).
    """
    student, teacher = student.float(), teacher.float()
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    kl = F.kl_div(
        F.log_softmax(student / tau, dim=-1), F.log_softmax(teacher / tau, dim=-1), reduction="sum", log_target=True
    )
    return kl * (tau * tau) / (student.numel() if reduction == "classes" else student.shape[0])


class DistillationLoss(nn.Module):
    """DeiT's token distillation on RAMS-Trans scales: for every supervised scale s,
    ``ce_scale{s}`` = w_s · (1 − λ) · CE(class head, target) and ``kd_scale{s}`` = w_s · λ · KD(distillation head,
    teacher); other scales train both heads on the labels (``MultiScaleLoss``). A student without a distillation token
    gets DeiT's plain distillation on its only head: the KD term goes to the class head. Soft (mixed) targets go to the
    CE term; the teacher sees the mixed image, and for a zoomed scale the same crop the student saw.

    Args:
        base: the multi-scale CE (scale weights, label smoothing).
        teacher: the frozen teacher: the student's normalised images -> (B, K) logits or log-probabilities.
        kind: "soft" or "hard".
        alpha: λ in [0, 1].
        tau: temperature (> 0) of the soft term.
        kl_reduction: "batchmean" or "classes".
        scales: the 0-based scales the teacher supervises.
    """

    def __init__(
        self,
        *,
        base: MultiScaleLoss,
        teacher: nn.Module,
        kind: str = "soft",
        alpha: float = 0.5,
        tau: float = 1.0,
        kl_reduction: str = "batchmean",
        scales: Sequence[int] = (0,),
    ) -> None:
        super().__init__()
        if kind not in ("soft", "hard") or kl_reduction not in ("batchmean", "classes"):
            raise UsageError(
                f"distillation type must be soft or hard and kl_reduction batchmean or classes, got "
                f"{kind!r} and {kl_reduction!r}"
            )
        if not 0.0 <= alpha <= 1.0 or not tau > 0:
            raise UsageError(f"distillation alpha must be in [0, 1] and tau > 0, got {alpha} and {tau}")
        self.base, self.teacher = base, teacher
        self.kind, self.alpha, self.tau, self.kl_reduction = kind, float(alpha), float(tau), kl_reduction
        self.scales = tuple(sorted(int(s) for s in scales))

    def teacher_logits(self, inputs: Tensor, output: MultiScaleOutput, scale: int) -> Tensor:
        """(B, K) teacher logits (or log-probabilities) on the view scale ``scale`` (0-based) saw: the input, or its
        zoomed crop."""
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        view = inputs if scale == 0 else crop_and_zoom(inputs, output.boxes[scale - 1], size)
        return self.teacher(view.detach())

    def forward(self, inputs: Tensor, output: MultiScaleOutput, targets: Targets) -> dict[str, Tensor]:
        """Weighted terms ``ce_scale{s}`` (and ``kd_scale{s}`` for supervised scales); the loss is their sum.

        Args:
            inputs: (B, C, H, W) the (mixed) images the student saw at scale 1.
            output: the student's MultiScaleOutput (with distillation-token logits when it has that token).
            targets: as ``MultiScaleLoss``.
        """
        per_scale = self.base.per_scale_targets(output, targets)
        dists = output.dist_per_scale()
        terms: dict[str, Tensor] = {}
        for s, (cls, dist, t, w) in enumerate(zip(output.logits, dists, per_scale, self.base.weights)):
            if s not in self.scales:
                terms[f"ce_scale{s + 1}"] = w * self.base.label_term(cls, dist, t)
                continue
            student = cls if dist is None else dist
            kd = kd_term(student, self.teacher_logits(inputs, output, s), self.kind, self.tau, self.kl_reduction)
            terms[f"ce_scale{s + 1}"] = w * (1.0 - self.alpha) * self.base.ce(cls, t)
            terms[f"kd_scale{s + 1}"] = w * self.alpha * kd
        return terms
