"""Mixed precision: the autocast context and the dtype / gradient scaler a device gets."""

import contextlib
from typing import Any

import torch

__all__ = ["autocast", "amp_setup"]


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Mixed-precision context for ``dtype`` (None: full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def amp_setup(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """bf16 autocast where supported, else fp16 with a GradScaler; nothing on the CPU."""
    if not enabled or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")
