"""torch.distributed set-up and reductions: the only module that knows about ranks.

Launched by ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the environment) it joins the
process group (NCCL on CUDA, gloo on the CPU); launched plainly it makes no distributed call at all.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ramstrans.errors import UsageError

__all__ = [
    "DistInfo",
    "init_distributed",
    "resolve_device",
    "all_reduce_sum_",
    "all_gather_int",
    "broadcast_object",
    "barrier",
    "shutdown",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when a GPU exists, else the CPU; 'cuda' without a GPU is a user error."""
    if preference not in ("auto", "cpu") and not preference.startswith("cuda"):
        raise UsageError(f"train.device must be auto, cpu or cuda[:N], got '{preference}'")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{preference}' was asked for but this machine has no CUDA GPU (use train.device=cpu)")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if preference in ("auto", "cuda"):
        return torch.device("cuda", local_rank)
    return torch.device(preference)


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> "tuple[DistInfo, torch.device]":
    """Join the torchrun process group if there is one; pick this process's device.

    Args:
        device: auto | cpu | cuda[:N]; under torchrun "auto"/"cuda" mean cuda:LOCAL_RANK.
        timeout_s: how long to wait for the other processes (rendezvous and collectives).

    Returns:
        (DistInfo, device).

    Raises:
        UsageError: CUDA asked for without a GPU, or the process group cannot be joined in time.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(
        rank=int(os.environ.get("RANK", "0")), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )
    dev = resolve_device(device, info.local_rank)
    if not info.enabled:
        return DistInfo(), dev
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    except Exception as e:  # store connection refused / timed out: the rendezvous is unreachable
        raise UsageError(
            f"rank {info.rank} of {world} could not join the process group at {where} within "
            f"{timeout_s:g} s ({type(e).__name__}); check --rdzv_endpoint / MASTER_ADDR and the "
            "firewall, or raise train.dist_timeout_s"
        ) from e
    return info, dev


def all_reduce_sum_(state: dict[str, torch.Tensor]) -> None:
    """Sum every tensor of ``state`` over all processes, in place (counts and sums reduce exactly)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    for k, v in state.items():
        t = v.to(on)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        state[k] = t.to(v.device)


def all_gather_int(value: int) -> list[int]:
    """Every process's ``value``, in rank order (``[value]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [int(value)]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, int(value))
    return [int(v) for v in out]


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every process (``obj`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
