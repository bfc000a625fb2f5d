"""The convolutional feed-forward block of the distilled transformer (spec §5): timm's ``Mlp`` with a depthwise k x k
convolution of the patch tokens on the grid, as timm's ``pvt_v2.MlpWithDepthwiseConv`` orders it (fc1, depthwise
convolution, activation, fc2). Given to timm as ``mlp_layer``, a ``functools.partial`` carrying the backbone's grid,
prefix-token count, kernel and prefix mode (``create_vit`` computes them before timm builds the model).

The parameter names are timm's ``Mlp``'s (``fc1``, ``fc2``), so pretrained ViT weights load, and the convolution starts
as the identity (centre tap 1, bias 0): at initialisation the block is exactly the pretrained MLP. The class and
distillation tokens skip the convolution: ``prefix="mlp"`` sends them through fc1 -> act -> fc2, ``"bypass"`` gives
them a zero update (the block's residual passes them on unchanged).
"""

from typing import Any, cast

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from ramstrans.errors import UsageError

__all__ = ["ConvMlp"]


def _check_layout(kernel: int, prefix: str) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise UsageError(f"model.ffn_kernel must be odd and >= 1, got {kernel}")
    if prefix not in ("mlp", "bypass"):
        raise UsageError(f"model.ffn_prefix must be mlp or bypass, got {prefix!r}")


class ConvMlp(Mlp):
    """timm's Mlp plus a depthwise convolution of the patch tokens (see the module doc).

    Args:
        *args: timm's ``Mlp`` arguments (timm passes them).
        grid_size: the backbone's (gh, gw) patch grid.
        num_prefix_tokens: tokens before the patches (the class token, and the distillation token when there is one).
        kernel: the depthwise convolution's odd kernel.
        prefix: "mlp" or "bypass": what the block does with the prefix tokens.
        **kwargs: timm's ``Mlp`` keyword arguments.

    Raises:
        UsageError: an even or non-positive kernel, or another prefix mode.
    """

    def __init__(
        self,
        *args: Any,
        grid_size: tuple[int, int],
        num_prefix_tokens: int,
        kernel: int = 3,
        prefix: str = "mlp",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check_layout(kernel, prefix)
        self.dwconv = self._identity_conv(kernel)  # made once, at its final size
        self.set_grid(grid_size, num_prefix_tokens, kernel, prefix)

    def _identity_conv(self, kernel: int) -> nn.Conv2d:
        c = int(cast(Any, self.fc1).out_features)
        conv = nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=c).to(self.fc1.weight)
        assert conv.bias is not None  # Conv2d's default
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, :, kernel // 2, kernel // 2] = 1.0
            conv.bias.zero_()
        return conv

    def set_grid(
        self, grid_size: tuple[int, int], num_prefix_tokens: int, kernel: int = 3, prefix: str = "mlp"
    ) -> None:
        """Re-size the block: its (gh, gw) grid, prefix tokens, an odd kernel, the prefix mode; the convolution is
        (re)made as the identity when the kernel changes.

        Kept for one path only: ``ViTBackbone`` given a model built elsewhere, whose blocks were built for another
        layout than the backbone's final one (``make_distilled`` adds a distillation token to a built plain ViT, in
        place, after its blocks exist; or another grid, kernel or prefix mode). A model built by ``create_vit`` is
        built sized.
        """
        _check_layout(kernel, prefix)
        self.grid: tuple[int, int] = (int(grid_size[0]), int(grid_size[1]))
        self.num_prefix_tokens, self.prefix = num_prefix_tokens, prefix
        if self.dwconv.kernel_size[0] != kernel:
            self.dwconv = self._identity_conv(kernel)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) tokens (prefix first, then the gh * gw patches in row-major order) -> (B, N, D)."""
        h = self.fc1(x)
        p, (gh, gw) = self.num_prefix_tokens, self.grid
        B, _, C = h.shape
        patches = self.dwconv(h[:, p:].transpose(1, 2).reshape(B, C, gh, gw)).flatten(2).transpose(1, 2)
        h = torch.cat([h[:, :p], patches], dim=1)
        out = self.drop2(self.fc2(self.norm(self.drop1(self.act(h)))))
        if self.prefix == "bypass":
            out = torch.cat([torch.zeros_like(out[:, :p]), out[:, p:]], dim=1)
        return out
