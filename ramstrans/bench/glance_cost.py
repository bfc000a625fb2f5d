"""``ramstrans bench glance --cost``: what glance and focus costs, in GMACs per image and milliseconds end to end from a
JPEG (decode, the export's preprocessing at the source size, the model, the top 5), eager torch and onnxruntime fp32 /
int8, on the CPU. Models are randomly initialised (cost does not depend on the weights; int8 is calibrated on random
images, which sets its ranges, not its speed). Run it alone: nothing else may share the cores.

- ``demo``: the rows of ``bench glance`` at the demo's sizes (the small ViT, 128-px input, 256-px source), single and
  fused, at batch 1 and 32 (eager) and batch 1 (onnxruntime), from a 320-px JPEG (the high-resolution variant's);
- ``cub``: the deployment table at the CUB recipe's sizes (ViT-B/16, 200 classes, source 896 from a 1600 x 1200
  JPEG): the single pass at 448; fused 448 + 448 from the input; from the source; glance and focus 224 + 224 and
  224 + 448 from the source; batch 1.
"""

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ramstrans.bench.end_to_end import _exports
from ramstrans.bench.flops import model_costs
from ramstrans.bench.glance import DEFAULT_ROWS, VARIANTS, row_overrides
from ramstrans.bench.latency import _machine, _ort_sessions, _times
from ramstrans.deploy.images import read_image
from ramstrans.deploy.preprocess import Preprocess

__all__ = ["bench_glance_cost", "CUB_ROWS"]

SOURCE = ["model.zoom_source=source", "data.source_size=896"]
# label: overrides of cub_vitb16_448
CUB_ROWS: dict[str, list[str]] = {
    "single_448": ["model.num_scales=1", "loss.scale_weights=[1.0]"],
    "fused_448_448_input": [],
    "fused_448_448_source": SOURCE,
    "gf_224_224_source": [*SOURCE, "model.scale_sizes=[224,224]"],
    "gf_224_448_source": [*SOURCE, "model.scale_sizes=[224,448]"],
}


def _jpeg(folder: Path, size: tuple[int, int]) -> Path:
    """A (width, height) JPEG of smooth noise at quality 90."""
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), size, interpolation=cv2.INTER_CUBIC)
    path = folder / f"photo_{size[0]}x{size[1]}.jpg"
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def _build(config: str, sets: Sequence[str], classes: int) -> tuple[Any, Preprocess, dict]:
    """The row's model (random weights, seed 0, eval mode), its export's preprocessing and its resolved config."""
    from ramstrans.config import load_config
    from ramstrans.models import build_model

    cfg = load_config(config, sets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(replace(cfg.model, pretrained=None), classes, source_size=cfg.data.source_size).eval()
    crop, resize = cfg.pipeline_size
    return model, Preprocess.of(resize, crop, model.backbone.mean, model.backbone.std), asdict(cfg)


def _row_fns(model: Any, pre: Preprocess, paths: dict[str, Path], jpeg: Path, batches: Sequence[int]) -> dict:
    """Per form, the call that answers from the JPEG file(s): eager at each batch, onnxruntime at batch 1."""
    fns: dict[str, Callable[[], object]] = {}

    def tensor(b: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([pre(read_image(jpeg)) for _ in range(b)]))

    def eager(b: int, mode: str) -> Callable[[], object]:
        if mode == "fused":
            return lambda: torch.topk(model.predict(tensor(b), 2, boxes=False).probs, 5)
        if mode == "capture":  # scale 1 with the attention capture and the proposal: adaptive zoom's first pass
            return lambda: torch.topk(model.predict(tensor(b), 1, boxes=True).probs, 5)
        return lambda: torch.topk(model(tensor(b)).softmax(-1), 5)

    def ort(sess: Any, output: str) -> Callable[[], object]:
        return lambda: sess.run([output], {"images": pre(read_image(jpeg))[None]})[0]

    for b in batches:
        for mode in ("single", "capture", "fused") if model.num_scales > 1 else ("single",):
            fns[f"eager_{mode}_b{b}"] = eager(b, mode)
    for name, sess in _ort_sessions(paths, torch.get_num_threads()).items():
        fns[f"onnx_{name}_b1"] = ort(sess, "probs" if name.startswith("fused") else "logits")
    return fns


def _table(
    rows: dict[str, tuple[str, list[str]]],
    classes: int,
    jpeg_size: tuple[int, int],
    batches: Sequence[int],
    repeats: int,
) -> dict:
    """GMACs and end-to-end milliseconds of every row (see the module doc)."""
    out: dict[str, Any] = {"rows": {}, "jpeg": list(jpeg_size), "batches": list(batches), "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="ramstrans-glance-") as tmp, torch.no_grad():
        jpeg = _jpeg(Path(tmp), jpeg_size)
        for label, (config, sets) in rows.items():
            model, pre, resolved = _build(config, sets, classes)
            paths = _exports(model, model.num_scales, Path(tmp), label)
            times = _times(_row_fns(model, pre, paths, jpeg, batches), repeats)
            per_image = {k: v["median_ms"] / int(k.rsplit("_b", 1)[1]) for k, v in times.items()}
            out["rows"][label] = {
                "gmacs": model_costs(model),
                "ms_per_image": per_image,
                "times": times,
                "resolved_config": resolved,
            }
            for path in paths.values():
                path.unlink()
    return out


def bench_glance_cost(part: str = "both", repeats: int = 10, demo_rows: Sequence[str] = DEFAULT_ROWS) -> dict:
    """The demo's and the CUB recipe's cost tables (``part``: demo, cub or both) at the threads torch has."""
    result: dict[str, Any] = {"machine": _machine(), "threads": torch.get_num_threads()}
    cv2.setNumThreads(torch.get_num_threads())
    if part in ("demo", "both"):
        rows = {r: ("synthetic_cpu", [*VARIANTS["hires"], *row_overrides(r)]) for r in demo_rows}
        result["demo"] = _table(rows, 10, (320, 320), (1, 32), repeats)
    if part in ("cub", "both"):
        rows = {label: ("cub_vitb16_448", sets) for label, sets in CUB_ROWS.items()}
        result["cub"] = _table(rows, 200, (1600, 1200), (1,), max(3, repeats // 2))
    return result


def _ms(cost_row: dict[str, Any], mode: str, share: float) -> float:
    """End-to-end eager milliseconds per image at batch 1 of a mode (adaptive: the capture pass, plus the zoomed share
    of what the fused pass adds to it)."""
    ms = cost_row["ms_per_image"]
    if mode == "adaptive":
        return ms["eager_capture_b1"] + share * (ms["eager_fused_b1"] - ms["eager_capture_b1"])
    return ms[f"eager_{mode}_b1"]


def frontier_png(results: dict[str, dict[str, Any]], cost: dict[str, Any], path: Path) -> Path:
    """Top-1 against GMACs per image (log scale) and against end-to-end eager milliseconds per image, one row of panels
    per variant of ``results`` (``bench glance --split test`` results by variant), every row's modes with their
    seeds' half-range; written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ramstrans.runtime.files import atomic_write

    markers = {"single": "o", "fused": "s", "adaptive": "^"}
    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.5 * len(results)), squeeze=False)
    for (variant, result), (ax_g, ax_ms) in zip(results.items(), axes):
        for i, (name, row) in enumerate(result["rows"].items()):
            colour = f"C{i}"
            for mode, marker in markers.items():
                if mode not in row:
                    continue
                top1, spread = row[mode]["mean"], row[mode]["spread"]
                share = row.get("zoomed_share", 1.0)
                label = f"{name} {mode}"
                ax_g.errorbar(row["gmacs"][mode], top1, yerr=spread, fmt=marker, color=colour, label=label)
                if name in cost["rows"]:
                    ms = _ms(cost["rows"][name], mode, share)
                    ax_ms.errorbar(ms, top1, yerr=spread, fmt=marker, color=colour, label=label)
        ax_g.set(
            xscale="log", xlabel="GMACs per image (log)", ylabel="test top-1 %", title=f"{variant}: accuracy / GMACs"
        )
        ax_ms.set(xlabel="ms per image, eager, batch 1, from the JPEG", title=f"{variant}: accuracy / latency")
        for ax in (ax_g, ax_ms):
            ax.grid(alpha=0.3)
        ax_g.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
