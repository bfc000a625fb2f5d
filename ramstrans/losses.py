"""Training criteria. Like DeiT's, a criterion sees the inputs and the model's output (the distillation loss runs its
teacher on the inputs, and on the zoomed views it rebuilds from the output's boxes; self-distillation reads the zoomed
scales of the same output), and returns named scalar terms whose sum is the loss."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DistillConfig, LossConfig
from .models import MultiScaleOutput, RAMSTrans, crop_and_zoom, fused_log_probs
from .models.backbone import Head, select_head

__all__ = ["MultiScaleLoss", "DistillationLoss", "SelfDistillationLoss", "kd_term", "build_criterion"]

Targets = Tensor | Sequence[Tensor]


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

    def ce(self, logits: Tensor, target: Tensor) -> Tensor:
        """CE of (B, K) logits against (B,) indices (smoothed) or (B, K) soft targets, in float32."""
        if target.dim() == 2:
            return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)

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
            raise ValueError(f"got logits for {len(output.logits)} scales but {len(self.weights)} loss weights")
        if isinstance(targets, Tensor):
            return [targets] * len(output.logits)
        return list(targets)


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
            raise ValueError(
                f"distillation type must be soft or hard and kl_reduction batchmean or classes, got "
                f"{kind!r} and {kl_reduction!r}"
            )
        if not 0.0 <= alpha <= 1.0 or not tau > 0:
            raise ValueError(f"distillation alpha must be in [0, 1] and tau > 0, got {alpha} and {tau}")
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
            raise ValueError("self-distillation needs at least two scales: the zoomed scales are scale 1's teacher")
        if not beta >= 0 or not tau > 0 or target not in ("fused", "last"):
            raise ValueError(
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


def build_criterion(
    loss_cfg: LossConfig,
    num_scales: int,
    distill_cfg: DistillConfig | None = None,
    teacher: nn.Module | None = None,
    head: Head = "mean",
    ema: RAMSTrans | None = None,
) -> nn.Module:
    """The only place that maps ``cfg.loss`` (and ``cfg.distill`` with its built teacher) to a criterion.

    Args:
        loss_cfg: ``cfg.loss``.
        num_scales: the model's scales.
        distill_cfg: ``cfg.distill`` (read when ``teacher`` is given).
        teacher: the built frozen teacher, or None.
        head: the model's test-time head (``model.eval_head``): self-distillation fuses its logits.
        ema: the EMA model, needed by ``loss.self_distill_source: ema``.

    Raises:
        ValueError: ``loss.scale_weights`` does not have one entry per scale, or self-distillation from an EMA that
            is not there.
    """
    if len(loss_cfg.scale_weights) != num_scales:
        raise ValueError(
            f"loss.scale_weights has {len(loss_cfg.scale_weights)} entries but model.num_scales is {num_scales}"
        )
    base = MultiScaleLoss(weights=loss_cfg.scale_weights, label_smoothing=loss_cfg.label_smoothing)
    if loss_cfg.self_distill > 0:
        if loss_cfg.self_distill_source == "ema" and ema is None:
            raise ValueError("loss.self_distill_source ema needs train.ema_decay > 0")
        return SelfDistillationLoss(
            base=base,
            beta=loss_cfg.self_distill,
            tau=loss_cfg.self_distill_tau,
            target=loss_cfg.self_distill_target,
            head=head,
            ema=ema if loss_cfg.self_distill_source == "ema" else None,
        )
    if teacher is None:
        return base
    d = distill_cfg
    if d is None:
        raise ValueError("a teacher needs cfg.distill (its type, alpha, tau, reduction, scales)")
    return DistillationLoss(
        base=base,
        teacher=teacher,
        kind=d.type,
        alpha=d.alpha,
        tau=d.tau,
        kl_reduction=d.kl_reduction,
        scales=[s - 1 for s in d.scales],
    )
