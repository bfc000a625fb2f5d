"""The input normalisation every model of the pipeline carries (ViT backbone and classifier alike)."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ramstrans.errors import UsageError

__all__ = ["InputNorm"]


class InputNorm(nn.Module):
    """The input normalisation a model's weights expect, as buffers (``norm_mean``, ``norm_std``) so it travels with
    the state dict; the data pipeline reads it (``mean``, ``std``) to normalise images. Subclasses define
    ``in_chans`` and ``img_size`` (H, W), which ``check_input`` holds batches to.

    Args:
        in_chans: input channels.
        mean: per-channel mean in [0, 1] pixel units.
        std: per-channel std.
    """

    norm_mean: Tensor  # (C,) float64 buffers
    norm_std: Tensor

    def __init__(self, in_chans: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("norm_mean", torch.zeros(in_chans, dtype=torch.float64))
        self.register_buffer("norm_std", torch.ones(in_chans, dtype=torch.float64))
        self.set_normalization(mean, std)

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel input mean the weights expect (in [0, 1] pixel units)."""
        return tuple(self.norm_mean.tolist())

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.norm_std.tolist())

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the input normalisation (e.g. what pretrained weights expect).

        Raises:
            UsageError: not one value per input channel, or a std that is not positive.
        """
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        n = self.norm_mean.numel()
        if len(mean) != n or len(std) != n:
            raise UsageError(f"normalisation needs {n} values each, got mean {mean} and std {std}")
        if min(std) <= 0:
            raise UsageError(f"normalisation std must be positive, got {std}")
        with torch.no_grad():
            self.norm_mean.copy_(torch.tensor(mean, dtype=torch.float64))
            self.norm_std.copy_(torch.tensor(std, dtype=torch.float64))

    @property
    def in_chans(self) -> int:
        """Input channels (defined by the subclass)."""
        raise NotImplementedError

    @property
    def img_size(self) -> tuple[int, int]:
        """(H, W) input size (defined by the subclass)."""
        raise NotImplementedError

    def check_input(self, x: Tensor, model: str) -> None:
        """Refuse a batch that is not (B, in_chans, H, W) at the model's input size.

        Raises:
            UsageError: naming ``model`` and the expected and given shapes.
        """
        C, (H, W) = self.in_chans, self.img_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (C, H, W):
            raise UsageError(f"{model} expects a (B, {C}, {H}, {W}) batch, got shape {tuple(x.shape)}")
