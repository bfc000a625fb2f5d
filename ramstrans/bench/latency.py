"""``ramstrans bench latency``: what a trained model costs at test time, and what the proposal costs.

Model latency (``bench_latency``), on a checkpoint and real images of its test split: timm's eager forward of the same
weights, our single-scale forward, the fused two-scale model, adaptive zoom at a given threshold, and the single and
fused models through onnxruntime (adaptive through onnxruntime: the single-scale session for every image, the fused
session for the images it is unsure of); batch 1 and 32, 1 and 2 threads; median and p90 over interleaved repeats;
parameters and GMACs.

Config latency (``bench_config_latency``): the models of configs (student, teacher, RAMS-Trans), randomly initialised,
eager and through onnxruntime, single scale and fused.

Proposal latency (``bench_proposal``), ViT-B/16 at 448 px (28 x 28 grid, 12 blocks), random attention: the
device-side proposal (rollout, threshold, components, boxes, zoom) against the batched scipy labelling it replaced and
against a per-sample transcription of the official algorithm's structure (a Python loop over samples: the full N x N
rollout chain, a component search per mask, the largest area's box, a per-sample resize).
"""

import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F

from ramstrans.models import attention_rollout, component_boxes, crop_and_zoom, largest_component, threshold_rollout

__all__ = ["bench_latency", "bench_proposal", "bench_config_latency", "official_per_sample"]

K = TypeVar("K")


def _times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Median and p90 seconds of each fn, called in turn within every repeat (drift hits all alike)."""
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t)
    return {
        k: {"median_ms": 1000 * statistics.median(v), "p90_ms": 1000 * float(np.percentile(v, 90))}
        for k, v in runs.items()
    }


def _gmacs(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2 / 1e9


def _machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads available, torch {torch.__version__}"


def bench_latency(
    checkpoint: str,
    zoom_threshold: float,
    batches: Sequence[int] = (1, 32),
    threads: Sequence[int] = (1, 2),
    repeats: int = 10,
) -> dict[str, object]:
    """Test-time latency of a two-scale checkpoint on the CPU (see the module doc).

    Args:
        checkpoint: a ramstrans checkpoint with two scales.
        zoom_threshold: the adaptive threshold (choose it on validation: ``ramstrans eval --split val --sweep-zoom``).
        batches: batch sizes.
        threads: torch / onnxruntime intra-op threads.
        repeats: timed repeats per measurement.
    """
    model, vit, images = _model_and_images(checkpoint, max(batches))
    result: dict[str, object] = {
        "checkpoint": checkpoint,
        "zoom_threshold": zoom_threshold,
        "machine": _machine(),
        "params_M": sum(p.numel() for p in vit.parameters()) / 1e6,
        "rows": [],
    }
    one = images[:1]
    with torch.no_grad():
        result["gmacs_per_image"] = {
            "single": _gmacs(lambda: model(one)),
            "fused": _gmacs(lambda: model.predict(one, 2, boxes=False)),
        }
        result["zoomed_share_of_the_batch"] = float(model.predict(images, "auto", zoom_threshold).zoomed.float().mean())
    result["rows"] = _timed_rows(checkpoint, model, vit, images, batches, threads, zoom_threshold, repeats)
    return result


def _model_and_images(checkpoint: str, n: int) -> tuple[Any, torch.nn.Module, torch.Tensor]:
    """The checkpoint's model, timm's eager model with the same weights (eval mode), and ``n`` test images."""
    import timm

    from ramstrans.data import ImageDataset, eval_loader, load_index
    from ramstrans.inference.load import load_model

    loaded = load_model(checkpoint)
    model, cfg, names = loaded.model, loaded.config, loaded.class_names
    assert cfg is not None  # a checkpoint
    vit = timm.create_model(
        cfg.model.backbone, img_size=cfg.model.img_size, num_classes=len(names), **cfg.model.backbone_kwargs
    ).eval()
    vit.load_state_dict(cast(Any, model.backbone).vit.state_dict())
    index = load_index(cfg.data)
    ds = ImageDataset(index.root, index.split("test"), names, loaded.transform)
    return model, vit, next(iter(eval_loader(ds, n)))["image"]


def _timed_rows(
    checkpoint: str,
    model: Any,
    vit: torch.nn.Module,
    images: torch.Tensor,
    batches: Sequence[int],
    threads: Sequence[int],
    zoom_threshold: float,
    repeats: int,
) -> list[dict[str, object]]:
    """One row per thread count and batch size: every model's times, eager and through onnxruntime (the checkpoint
    exported at one and two scales into a temporary folder); torch's thread count is restored at the end."""
    from ramstrans.export.onnx import export_onnx

    rows: list[dict[str, object]] = []
    available = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {s: export_onnx(checkpoint, str(Path(tmp) / f"m{s}.onnx"), scales=s) for s in (1, 2)}
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            sessions = _ort_sessions(paths, n_threads)
            for batch in batches:
                x = images[:batch]
                rows.append(
                    {
                        "batch": batch,
                        "threads": n_threads,
                        **_time_models(model, vit, sessions, x, zoom_threshold, repeats),
                    }
                )
    torch.set_num_threads(available)
    return rows


def _ort_sessions(paths: Mapping[K, Path], n_threads: int) -> dict[K, Any]:
    """onnxruntime CPU sessions of the ONNX files (keyed by number of scales) on ``n_threads`` threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = n_threads, 1
    # idle onnxruntime threads otherwise spin for a while after a run, taking a core from what runs next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return {s: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for s, p in paths.items()}


def _time_models(
    model: Any, vit: torch.nn.Module, sessions: dict[int, Any], x: torch.Tensor, threshold: float, repeats: int
) -> dict[str, dict[str, float]]:
    """Median and p90 seconds of timm's eager model and ours, single, fused and adaptive, eager and through ONNX."""
    x_np = x.numpy()

    def ort_adaptive() -> None:
        probs = torch.from_numpy(sessions[1].run(None, {"images": x_np})[0]).softmax(-1)
        unsure = (probs.max(-1).values < threshold).nonzero(as_tuple=True)[0]
        if unsure.numel():
            sessions[2].run(None, {"images": x_np[unsure.numpy()]})

    with torch.no_grad():
        return _times(
            {
                "timm_eager": lambda: vit(x),
                "ours_single": lambda: model(x),
                "ours_fused": lambda: model.predict(x, 2, boxes=False),
                "ours_adaptive": lambda: model.predict(x, "auto", threshold, boxes=False),
                "onnx_single": lambda: sessions[1].run(None, {"images": x_np}),
                "onnx_fused": lambda: sessions[2].run(None, {"images": x_np}),
                "onnx_adaptive": ort_adaptive,
            },
            repeats,
        )


def official_per_sample(attentions: list[torch.Tensor], images: torch.Tensor, alpha: float, patch: int) -> torch.Tensor:
    """Per sample: the N x N rollout chain, mean-row saliency, threshold, a component search, the largest area's box,
    a resize of the crop (the structure of the official code, written here for the comparison)."""
    from scipy import ndimage

    B, N, _ = attentions[0].shape
    g = int(round((N - 1) ** 0.5))
    out = []
    for b in range(B):
        joint: torch.Tensor | None = None
        for a in attentions:
            aug = a[b] + torch.eye(N, device=a.device)
            aug = aug / aug.sum(-1, keepdim=True)
            joint = aug if joint is None else aug @ joint
        assert joint is not None  # at least one block
        sal = joint[:, 1:].mean(0)
        mask = (sal > alpha * sal.mean()).reshape(g, g).cpu().numpy()  # the host round trip of the official code
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        if n == 0:
            out.append(images[b : b + 1])
            continue
        k = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
        rows, cols = np.nonzero(labels == k)
        y0, y1, x0, x1 = rows.min() * patch, (rows.max() + 1) * patch, cols.min() * patch, (cols.max() + 1) * patch
        out.append(
            F.interpolate(
                images[b : b + 1, :, y0:y1, x0:x1], size=images.shape[-2:], mode="bilinear", align_corners=False
            )
        )
    return torch.cat(out)


def _scipy_batched(mask: torch.Tensor) -> torch.Tensor:
    """The batched labelling the device path replaced: one scipy call for the batch on the host."""
    from scipy import ndimage

    m = mask.cpu().numpy()
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    labels, n = ndimage.label(m, structure=structure)
    if n == 0:
        return torch.zeros_like(mask)
    flat = labels.reshape(len(m), -1)
    keep = np.zeros_like(m)
    for b in range(len(m)):  # the largest label per sample (first in row-major order on ties)
        counts = np.bincount(flat[b], minlength=n + 1)
        counts[0] = 0
        if counts.max():
            keep[b] = labels[b] == counts.argmax()
    return torch.from_numpy(keep)


def bench_proposal(
    batch: int = 16, grid: int = 28, depth: int = 12, patch: int = 16, repeats: int = 5, alpha: float = 1.3
) -> dict[str, object]:
    """The proposal alone at ViT-B/16 448 px scale (see the module doc); goal: >= 10x faster than per-sample."""
    gen = torch.Generator().manual_seed(0)
    n = grid * grid + 1
    attentions = [torch.randn(batch, n, n, generator=gen).mul(3).softmax(-1) for _ in range(depth)]
    images = torch.randn(batch, 3, grid * patch, grid * patch, generator=gen)
    size = (grid * patch, grid * patch)

    def device_path() -> torch.Tensor:
        g = attention_rollout(attentions, (grid, grid), 1.0, "mean")
        boxes = component_boxes(largest_component(threshold_rollout(g, alpha)), (patch, patch), size)
        return crop_and_zoom(images, boxes, size)

    def scipy_path() -> torch.Tensor:
        g = attention_rollout(attentions, (grid, grid), 1.0, "mean")
        boxes = component_boxes(_scipy_batched(threshold_rollout(g, alpha)), (patch, patch), size)
        return crop_and_zoom(images, boxes, size)

    t = _times(
        {
            "device": device_path,
            "scipy_batched": scipy_path,
            "official_per_sample": lambda: official_per_sample(attentions, images, alpha, patch),
        },
        repeats,
    )
    return {
        "setting": f"batch {batch}, {grid} x {grid} grid, {depth} blocks, {patch}-px patches, CPU",
        "machine": _machine(),
        "ms": t,
        "official_over_device": t["official_per_sample"]["median_ms"] / t["device"]["median_ms"],
        "scipy_over_device": t["scipy_batched"]["median_ms"] / t["device"]["median_ms"],
    }


# Classes of each data set, for timing a config's model without its data (the weights do not change the cost).
_CLASSES = {"cub": 200, "dogs": 120, "nabirds": 555, "inat17": 5089}


def _config_fns(model: Any, x: torch.Tensor, sessions: dict[int, Any]) -> dict[str, Callable[[], object]]:
    """What ``bench_config_latency`` times for one model: eager single (and fused) scale, and each ONNX session."""
    feed = {"images": x.numpy()}
    fns: dict[str, Callable[[], object]] = {"eager_single": partial(model, x)}
    fns.update(
        {f"onnx_{'single' if s == 1 else 'fused'}": partial(sess.run, None, feed) for s, sess in sessions.items()}
    )
    if model.num_scales > 1:
        fns["eager_fused"] = partial(model.predict, x, model.num_scales, boxes=False)
    return fns


def bench_config_latency(
    configs: Sequence[str],
    batch: int = 1,
    threads: Sequence[int] = (1, 2),
    repeats: int = 10,
    overrides: Sequence[str] = (),
) -> dict[str, object]:
    """Test-time latency of the models of configs (randomly initialised: no data, no pretrained file), on the CPU:
    eager single scale, eager fused (models with zoom scales), and both through onnxruntime.

    Args:
        configs: config names or files (e.g. ``distill_cub_vits16_448``, ``teacher_cub_resnet50_448``).
        batch: images per call.
        threads: torch / onnxruntime intra-op threads.
        repeats: timed repeats per measurement.
        overrides: settings applied to every config (e.g. ``model.attn_window=2``).
    """
    from ramstrans.config import load_config
    from ramstrans.export.onnx import write_onnx
    from ramstrans.models import build_model

    rows = []
    available = torch.get_num_threads()
    for name in configs:
        cfg = load_config(name, list(overrides))
        k = cfg.data.synthetic.num_classes if cfg.data.dataset == "synthetic" else _CLASSES.get(cfg.data.dataset, 200)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(replace(cfg.model, pretrained=None), k).eval()
        scales = model.num_scales
        x = torch.randn(batch, model.backbone.in_chans, *model.backbone.img_size)
        row: dict[str, object] = {
            "config": name,
            "overrides": list(overrides),
            "model": cfg.model.backbone,
            "type": cfg.model.type,
            "dist_token": cfg.model.dist_token,
            "img_size": cfg.model.img_size,
            "classes": k,
            "scales": scales,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        }
        with torch.no_grad():
            row["gmacs_single"] = _gmacs(partial(model, x[:1]))
        with tempfile.TemporaryDirectory() as tmp:
            paths = {s: write_onnx(model, Path(tmp) / f"m{s}.onnx", s) for s in sorted({1, scales})}
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                with torch.no_grad():
                    row[f"threads{n_threads}_ms"] = _times(
                        _config_fns(model, x, _ort_sessions(paths, n_threads)), repeats
                    )
        rows.append(row)
    torch.set_num_threads(available)
    return {"batch": batch, "machine": _machine(), "rows": rows}
