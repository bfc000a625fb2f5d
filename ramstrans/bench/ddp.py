"""``ramstrans bench ddp``: a 2-process gloo step against a 1-process step on the CPU."""

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ramstrans.models import create_model

__all__ = ["bench_ddp"]


def _ddp_step_worker(rank: int, world: int, port: int, args: dict[str, Any], out: str) -> None:
    """One process of the DDP benchmark: timed two-scale train steps on its half of the batch, one thread each."""
    import os

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ramstrans.models import MultiScaleForward
    from ramstrans.runtime.dist import barrier, init_distributed, shutdown

    torch.set_num_threads(1)
    info, _ = init_distributed("cpu", 120)
    torch.manual_seed(0)
    model = create_model(
        backbone=args["backbone"],
        num_classes=200,
        img_size=args["img_size"],
        num_scales=2,
        **({"depth": args["depth"]} if args["depth"] else {}),
    )
    module = DDP(MultiScaleForward(model)) if info.enabled else MultiScaleForward(model)
    x = torch.randn(args["batch"], 3, args["img_size"], args["img_size"])
    y = torch.randint(0, 200, (args["batch"],))
    times = []
    for i in range(args["repeats"] + 1):
        barrier()
        t = time.perf_counter()
        loss = torch.stack([F.cross_entropy(lg, y) for lg in module(x).logits]).sum()
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    shutdown()


def bench_ddp(
    backbone: str = "vit_base_patch16_224", img_size: int = 224, batch: int = 2, repeats: int = 5, depth: int = 0
) -> dict[str, object]:
    """A 2-process gloo step (each process on ``batch`` images, one thread) against a 1-process step on the same
    per-process batch: the cost of DistributedDataParallel's gradient all-reduce on the CPU."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    args: dict[str, Any] = {
        "backbone": backbone,
        "img_size": img_size,
        "batch": batch,
        "repeats": repeats,
        "depth": depth,
    }
    med = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            out = str(Path(tmp) / f"w{world}.json")
            mp.start_processes(_ddp_step_worker, args=(world, port, args, out), nprocs=world, start_method="spawn")
            med[world] = statistics.median(json.loads(Path(out).read_text()))
    return {
        "setting": f"{backbone}{f' depth {depth}' if depth else ''} @ {img_size}, {batch} images per process, "
        f"1 thread per process, CPU gloo, median of {repeats}",
        "seconds": {"1_process_step": med[1], "2_process_step": med[2]},
        "ratio": med[2] / med[1],
    }
