"""Learning-to-learn of the feature-wise transformation layers (spec §6; Tseng et al., ICLR 2020), as one training
step on one batch:

1. split the batch's classes into pseudo-seen and one pseudo-unseen class (drawn from the batch position: no global
   random numbers are consumed for it);
2. the pseudo-seen loss L_s with the layers on;
3. one inner gradient step of the model weights, w' = w − lr ∇_w L_s, kept differentiable (``create_graph``);
4. the pseudo-unseen loss L_u of the updated weights with the layers off;
5. ∇_θ L_u goes to the layers' θ_γ, θ_β only; ∇_w L_s to the model weights (the outer step is the optimizer's).

The second-order gradient needs the attention's double backward, which the fused SDPA kernel lacks on the CPU: the
step runs timm's unfused attention (same function). Each step needs the labels on the host (to split the classes).
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn

from ramstrans.errors import DataError

__all__ = ["FwtLearner", "meta_losses"]


@contextlib.contextmanager
def _unfused(module: nn.Module) -> Iterator[None]:
    """timm's unfused attention in every block for the duration (double backward on any device)."""
    blocks: list[Any] = [m for m in module.modules() if hasattr(m, "fused_attn")]  # timm's Attention modules
    before = [m.fused_attn for m in blocks]
    for m in blocks:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, f in zip(blocks, before):
            m.fused_attn = f


@contextlib.contextmanager
def _layers_off(layers: nn.ModuleList) -> Iterator[None]:
    """The feature-wise layers inactive for the duration (the pseudo-unseen pass)."""
    for layer in cast(list[Any], layers):
        layer.active = False
    try:
        yield
    finally:
        for layer in cast(list[Any], layers):
            layer.active = True


def meta_losses(
    module: nn.Module, criterion: Callable, x: Tensor, y: Tensor, unseen: Tensor, layers: nn.ModuleList, inner_lr: float
) -> tuple[dict[str, Tensor], Tensor, list[nn.Parameter], tuple[Tensor, ...]]:
    """Steps 2–4 (see the module doc).

    Args:
        module: the trained module (its forward returns what ``criterion`` takes).
        criterion: callable(inputs, output, targets) -> named loss terms.
        x: (B, C, H, W) images; y: (B,) labels.
        unseen: (B,) bool, the pseudo-unseen images.
        layers: the feature-wise transformation layers.
        inner_lr: the inner step's learning rate.

    Returns:
        (pseudo-seen terms, pseudo-unseen loss, the model weights, ∇_w L_s of each (kept in the graph)).
    """
    fwt_ids = {id(p) for p in layers.parameters()}
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad and id(p) not in fwt_ids]
    seen = ~unseen
    terms = criterion(x[seen], module(x[seen]), y[seen])
    grads = torch.autograd.grad(sum(terms.values()), [p for _, p in named], create_graph=True, allow_unused=True)
    fast = {n: p if g is None else p - inner_lr * g for (n, p), g in zip(named, grads)}
    with _layers_off(layers):
        out = torch.func.functional_call(module, fast, (x[unseen],))
        loss_unseen = sum(criterion(x[unseen], out, y[unseen]).values())
    return terms, loss_unseen, [p for _, p in named], grads


class FwtLearner:
    """The learning-to-learn step (see the module doc) that the engine runs instead of a plain forward / backward.

    Args:
        layers: the feature-wise transformation layers (``ViTBackbone.fwt``).
        optimizer: the run's optimizer (the inner step uses its current largest learning rate).
    """

    def __init__(self, *, layers: nn.ModuleList, optimizer: torch.optim.Optimizer) -> None:
        self.layers, self.optimizer = layers, optimizer

    def __call__(
        self, module: nn.Module, criterion: Callable, x: Tensor, y: Tensor, key: int, share: float
    ) -> dict[str, Tensor]:
        """Accumulate ``share`` × the step's gradients into ``.grad``; returns the detached weighted terms (the
        pseudo-seen loss terms and ``l2l_unseen``).

        Raises:
            DataError: the batch holds fewer than 2 classes.
        """
        classes = y.unique()
        if classes.numel() < 2:
            raise DataError(
                f"model.fwt learned needs at least 2 classes in every batch; batch {key} holds only "
                f"class {int(classes[0])} (raise train.batch_size)"
            )
        pick = torch.randint(classes.numel(), (1,), generator=torch.Generator().manual_seed(key)).item()
        inner_lr = max(g["lr"] for g in self.optimizer.param_groups)
        with _unfused(module):
            terms, loss_unseen, weights, grads = meta_losses(
                module, criterion, x, y, y == classes[pick], self.layers, inner_lr
            )
            thetas = [p for p in self.layers.parameters()]
            theta_grads = torch.autograd.grad(loss_unseen, thetas, allow_unused=True)
        for p, g in list(zip(weights, grads)) + list(zip(thetas, theta_grads)):
            if g is not None:
                g = g.detach() * share
                p.grad = g if p.grad is None else p.grad + g
        return {**{k: v.detach() * share for k, v in terms.items()}, "l2l_unseen": loss_unseen.detach() * share}
