"""Predict's streaming (``ramstrans bench predict``): a folder of N small JPEGs, for each N of ``counts``, classified by
``ramstrans predict`` in a fresh process, from an ONNX file (onnxruntime, without torch) and from a checkpoint (torch);
per run the seconds from the process's start to its first row on standard output and to its last, and the process's
peak resident memory: its own ``VmHWM`` (Linux), printed by the child as it exits (the rusage of a child started from
this process would count this process's memory, which the child holds until it runs its own program). The model is
the demo's architecture at 64 px with two blocks (random weights: the rows' content does not matter here, their timing
does).
"""

import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench_predict"]

_TINY = [
    "model.backbone_kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
    "model.img_size=64",
    "model.pretrained=null",
    "data.resize=72",
    "data.synthetic.num_classes=10",
]


def _model(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """A checkpoint of the tiny model (random weights) and its single-scale ONNX export; the resolved config."""
    import torch

    from ramstrans.checkpoint import save_checkpoint
    from ramstrans.config import load_config
    from ramstrans.export.onnx import export_onnx
    from ramstrans.models import build_model

    cfg = load_config("synthetic_cpu", _TINY)
    torch.manual_seed(0)
    model = build_model(cfg.model, 10)
    ckpt = folder / "checkpoint.pth"
    names = [f"class_{k}" for k in range(10)]
    save_checkpoint({"model": model.state_dict(), "config": asdict(cfg), "class_names": names, "step": 0}, ckpt)
    return {"checkpoint": ckpt, "onnx": export_onnx(str(ckpt), str(folder / "model.onnx"))}, asdict(cfg)


def _images(folder: Path, count: int) -> Path:
    """``count`` 48-pixel JPEGs in folders of 1,000 (one encoded image written under every name)."""
    import cv2

    ok, data = cv2.imencode(".jpg", np.tile(np.arange(48, dtype=np.uint8)[:, None, None] * 5, (1, 48, 3)))
    assert ok
    root = folder / f"images_{count}"
    for i in range(count):
        sub = root / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"{i:07d}.jpg").write_bytes(data.tobytes())
    return root


def _run(model: Path, images: Path, batch_size: int, workers: int) -> dict[str, Any]:
    """One ``ramstrans predict`` process: seconds to its first and last row, rows, peak resident MiB."""
    argv = ["predict", str(model), str(images), "--no-progress", "--topk", "1"]
    argv += ["--batch-size", str(batch_size), "--workers", str(workers)]
    code = (
        f"import sys; from ramstrans.cli import main; code = main({argv!r}); sys.stdout.flush(); "
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
        "print('VmHWM', hwm[0] if hwm else 'nan', file=sys.stderr); sys.exit(code)"
    )
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # the CSV header
    first = proc.stdout.readline()
    to_first = time.perf_counter() - start
    rows = 1 + sum(1 for _ in proc.stdout) if first else 0
    err = proc.stderr.read().splitlines()
    kib = [line.split()[1] for line in err if line.startswith("VmHWM")]
    total, code_ = time.perf_counter() - start, proc.wait()
    if code_ != 0 or rows == 0:  # a failed run has no timing to report
        raise RuntimeError(f"ramstrans predict {model} exited {code_} after {rows} rows: {err[-2:] if err else ''}")
    return {
        "rows": rows,
        "exit_code": code_,
        "seconds_to_first_row": round(to_first, 3),
        "seconds_to_last_row": round(total, 2),
        "rows_per_second_overall": round(rows / total, 1),
        "peak_rss_mib": round(float(kib[0]) / 1024, 1) if kib else float("nan"),
    }


def bench_predict(
    counts: list[int], workdir: str | None = None, batch_size: int = 32, workers: int = 2
) -> dict[str, Any]:
    """For each N of ``counts``, predict a folder of N images from the ONNX file and from the checkpoint.

    Returns:
        {"runs": [{"source", "images", ...``_run``'s fields}], "batch_size", "workers", "machine", "config": the
        model's resolved config}.
    """
    with tempfile.TemporaryDirectory(prefix="ramstrans-bench-predict-", dir=workdir) as tmp:
        folder = Path(tmp)
        models, config = _model(folder)
        runs = []
        for count in sorted(counts):
            images = _images(folder, count)
            for source, path in models.items():
                runs.append({"source": source, "images": count, **_run(path, images, batch_size, workers)})
    return {
        "runs": runs,
        "batch_size": batch_size,
        "workers": workers,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "config": config,
    }
