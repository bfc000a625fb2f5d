"""What one batch of a training step does, chosen once when the run is built: a plain forward / backward, a mixed one
(Mixup / CutMix / TransMix), or the learning-to-learn step of the feature-wise transformation. The engine's loop
(``engine.train_steps``) is the same for all of them, and so is the optimizer update after a step's batches.

A step object returns the detached loss terms of its batch, weighted by the batch's share of the step's images, and
device statistics for the log (the mixing λ per scale): nothing is read on the host per batch.
"""

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ramstrans.runtime.amp import autocast
from ramstrans.training.l2l import FwtLearner
from ramstrans.training.mixing import Mixer

__all__ = ["BatchStep", "MixedStep", "FwtStep", "OptimizerUpdate", "BatchResult"]

BatchResult = tuple[dict[str, Tensor], dict[str, Tensor]]  # (weighted loss terms, statistics for the log)


@dataclass
class BatchStep:
    """One batch of a plain step: forward, the criterion's terms weighted by ``share``, backward (the base of the
    other steps).

    Args:
        model: the module whose forward returns ``MultiScaleOutput`` (``MultiScaleForward``, DDP, compiled).
        criterion: callable(inputs, output, targets) -> named loss terms.
        device: where to compute.
        amp_dtype: autocast dtype, or None.
        scaler: fp16 gradient scaler, or None.
        normalization: (mean, std) per channel in [0, 1] of a batch that arrives as uint8 (a source batch), applied on
            the device; a float batch arrives normalised.
    """

    model: nn.Module
    criterion: Callable
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    _scale: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)

    def inputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) float images (a uint8 batch normalised here, on the device) and (B,) labels of ``batch``."""
        x = batch["image"].to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            if self._scale is None:  # (1, C, 1, 1) pixel -> normalised: x * a + b, made once on the device
                assert self.normalization is not None, "a uint8 batch needs the model's normalisation"
                mean, std = (torch.tensor(v, dtype=torch.float32, device=self.device) for v in self.normalization)
                self._scale = ((1.0 / (255.0 * std)).view(1, -1, 1, 1), (-mean / std).view(1, -1, 1, 1))
            x = x.float() * self._scale[0] + self._scale[1]
        return x, batch["label"].to(self.device, non_blocking=True)

    def backward(self, terms: dict[str, Tensor], share: float) -> dict[str, Tensor]:
        """Backward of the terms' sum times ``share``; returns the detached weighted terms."""
        loss = functools.reduce(operator.add, terms.values()) * share  # the terms' sum, in their order
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        return {k: v.detach() * share for k, v in terms.items()}

    def __call__(self, batch: dict, key: int, share: float) -> BatchResult:
        """One batch (``key``: its position in the run) of a step whose images it holds ``share`` of."""
        x, y = self.inputs(batch)
        with autocast(self.device, self.amp_dtype):
            terms = self.criterion(x, self.model(x), y)
        return self.backward(terms, share), {}


@dataclass
class MixedStep(BatchStep):
    """A step on a mixed batch: the mixer draws from the batch's position, the forward sees the mixed images, the
    targets (per scale, from this forward's crops and attention) go to the criterion. Logs the mean λ per scale and
    one count of the batch's mix kind (``mix_cutmix``, ``mix_mixup`` or ``mix_none``)."""

    mixer: Mixer | None = field(default=None, kw_only=True)

    def __call__(self, batch: dict, key: int, share: float) -> BatchResult:
        assert self.mixer is not None  # set by the builder
        x, y = self.inputs(batch)
        with autocast(self.device, self.amp_dtype):
            x, targets_for = self.mixer(x, y, key)
            out = self.model(x)
            targets, info = targets_for(out)  # the zoomed scales' λ need this forward's crops and attention
            terms = self.criterion(x, out, targets)
        stats = {f"mix_{info.kind}": torch.ones((), device=x.device)}
        stats.update({f"lam_scale{s + 1}": lam.detach().float().mean() for s, lam in enumerate(info.lam)})
        return self.backward(terms, share), stats


@dataclass
class FwtStep(BatchStep):
    """The learning-to-learn step of the feature-wise transformation (``l2l.FwtLearner``), which computes its own
    second-order gradients (hard labels, no mixing)."""

    learner: FwtLearner | None = field(default=None, kw_only=True)

    def __call__(self, batch: dict, key: int, share: float) -> BatchResult:
        assert self.learner is not None  # set by the builder
        x, y = self.inputs(batch)
        with autocast(self.device, self.amp_dtype):
            return self.learner(self.model, self.criterion, x, y, key, share), {}


@dataclass
class OptimizerUpdate:
    """The update after a step's batches: zero the gradients before, then optional unscale + clip and the optimizer
    step (through the fp16 scaler when there is one).

    Args:
        optimizer: the optimizer.
        params: the parameters whose gradient norm is clipped.
        clip_grad: max gradient norm (0 = off).
        scaler: fp16 gradient scaler, or None.
    """

    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    clip_grad: float = 0.0
    scaler: torch.amp.GradScaler | None = None

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if self.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()

    @property
    def lr(self) -> float:
        """The first parameter group's current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])
