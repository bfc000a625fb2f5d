"""Checkpoints: written atomically (temp file + fsync + rename), read with ``weights_only=True``.

A checkpoint holds everything an exact resume needs (model, optimizer, scheduler, scaler, step, RNG states) plus
what evaluation and deployment need (resolved config, class names, normalisation).
"""
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "FORMAT"]

FORMAT = "ramstrans"


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> None:
    """Write ``state`` to ``path`` so that a crash at any moment leaves either the old or the new file, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a ramstrans checkpoint on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a ramstrans checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, pickled objects, not a torch file at all
        raise ValueError(f"{path} is not a readable ramstrans checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise ValueError(f"{path} is not a ramstrans checkpoint")
    return ckpt


def rng_state() -> Dict[str, Any]:
    """The torch RNG states (CPU and every CUDA device) that training draws from."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
