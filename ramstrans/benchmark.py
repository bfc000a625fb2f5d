"""Benchmarks (``ramstrans bench core|transmix|ddp|demo``): speed with interleaved repeats and medians; the demo's
accuracy claim over seeds.

Measured, with the same weights:
- single-scale forward / timm forward (goal <= 1.03);
- DPPM (rollout + threshold + components + boxes + zoom) / single-scale forward (goal <= 0.05, ViT-B/16 at 448);
- two-scale train step (forward_multiscale + loss + backward) / two fused timm train steps (goal <= 1.15);
- the two attention-capture designs: hooks recomputing softmax(QK^T) beside fused SDPA (ours) against unfused
  attention with the probabilities kept, by time and by bytes saved for backward.
"""
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import timm
import torch
import torch.nn.functional as F

from .losses import MultiScaleLoss
from .mixing import Mixer
from .models import (RAMSTrans, attention_rollout, component_boxes, crop_and_zoom, largest_component,
                     threshold_rollout)

__all__ = ["bench_core", "bench_transmix", "bench_ddp", "bench_demo", "saved_bytes"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _interleaved(fns: Dict[str, Callable[[], object]], repeats: int, device: torch.device) -> Dict[str, float]:
    """Median seconds of each fn, calling them in turn within every repeat (drift hits all alike)."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``fn`` runs."""
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def bench_core(backbone: str = "vit_base_patch16_224", img_size: int = 448, batch: int = 2, repeats: int = 5,
               device: str = "cpu", depth: int = 0) -> Dict[str, object]:
    """Run the core benchmark and return its numbers (also printed by the CLI).

    Args:
        backbone: timm model name.
        img_size: input size.
        batch: images per step.
        repeats: timed repeats per measurement (medians reported).
        device: "cpu" or "cuda".
        depth: override the backbone depth (0 keeps the model's own).
    """
    dev = torch.device(device)
    kw = {"depth": depth} if depth else {}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    model = RAMSTrans(backbone=backbone, num_classes=200, img_size=img_size, num_scales=2, **kw).to(dev)
    ref = timm.create_model(backbone, img_size=img_size, num_classes=200, **kw).to(dev)
    ref.load_state_dict(model.backbone.vit.state_dict())
    unfused = timm.create_model(backbone, img_size=img_size, num_classes=200, **kw).to(dev)
    unfused.load_state_dict(model.backbone.vit.state_dict())
    kept = []
    for blk in unfused.blocks:  # design (b): unfused attention, probabilities taken at attn_drop's input
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda m, a, o: kept.append(a[0].detach().mean(1)))
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    y = torch.randint(0, 200, (batch,), device=dev)
    bb = model.backbone
    H, W = bb.img_size

    with torch.no_grad(), amp:
        model.eval(), ref.eval()
        attns = bb.forward_features(x, capture="all").attentions

        def dppm():
            g = attention_rollout(attns, bb.grid_size, model.residual, model.rollout_rows)
            boxes = component_boxes(largest_component(threshold_rollout(g, model.alpha)), bb.patch_size, (H, W))
            return crop_and_zoom(x, boxes, (H, W))

        infer = _interleaved({"ours_forward": lambda: model(x), "timm_forward": lambda: ref(x),
                              "capture_forward": lambda: bb.forward_features(x, capture="all"), "dppm": dppm},
                             repeats, dev)

    model.train(), ref.train(), unfused.train()

    def ours_step():
        with amp:
            out = model.forward_multiscale(x)
            loss = sum(F.cross_entropy(lg.float(), y) for lg in out.logits)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def timm_two_steps():
        for _ in range(2):
            with amp:
                loss = F.cross_entropy(ref(x).float(), y)
            loss.backward()
            ref.zero_grad(set_to_none=True)

    def capture_step(net: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step():
            with amp:
                loss = net().float().logsumexp(-1).sum()
            loss.backward()
            kept.clear()
        return step

    ours_capture = lambda: bb.forward_head(bb.forward_features(x, capture="all").tokens)  # noqa: E731
    train = _interleaved({"ours_2scale_step": ours_step, "timm_2_steps": timm_two_steps,
                          "capture_hooks_step": capture_step(ours_capture),
                          "capture_unfused_step": capture_step(lambda: unfused(x))}, repeats, dev)
    with amp:
        mem_hooks = saved_bytes(ours_capture)
        mem_unfused = saved_bytes(lambda: unfused(x))
        kept.clear()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
                   + (f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""),
        "versions": f"torch {torch.__version__}, timm {timm.__version__}",
        "setting": f"{backbone}{f' depth {depth}' if depth else ''} @ {img_size}, batch {batch}, {device}"
                   + (" bf16" if dev.type == "cuda" else " fp32") + f", median of {repeats}",
        "seconds": {k: round(v, 5) for k, v in {**infer, **train}.items()},
        "forward_ratio": infer["ours_forward"] / infer["timm_forward"],
        "dppm_over_forward": infer["dppm"] / infer["ours_forward"],
        "capture_overhead": infer["capture_forward"] / infer["ours_forward"] - 1,
        "train_ratio": train["ours_2scale_step"] / train["timm_2_steps"],
        "capture_step_hooks_over_unfused": train["capture_hooks_step"] / train["capture_unfused_step"],
        "saved_for_backward_MiB": {"hooks": mem_hooks / 2 ** 20, "unfused": mem_unfused / 2 ** 20},
    }
    return result


def bench_transmix(backbone: str = "vit_base_patch16_224", img_size: int = 448, batch: int = 2, repeats: int = 5,
                   device: str = "cpu", depth: int = 0) -> Dict[str, object]:
    """Per-step cost of TransMix (mixing, λ at every scale, soft targets) against a two-scale step without mixing
    (goal <= 1%). CutMix is forced so that the attention path is always the one measured."""
    dev = torch.device(device)
    kw = {"depth": depth} if depth else {}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    model = RAMSTrans(backbone=backbone, num_classes=200, img_size=img_size, num_scales=2, **kw).to(dev).train()
    bb = model.backbone
    mixer = Mixer(num_classes=200, image_size=bb.img_size, grid_size=bb.grid_size, mixup_alpha=0.0)
    criterion = MultiScaleLoss()
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    y = torch.randint(0, 200, (batch,), device=dev)
    with torch.no_grad(), amp:
        out = model.forward_multiscale(x)

    def step(mix: bool) -> Callable[[], None]:
        def run():
            with amp:
                if mix:
                    xm, targets_for = mixer(x, y, 0)
                    o = model.forward_multiscale(xm)
                    targets = targets_for(o)[0]
                else:
                    o, targets = model.forward_multiscale(x), y
                loss = sum(criterion(o.logits, targets).values())
            loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    def mixing_only():
        xm, targets_for = mixer(x, y, 0)
        return targets_for(out)

    t = _interleaved({"step_plain": step(False), "step_transmix": step(True), "transmix_work": mixing_only},
                     repeats, dev)
    return {"setting": f"{backbone}{f' depth {depth}' if depth else ''} @ {img_size}, batch {batch}, {device}, "
                       f"median of {repeats}",
            "seconds": {k: round(v, 6) for k, v in t.items()},
            "transmix_work_over_step": t["transmix_work"] / t["step_plain"],
            "step_ratio": t["step_transmix"] / t["step_plain"]}


def _ddp_step_worker(rank: int, world: int, port: int, args: Dict[str, object], out: str) -> None:
    """One process of the DDP benchmark: timed two-scale train steps on its half of the batch, one thread each."""
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from torch.nn.parallel import DistributedDataParallel as DDP

    from .dist import barrier, init_distributed, shutdown
    from .models import MultiScaleForward
    torch.set_num_threads(1)
    info, _ = init_distributed("cpu", 120)
    torch.manual_seed(0)
    model = RAMSTrans(backbone=args["backbone"], num_classes=200, img_size=args["img_size"], num_scales=2,
                      **({"depth": args["depth"]} if args["depth"] else {}))
    module = DDP(MultiScaleForward(model)) if info.enabled else MultiScaleForward(model)
    x = torch.randn(args["batch"], 3, args["img_size"], args["img_size"])
    y = torch.randint(0, 200, (args["batch"],))
    times = []
    for i in range(args["repeats"] + 1):
        barrier()
        t = time.perf_counter()
        loss = sum(F.cross_entropy(lg, y) for lg in module(x).logits)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    shutdown()


def bench_ddp(backbone: str = "vit_base_patch16_224", img_size: int = 224, batch: int = 2, repeats: int = 5,
              depth: int = 0) -> Dict[str, object]:
    """A 2-process gloo step (each process on ``batch`` images, one thread) against a 1-process step on the same
    per-process batch: the cost of DistributedDataParallel's gradient all-reduce on the CPU."""
    import socket
    import tempfile

    import torch.multiprocessing as mp
    args = {"backbone": backbone, "img_size": img_size, "batch": batch, "repeats": repeats, "depth": depth}
    med = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            out = str(Path(tmp) / f"w{world}.json")
            mp.start_processes(_ddp_step_worker, args=(world, port, args, out), nprocs=world, start_method="spawn")
            med[world] = statistics.median(json.loads(Path(out).read_text()))
    return {"setting": f"{backbone}{f' depth {depth}' if depth else ''} @ {img_size}, {batch} images per process, "
                       f"1 thread per process, CPU gloo, median of {repeats}",
            "seconds": {"1_process_step": med[1], "2_process_step": med[2]}, "ratio": med[2] / med[1]}


def _mean_spread(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.mean(values), "spread": (max(values) - min(values)) / 2, "values": values}


def bench_demo(seeds: Sequence[int] = (0, 1, 2), config: str = "synthetic_cpu", split: str = "test",
               out_dir: str = "runs/bench_demo", overrides: Sequence[str] = ()) -> Dict[str, object]:
    """The demo's claim, measured: the plain ViT (num_scales=1) against RAMS-Trans (num_scales=2) at equal steps from
    the same init, over several seeds; single-scale top-1 and the proposals' localization.

    Resumable: a finished run (its summary.json) is not run again. With ``split="val"`` a stratified 20% of the
    training images is held out and the final models are scored on it, never on test (for tuning).

    Args:
        seeds: training seeds.
        config: config name or file.
        split: "test" (report) or "val" (tuning).
        out_dir: one sub-folder per run.
        overrides: extra ``section.key=value`` settings for both models.
    """
    from .config import load_config
    from .train import run_training
    runs: Dict[str, List[Dict[str, float]]] = {"vit": [], "rams": []}
    for seed in seeds:
        for name, scales, weights in (("vit", 1, "[1.0]"), ("rams", 2, None)):
            run_dir = Path(out_dir) / split / f"{name}_seed{seed}"
            sets = [f"model.num_scales={scales}", f"train.seed={seed}", f"train.output_dir={run_dir}", *overrides]
            sets += [f"loss.scale_weights={weights}"] if weights else []
            sets += ["data.val_fraction=0.2"] if split == "val" else []
            if not (run_dir / "summary.json").is_file():
                run_training(load_config(config, sets), show_progress=False)
            summary = json.loads((run_dir / "summary.json").read_text())
            runs[name].append(summary["final_val"] if split == "val" else summary["test"])
    result: Dict[str, object] = {"config": config, "split": split, "seeds": list(seeds), "overrides": list(overrides)}
    for name, res in runs.items():
        result[name] = {k: _mean_spread([r[k] for r in res]) for k in ("top1", "loc_miou", "loc_iou50")}
    gain = [r["top1"] - v["top1"] for r, v in zip(runs["rams"], runs["vit"])]
    result["rams_minus_vit_top1"] = _mean_spread(gain)
    Path(out_dir, f"{split}_result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(bench_core(), indent=1))
