"""The feature-wise transformation layer (Tseng et al., ICLR 2020) of the distilled transformer (spec §6).

In training, z -> γ ⊙ z + β per channel with γ = 1 + ε_γ · softplus(θ_γ) and β = ε_β · softplus(θ_β), ε ~ N(0, 1)
drawn once per forward (one value per channel, shared by the batch and the tokens); the identity in evaluation. In a
ViT it acts where Tseng et al. put it in a CNN, after a normalisation layer: on each block's ``norm2`` output (the
feed-forward's input), through a forward hook, so timm's blocks are unchanged. The layers live beside the timm model
(``ViTBackbone.fwt``), never inside it, so no export carries their parameters.
"""

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeatureWiseTransform", "FWT_INIT"]

FWT_INIT = (0.3, 0.5)  # θ_γ, θ_β at initialisation (Tseng et al.'s values)


class FeatureWiseTransform(nn.Module):
    """Per-channel random affine transformation of (..., D) features in training (see the module doc).

    Args:
        dim: channels D.
        learned: θ_γ and θ_β are learned (by learning-to-learn); else fixed at their initial values.
    """

    def __init__(self, dim: int, learned: bool = True) -> None:
        super().__init__()
        self.theta_gamma = nn.Parameter(torch.full((dim,), FWT_INIT[0]), requires_grad=learned)
        self.theta_beta = nn.Parameter(torch.full((dim,), FWT_INIT[1]), requires_grad=learned)
        self.active = True  # the learning-to-learn step turns it off for its pseudo-unseen pass

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D): transformed in training when active, else unchanged."""
        if not (self.training and self.active):
            return x
        eps = torch.randn(2, x.shape[-1], device=x.device, dtype=x.dtype)
        gamma = 1.0 + eps[0] * F.softplus(self.theta_gamma).to(x.dtype)
        beta = eps[1] * F.softplus(self.theta_beta).to(x.dtype)
        return x * gamma + beta

    def hook(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        """A forward hook of a block's ``norm2``: this layer on its output (identity in eval). The hook is the bound
        method of the registered layer itself, so a deep copy or a pickle of the model hooks its own copy."""
        return self(out)


def attach(blocks: nn.Module, layers: nn.ModuleList) -> None:
    """Apply ``layers[i]`` to the ``norm2`` output of ``blocks[i]`` (the layers stay registered where they are)."""
    for blk, layer in zip(cast(Any, blocks), layers):
        blk.norm2.register_forward_hook(layer.hook)
