"""The host-side rows of ``ramstrans bench gpu``: is the GPU fed (the training transform's images/s with 1, 4 and all
cores), and onnxruntime with the CUDA execution provider."""

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

__all__ = ["loader_row", "onnxruntime_row", "write_cub_like_jpegs"]


def write_cub_like_jpegs(folder: Path, count: int, seed: int = 0) -> pd.DataFrame:
    """``count`` JPEGs of CUB-like sizes (sides 300-500 px, smooth content that compresses like a photo, quality 90)
    into ``folder``; returns their (path, label) table."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        h, w = int(rng.integers(300, 500)), int(rng.integers(300, 500))
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (5, 5), 0)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        rows.append({"path": f"{i:05d}.jpg", "label": i % 2})
    return pd.DataFrame(rows)


def loader_row(setting: Any, train_images_per_s: float | None) -> dict[str, Any]:
    """Images/s of the training transform (decode, random resized crop at ``img_size``, flip, normalise) through a
    DataLoader with each worker count of the setting (0: every core), against the two-scale train step's images/s."""
    from ramstrans.data import ImageDataset, Transform, collate

    size = setting.img_size
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ramstrans-gpu-loader-") as tmp:
        table = write_cub_like_jpegs(Path(tmp), setting.loader_images)
        transform = Transform(train=True, crop=size, resize=size * 8 // 7, mean=(0.5,) * 3, std=(0.5,) * 3)
        ds = ImageDataset(Path(tmp), table, ["a", "b"], transform)
        for workers in setting.loader_workers:
            n = workers or os.cpu_count() or 1
            loader = DataLoader(
                ds, batch_size=min(16, len(ds)), num_workers=n, collate_fn=collate, persistent_workers=True
            )
            for _ in loader:  # warm-up epoch: the workers start (and stay)
                pass
            started = time.perf_counter()
            seen = sum(len(batch["label"]) for _ in range(2) for batch in loader)  # two steady epochs
            rates[f"{n}_workers"] = round(seen / (time.perf_counter() - started), 1)
    best = max(rates.values())
    return {
        "images_per_s": rates,
        "two_scale_step_images_per_s": train_images_per_s,
        "fed": None if train_images_per_s is None else best >= train_images_per_s,
        "jpegs": f"{setting.loader_images} of 300-500 px sides",
    }


def onnxruntime_row(setting: Any) -> dict[str, Any]:
    """The single-scale model exported to ONNX, fp32 and fp16, timed through the CUDA execution provider (with the
    tiny setting on a machine without one: the CPU's, so the path runs in the test suite)."""
    import onnx
    import onnxruntime as ort

    from ramstrans.export.onnx import write_onnx
    from ramstrans.export.precision import to_fp16
    from ramstrans.models import create_model

    available = ort.get_available_providers()
    provider = "CUDAExecutionProvider" if "CUDAExecutionProvider" in available else None
    if provider is None and setting.img_size >= 224:
        return {"skipped": "onnxruntime has no CUDAExecutionProvider here", "providers": available}
    provider = provider or "CPUExecutionProvider"
    kw = {"depth": setting.depth} if setting.depth else {}
    model = create_model(
        backbone=setting.backbone, num_classes=setting.num_classes, img_size=setting.img_size, num_scales=1, **kw
    ).eval()
    b = setting.batches[0]
    x = np.random.default_rng(0).standard_normal((b, 3, setting.img_size, setting.img_size)).astype(np.float32)
    out: dict[str, Any] = {"provider": provider, "batch": b}
    with tempfile.TemporaryDirectory(prefix="ramstrans-gpu-ort-") as tmp:
        fp32 = write_onnx(model, Path(tmp) / "fp32.onnx", 1)
        fp16 = Path(tmp) / "fp16.onnx"
        onnx.save(to_fp16(onnx.load(str(fp32))), str(fp16))
        for name, path in (("fp32", fp32), ("fp16", fp16)):
            session = ort.InferenceSession(str(path), providers=[provider])
            if session.get_providers()[0] != provider:  # onnxruntime falls back to the CPU without an error
                return {"skipped": f"{provider} did not load (onnxruntime fell back to {session.get_providers()})"}
            session.run(None, {"images": x})  # warm-up (CUDA kernels, arena)
            times = []
            for _ in range(setting.repeats):
                started = time.perf_counter()
                session.run(None, {"images": x})
                times.append(time.perf_counter() - started)
            out[f"{name}_images_per_s"] = round(b / float(np.median(times)), 2)
    return out
