"""The convolutional feed-forward block of the distilled transformer (spec §5): timm's ``Mlp`` with a depthwise k x k
convolution of the patch tokens on the grid, as timm's ``pvt_v2.MlpWithDepthwiseConv`` orders it (fc1, depthwise
convolution, activation, fc2). Given to timm as ``mlp_layer`` (a class); ``set_grid`` sizes it from the backbone.

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


class ConvMlp(Mlp):
    """timm's Mlp plus a depthwise convolution of the patch tokens (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grid: tuple[int, int] = (0, 0)
        self.num_prefix_tokens = 1
        self.prefix = "mlp"
        self.dwconv = self._identity_conv(3)

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
        """Size the block for the backbone: its (gh, gw) grid, prefix tokens, an odd kernel, the prefix mode; the
        convolution is (re)made as the identity when the kernel changes."""
        if kernel < 1 or kernel % 2 == 0:
            raise UsageError(f"model.ffn_kernel must be odd and >= 1, got {kernel}")
        if prefix not in ("mlp", "bypass"):
            raise UsageError(f"model.ffn_prefix must be mlp or bypass, got {prefix!r}")
        self.grid = (int(grid_size[0]), int(grid_size[1]))
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
