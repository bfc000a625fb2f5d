"""Checkpoints: written atomically (temp file + fsync + rename), read with ``weights_only=True``, made back into a
model.

A checkpoint holds everything an exact resume needs (model, EMA weights, optimizer, scaler, step, data positions, RNG
states) plus what evaluation and deployment need (resolved config, class names; the normalisation is part of the
model's state dict). ``model_from_checkpoint`` is the one way back from a checkpoint to a model: train (resume), eval,
visualize and export all use it, and none needs the pretrained file the run started from.
"""

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ramstrans.config import short_repr
from ramstrans.errors import CheckpointError
from ramstrans.runtime.files import atomic_write, register_read

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "find_checkpoint",
    "save_run_checkpoint",
    "checkpoint_file",
    "weights_hash",
    "FORMAT",
    "LATEST",
]

FORMAT = "ramstrans"
LATEST = "checkpoint.pth"  # a run folder's newest checkpoint; older kept ones are checkpoint_step<N>.pth
_STEP_FILE = re.compile(r"^checkpoint_step(\d+)\.pth$")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` so that a crash at any moment leaves either the old or the new file, whole.

    Raises:
        OSError: the disk is full ("no space left on device: <path>"), or another write error.
    """
    try:
        atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp), fsync=True)
    except RuntimeError as e:  # torch's zip writer: not a full disk (atomic_write names that), another write error
        raise OSError(f"could not write {path}: {e}") from e


def save_run_checkpoint(state: dict[str, Any], out_dir: Path, keep: int) -> Path:
    """Write a run's newest checkpoint as ``checkpoint.pth`` and keep the last ``keep`` ones.

    With ``keep`` > 1 (or 0: all), the newest is also linked as ``checkpoint_step<N>.pth`` (a hard link: no second
    copy on disk; a copy where the file system has none) and step files beyond the last ``keep`` are removed.

    Returns:
        The path of the newest checkpoint.
    """
    latest = Path(out_dir) / LATEST
    save_checkpoint(state, latest)
    if keep == 1:
        return latest
    named = latest.with_name(f"checkpoint_step{int(state['step']):07d}.pth")
    named.unlink(missing_ok=True)
    try:
        os.link(latest, named)
    except OSError:
        shutil.copy2(latest, named)
    steps = sorted((int(m.group(1)), p) for p in latest.parent.iterdir() if (m := _STEP_FILE.match(p.name)))
    for _, old in steps[:-keep] if keep > 0 else []:
        old.unlink()
    return latest


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a ramstrans checkpoint on the CPU.

    Args:
        path: the file.
        mmap: map the tensors from the file instead of reading them (cheap when only the metadata is needed).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a ramstrans checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    register_read(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated, pickled objects, not a torch file at all
        raise CheckpointError(f"{path} is not a readable ramstrans checkpoint ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} is not a ramstrans checkpoint")
    for key in ("config", "class_names", "step"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no '{key}' entry (it was not written by ramstrans train)")
    step, names = ckpt["step"], ckpt["class_names"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint {path} has a damaged 'step' entry ({short_repr(step)}, not a step number)")
    if not isinstance(names, (list, tuple)) or len(names) < 1 or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"checkpoint {path} has a damaged 'class_names' entry (not a non-empty list of names)")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"checkpoint {path} has a damaged 'config' entry (not a mapping)")
    return ckpt


def weights_hash(state: dict[str, Any]) -> str:
    """The content hash of a state dict (16 hex digits of SHA-256 over every entry's name, dtype, shape and bytes, in
    name order): what a temperature file names, so that it is never applied to other weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def checkpoint_file(path: str | Path) -> Path:
    """What ``--checkpoint`` names: a checkpoint file, or a run folder's newest checkpoint.

    Raises:
        FileNotFoundError: nothing at ``path``, or a folder that holds no checkpoint.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        newest = find_checkpoint("auto", path)
        if newest is None:
            raise FileNotFoundError(
                f"{path} is a folder without a checkpoint ({LATEST}): give a checkpoint file or a run folder"
            )
        return newest
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def find_checkpoint(resume: str, output_dir: str | Path) -> Path | None:
    """The checkpoint that ``--resume`` names.

    Args:
        resume: a checkpoint file; a run folder (its newest checkpoint); or "auto": the newest checkpoint of
            ``output_dir``, None when it has none yet (a fresh start).
        output_dir: the configured run folder (used by "auto").

    Raises:
        FileNotFoundError: the file or folder does not exist, or the folder holds no checkpoint.
    """
    folder = Path(output_dir).expanduser() if resume == "auto" else Path(resume).expanduser()
    if resume != "auto" and folder.is_file():
        return folder
    if resume != "auto" and not folder.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file or run folder")
    if (folder / LATEST).is_file():
        return folder / LATEST
    steps = sorted((int(m.group(1)), p) for p in folder.glob("checkpoint_step*.pth") if (m := _STEP_FILE.match(p.name)))
    if steps:
        return steps[-1][1]
    if resume == "auto":
        return None
    raise FileNotFoundError(f"--resume {resume}: the folder holds no checkpoint ({LATEST})")


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU and every CUDA device) that training draws from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
