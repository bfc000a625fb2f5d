"""``ramstrans bench gpu``: one prepared benchmark a user with a GPU runs from start to end (under 8 minutes).

In this order, each row written to the JSON as soon as it is measured (a run cut short by ``--budget-s`` or an error
keeps what it has; a row that cannot run says why), at ViT-B/16 448 px with bf16 autocast from random weights, batch
16 and 32 (``--tiny``: a 2-block ViT-Ti at 64 px, batch 2, for the CPU and the test suite):
1. ``train``: images/s and peak memory of timm's plain train step, our one-scale and two-scale steps; the ratios
   single / timm (goal <= 1.03) and two-scale / two timm steps (goal <= 1.15);
2. ``inference``: single-scale, fused and adaptive (threshold 0.5) images/s;
3. ``syncs``: host-device synchronisations in one two-scale train step (``torch.cuda.set_sync_debug_mode``; goal 0);
4. ``compile``: the two-scale step under ``torch.compile`` (compile time apart) and with gradient checkpointing;
5. ``proposal``: the batched device proposal against a per-sample transcription of the official algorithm (goal
   >= 10x on the GPU);
6. ``loader``: images/s of the 448-px training transform from JPEGs of CUB-like sizes written into a temporary folder,
   with 1, 4 and all cores, against the two-scale step's images/s (is the GPU fed?);
7. ``onnxruntime``: the single-scale export through the CUDA execution provider in fp32 and fp16 (if installed).
Every result records the GPU, driver, CUDA, torch, timm and onnxruntime versions. ``--train-check`` adds the short
CUDA training check of ``gpu_check.py``.
"""

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from ramstrans.bench.timing import interleaved, sync
from ramstrans.runtime.files import write_text_atomic

__all__ = ["bench_gpu", "GpuSetting", "FULL", "TINY", "count_syncs"]


@dataclass(frozen=True)
class GpuSetting:
    backbone: str = "vit_base_patch16_224"
    img_size: int = 448
    batches: tuple[int, ...] = (16, 32)
    depth: int = 0  # 0: the model's own
    num_classes: int = 200
    repeats: int = 10
    compile_backend: str = "inductor"
    loader_images: int = 256
    loader_workers: tuple[int, ...] = (1, 4, 0)  # 0: every core


FULL = GpuSetting()
TINY = GpuSetting(
    backbone="vit_tiny_patch16_224",
    img_size=64,
    batches=(2,),
    depth=2,
    num_classes=5,
    repeats=2,
    compile_backend="eager",
    loader_images=4,
    loader_workers=(0, 1),
)


def _clock() -> float:
    return time.monotonic()


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import timm

    try:
        import onnxruntime as ort

        ort_version: str | None = ort.__version__
    except ImportError:
        ort_version = None
    env: dict[str, Any] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnxruntime": ort_version,
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), driver=_driver())
    return env


def _driver() -> str | None:
    """The NVIDIA driver version (nvidia-smi), or None."""
    import subprocess

    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except OSError:
        return None


class Recorder:
    """The result file, rewritten (atomically) after every row; rows past the budget are recorded as skipped.

    Args:
        out: the JSON file.
        budget_s: seconds from now after which no new row starts.
        header: what the file records besides the rows (environment, setting, command).
    """

    def __init__(self, out: Path, budget_s: float, header: dict[str, Any]) -> None:
        self.out, self.deadline = out, _clock() + budget_s
        self.result: dict[str, Any] = {**header, "rows": {}}
        self._write()

    def row(self, name: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Measure and record the row ``name`` unless the budget is spent; an error is recorded, not raised."""
        if _clock() > self.deadline:
            self.result["rows"][name] = {"skipped": "the budget (--budget-s) was spent before this row"}
        else:
            started = _clock()
            try:
                self.result["rows"][name] = {**measure(), "seconds": round(_clock() - started, 2)}
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                self.result["rows"][name] = {"skipped": "out of GPU memory"}
            except Exception as e:  # a row that fails on this machine must not lose the others
                first = (str(e).splitlines() or [""])[0][:200]
                self.result["rows"][name] = {"error": f"{type(e).__name__}: {first}"}
        self._write()
        row = self.result["rows"][name]
        return None if "skipped" in row or "error" in row else row

    def _write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out, json.dumps(self.result, indent=1))


def count_syncs(fn: Callable[[], object], device: torch.device) -> int | None:
    """Host-device synchronisations while ``fn`` runs, counted by CUDA's sync debug mode (None off CUDA)."""
    if device.type != "cuda":
        return None
    import warnings

    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _models(s: GpuSetting, device: torch.device) -> tuple[Any, torch.nn.Module]:
    """RAMS-Trans (two scales) and timm's own model with the same weights, on the device."""
    import timm

    from ramstrans.models import create_model

    kw: dict[str, Any] = {"depth": s.depth} if s.depth else {}
    model = create_model(backbone=s.backbone, num_classes=s.num_classes, img_size=s.img_size, num_scales=2, **kw)
    ref = timm.create_model(s.backbone, img_size=s.img_size, num_classes=s.num_classes, **kw)
    ref.load_state_dict(cast(Any, model.backbone).vit.state_dict())
    return model.to(device), ref.to(device)


def _amp(device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _peak(device: torch.device, fn: Callable[[], object]) -> float | None:
    """Peak GPU memory (GiB) of one call of ``fn`` (None off CUDA)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def _steps(model: Any, ref: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], None]]:
    """The train steps compared: timm's, ours at one scale, ours at two scales (forward, loss, backward, zero)."""
    device = x.device

    def step(forward: Callable[[], list[torch.Tensor]], net: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with _amp(device):
                loss = torch.stack([F.cross_entropy(z.float(), y) for z in forward()]).sum()
            loss.backward()
            net.zero_grad(set_to_none=True)

        return run

    return {
        "timm": step(lambda: [ref(x)], ref),
        "ours_1scale": step(lambda: model.forward_multiscale(x, 1).logits, model),
        "ours_2scale": step(lambda: model.forward_multiscale(x).logits, model),
    }


def _train_row(s: GpuSetting, device: torch.device, batch: int) -> dict[str, Any]:
    model, ref = _models(s, device)
    model.train(), ref.train()
    x = torch.randn(batch, 3, s.img_size, s.img_size, device=device)
    y = torch.randint(0, s.num_classes, (batch,), device=device)
    steps = _steps(model, ref, x, y)
    t = interleaved(steps, s.repeats, device)
    return {
        "images_per_s": {k: round(batch / v, 2) for k, v in t.items()},
        "peak_gib": {k: _peak(device, fn) for k, fn in steps.items()},
        "single_over_timm": t["ours_1scale"] / t["timm"],
        "two_scale_over_two_timm": t["ours_2scale"] / (2 * t["timm"]),
        "goals": "single_over_timm <= 1.03, two_scale_over_two_timm <= 1.15",
    }


def _inference_row(s: GpuSetting, device: torch.device, batch: int) -> dict[str, Any]:
    model, _ = _models(s, device)
    model.eval()
    x = torch.randn(batch, 3, s.img_size, s.img_size, device=device)
    with torch.no_grad(), _amp(device):  # random weights: a fixed threshold would zoom all or none; zoom half
        threshold = float(model.predict(x, 1, boxes=False).probs.max(-1).values.median())

    def mode(scales: int | str) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad(), _amp(device):
                return model.predict(x, scales, threshold, boxes=False)

        return run

    t = interleaved({"single": mode(1), "fused": mode(2), "adaptive": mode("auto")}, s.repeats, device)
    share = float(mode("auto")().zoomed.float().mean())
    return {
        "images_per_s": {k: round(batch / v, 2) for k, v in t.items()},
        "adaptive_threshold": threshold,
        "adaptive_zoomed_share": share,
        "note": "the adaptive threshold is the batch's median scale-1 confidence, so about half the images zoom",
    }


def _sync_row(s: GpuSetting, device: torch.device) -> dict[str, Any]:
    model, ref = _models(s, device)
    model.train()
    b = s.batches[0]
    x = torch.randn(b, 3, s.img_size, s.img_size, device=device)
    y = torch.randint(0, s.num_classes, (b,), device=device)
    step = _steps(model, ref, x, y)["ours_2scale"]
    step()  # warm-up: first calls may allocate and synchronise
    n = count_syncs(step, device)
    return {"syncs_per_two_scale_step": n, "goal": 0, "note": None if n is not None else "CUDA only"}


def _compile_row(s: GpuSetting, device: torch.device) -> dict[str, Any]:
    model, ref = _models(s, device)
    model.train()
    b = s.batches[0]
    x = torch.randn(b, 3, s.img_size, s.img_size, device=device)
    y = torch.randint(0, s.num_classes, (b,), device=device)
    eager = _steps(model, ref, x, y)["ours_2scale"]
    compiled_fn = torch.compile(model.forward_multiscale, backend=s.compile_backend)

    def compiled() -> None:
        with _amp(device):
            loss = torch.stack([F.cross_entropy(z.float(), y) for z in compiled_fn(x).logits]).sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    started = _clock()
    compiled()
    sync(device)
    compile_s = _clock() - started
    t = interleaved({"eager": eager, "compiled": compiled}, s.repeats, device)
    model.backbone.vit.set_grad_checkpointing(True)
    checkpointed = _steps(model, ref, x, y)["ours_2scale"]
    t.update(interleaved({"checkpointed": checkpointed}, s.repeats, device))
    return {
        "backend": s.compile_backend,
        "compile_s": round(compile_s, 2),
        "images_per_s": {k: round(b / v, 2) for k, v in t.items()},
        "peak_gib_checkpointed": _peak(device, checkpointed),
    }


def _proposal_row(s: GpuSetting, device: torch.device) -> dict[str, Any]:
    from ramstrans.bench.latency import official_per_sample
    from ramstrans.models import attention_rollout, component_boxes, crop_and_zoom, largest_component
    from ramstrans.models import threshold_rollout as threshold

    patch, grid, b = 16, s.img_size // 16, s.batches[0]
    depth = s.depth or 12
    gen = torch.Generator(device=device).manual_seed(0)
    n = grid * grid + 1
    maps = [torch.randn(b, n, n, generator=gen, device=device).mul(3).softmax(-1) for _ in range(depth)]
    images = torch.randn(b, 3, s.img_size, s.img_size, generator=gen, device=device)
    size = (s.img_size, s.img_size)

    def device_path() -> torch.Tensor:
        g = attention_rollout(maps, (grid, grid), 1.0, "mean")
        return crop_and_zoom(images, component_boxes(largest_component(threshold(g, 1.3)), (patch, patch), size), size)

    t = interleaved(
        {"device": device_path, "official_per_sample": lambda: official_per_sample(maps, images, 1.3, patch)},
        s.repeats,
        device,
    )
    return {"ms": {k: round(1000 * v, 3) for k, v in t.items()}, "speedup": t["official_per_sample"] / t["device"]}


def bench_gpu(
    device: str = "cuda",
    budget_s: float = 420.0,
    out: str = "runs/bench_gpu/result.json",
    tiny: bool = False,
    train_check: bool = False,
) -> dict[str, Any]:
    """Run every row in order within ``budget_s`` and return the result (also in ``out``, rewritten per row).

    Args:
        device: "cuda" (the GPU the benchmark is for) or "cpu" (with ``tiny``: the test suite's path).
        budget_s: seconds after which no new row starts (finished rows are kept).
        out: the JSON file.
        tiny: the tiny setting (``TINY``) instead of ViT-B/16 at 448.
        train_check: also the short training check (``gpu_check.train_check``).
    """
    from ramstrans.bench.gpu_loader import loader_row, onnxruntime_row

    dev = torch.device(device)
    s = TINY if tiny else FULL
    command = f"ramstrans bench gpu --device {device} --budget-s {budget_s:g}" + (" --tiny" if tiny else "")
    rec = Recorder(Path(out), budget_s, {"command": command, "environment": environment(dev), "setting": asdict(s)})
    train_ips = None
    for b in s.batches:
        row = rec.row(f"train_batch{b}", partial(_train_row, s, dev, b))
        if row is not None and b == s.batches[0]:
            train_ips = row["images_per_s"]["ours_2scale"]
    for b in s.batches:
        rec.row(f"inference_batch{b}", partial(_inference_row, s, dev, b))
    rec.row("syncs", lambda: _sync_row(s, dev))
    rec.row("compile_and_checkpointing", lambda: _compile_row(s, dev))
    rec.row("proposal", lambda: _proposal_row(s, dev))
    rec.row("loader", lambda: loader_row(s, train_ips))
    rec.row("onnxruntime", lambda: onnxruntime_row(s))
    if train_check:
        from ramstrans.bench.gpu_check import train_check as check

        rec.row("train_check", lambda: check(dev, tiny))
    return rec.result
