"""The learned zoom gate of adaptive inference: from scale 1 alone, the probability that running the zoomed scales
would change the fused answer.

Adaptive zoom pays a second pass only where it changes something. The maximum probability is a weak proxy for that (on
the demo's validation split it reaches full fusion − 0.5 points only at 1.87 passes per image); the gate is a logistic
regression on what scale 1 already computed: its pooled class-token feature, its probabilities, and their top
probability, top-1 − top-2 margin and entropy. It is fitted after the model, on a split that is not test, to the label
"argmax of the fusion != argmax of scale 1" (no class labels needed), and is tiny (D + K + 4 parameters).
"""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramstrans.errors import CheckpointError, UsageError

__all__ = ["ZoomGate", "gate_inputs", "fit_zoom_gate", "L2_GRID"]

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # ridge strengths tried by cross-validation (standardised inputs)


def gate_inputs(pooled: Tensor, probs: Tensor) -> Tensor:
    """(B, D) pooled scale-1 features and (B, K) scale-1 probabilities -> (B, D + K + 3) float32 gate inputs:
    the features, the probabilities, the top probability, the top-1 − top-2 margin and the entropy."""
    probs = probs.float()
    top = probs.topk(min(2, probs.shape[-1]), dim=-1).values
    margin = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else torch.zeros_like(top[:, 0]))
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=-1)
    return torch.cat([pooled.float(), probs, top[:, :1], margin[:, None], entropy[:, None]], dim=-1)


class ZoomGate(nn.Module):
    """p(zoom changes the answer) = sigmoid(w · (x − μ) / σ + b) on ``gate_inputs`` x; adaptive zoom runs the zoomed
    scales where 1 − p is below a threshold (``threshold``: the one chosen when the gate was fitted).

    Args:
        num_inputs: D + K + 3.
    """

    mean: Tensor  # (F,) buffers
    std: Tensor
    threshold: Tensor  # () buffer

    def __init__(self, num_inputs: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_inputs))
        self.register_buffer("std", torch.ones(num_inputs))
        self.register_buffer("threshold", torch.tensor(1.0))  # the zoom threshold chosen when it was fitted
        self.linear = nn.Linear(num_inputs, 1)

    def forward(self, pooled: Tensor, probs: Tensor) -> Tensor:
        """(B, D) pooled scale-1 features, (B, K) scale-1 probabilities -> (B,) float32 probability that the
        zoomed scales change the fused answer."""
        x = (gate_inputs(pooled, probs) - self.mean) / self.std
        return torch.sigmoid(self.linear(x).squeeze(-1))

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> "ZoomGate":
        """A gate rebuilt from its state dict (the size is read from it)."""
        gate = cls(int(state["mean"].numel()))
        gate.load_state_dict(state)
        return gate

    @classmethod
    def from_record(cls, record: Any, features: int, num_classes: int, where: str) -> "ZoomGate":
        """The gate a checkpoint's ``zoom_gate`` entry holds, checked: its tensors of the size F = D + K + 3 of the
        model's D pooled features and K classes, every value finite, std > 0, its threshold in [0, 1].

        Raises:
            CheckpointError: naming ``where`` and the field.
        """
        state = record.get("state") if isinstance(record, dict) else None
        keys = ("mean", "std", "threshold", "linear.weight", "linear.bias")
        if (
            not isinstance(state, dict)
            or set(state) != set(keys)
            or not all(isinstance(state[k], Tensor) for k in keys)
        ):
            raise CheckpointError(
                f"{where} has a damaged zoom gate (its 'zoom_gate.state' must hold exactly the tensors "
                f"{', '.join(keys)})"
            )
        size = features + num_classes + 3
        if state["mean"].numel() != size:
            raise CheckpointError(
                f"{where}'s zoom gate reads {state['mean'].numel()} inputs, not the {size} of this model ({features} "
                f"features + {num_classes} classes + 3): it was fitted on another model; refit it with ramstrans "
                "fit-gate"
            )
        shapes = {"mean": (size,), "std": (size,), "threshold": (), "linear.weight": (1, size), "linear.bias": (1,)}
        for key, shape in shapes.items():
            if tuple(state[key].shape) != shape:
                raise CheckpointError(
                    f"{where}'s zoom gate field 'zoom_gate.state.{key}' has shape {tuple(state[key].shape)}, "
                    f"not {shape}"
                )
            if not torch.isfinite(state[key].double()).all():
                raise CheckpointError(f"{where}'s zoom gate field 'zoom_gate.state.{key}' holds NaN or infinite values")
        if not (state["std"] > 0).all() or not 0 <= float(state["threshold"]) <= 1:
            field = "std" if not (state["std"] > 0).all() else "threshold"
            raise CheckpointError(f"{where}'s zoom gate field 'zoom_gate.state.{field}' is out of range")
        return cls.from_state(state)


def _fit_logistic(x: Tensor, y: Tensor, l2: float) -> tuple[Tensor, Tensor]:
    """Ridge logistic regression on (N, F) float64 standardised inputs, (N,) 0/1 targets: full-batch L-BFGS on
    mean BCE + l2 / 2 · |w|² (the bias is not penalised). Returns (w (F,), b ())."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _standardise(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std per input column (a constant column gets std 1)."""
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-12, std, torch.ones_like(std))


def _folds(n: int, k: int, seed: int) -> list[Tensor]:
    """k disjoint index sets covering 0..n-1, from a seeded permutation (no global RNG)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [perm[i::k] for i in range(k)]


def fit_zoom_gate(
    pooled: Tensor, probs: Tensor, changed: Tensor, folds: int = 5, l2_grid: Sequence[float] = L2_GRID, seed: int = 0
) -> tuple[ZoomGate, Tensor, float]:
    """Fit the gate to ``changed`` and give out-of-fold scores to choose its threshold on without bias.

    The ridge strength is the one of ``l2_grid`` with the lowest out-of-fold log-loss (``folds``-fold
    cross-validation, folds from a seeded permutation); the gate is then fitted on all rows with it.

    Args:
        pooled: (N, D) pooled scale-1 features.
        probs: (N, K) scale-1 probabilities.
        changed: (N,) bool, whether the fused answer differs from scale 1's.
        folds: cross-validation folds (>= 2).
        l2_grid: ridge strengths to try.
        seed: seed of the fold assignment.

    Returns:
        (the fitted gate (float32), (N,) out-of-fold probabilities of change for the chosen strength, that strength).

    Raises:
        UsageError: fewer rows than folds, or ``changed`` all true or all false (nothing to learn).
    """
    n = changed.numel()
    positives = int(changed.sum())
    if n < folds or not 0 < positives < n:
        raise UsageError(
            f"the zoom gate needs images where the zoom changes the answer and images where it does not "
            f"(got {positives} of {n}, at least {folds} images)"
        )
    x, y = gate_inputs(pooled, probs).double(), changed.double()
    parts = _folds(n, folds, seed)
    best = (float("inf"), l2_grid[0], torch.empty(0))
    for l2 in l2_grid:
        oof = torch.empty(n, dtype=torch.float64)
        for held in parts:
            keep = torch.ones(n, dtype=torch.bool)
            keep[held] = False
            mean, std = _standardise(x[keep])
            w, b = _fit_logistic((x[keep] - mean) / std, y[keep], l2)
            oof[held] = ((x[held] - mean) / std) @ w + b
        loss = F.binary_cross_entropy_with_logits(oof, y).item()
        if loss < best[0]:
            best = (loss, l2, torch.sigmoid(oof))
    _, l2, oof_probs = best
    mean, std = _standardise(x)
    w, b = _fit_logistic((x - mean) / std, y, l2)
    gate = ZoomGate(x.shape[1])
    with torch.no_grad():
        gate.mean.copy_(mean.float())
        gate.std.copy_(std.float())
        gate.linear.weight.copy_(w.float()[None])
        gate.linear.bias.copy_(b.float()[None])
    return gate, oof_probs.float(), l2
