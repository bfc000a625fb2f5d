"""``ramstrans bench latency --end-to-end``: from a JPEG on disk to its top-5 classes, as a deployed model answers.

Each timed call decodes the file (OpenCV), resizes, crops and normalises it (``deploy.preprocess``, as the export's
metadata records), runs the model and takes the softmax's top 5; batch 1; median and p90 over interleaved repeats (every
row runs once per repeat, in turn, so drift hits all alike), at 1 and 2 threads. Models are randomly initialised
(latency does not depend on the weights; int8 is calibrated on a few random images, which sets its ranges, not its
speed), at CUB's sizes (200 classes):

- RAMS-Trans ViT-B/16 at 448 (``cub_vitb16_448``): single scale and fused, eager torch and onnxruntime fp32 / int8;
  adaptive zoom as the single-scale graph on every image plus the fused graph on a share of them (``zoom_share``);
- the ViT-S/16 student (``distill_cub_vits16_448``) at 448 and 224, single scale, eager and onnxruntime fp32 / int8.

Also the breakdown of the fused model's overhead over two single passes in eager (scale 1 with the attention capture
instead of without, the rollout, the connected components and boxes, the crop and zoom), and the start-up of
``ramstrans predict`` on one image (wall time and peak memory of the process) for an ONNX file and a checkpoint.
"""

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ramstrans.bench.latency import _machine, _ort_sessions, _times
from ramstrans.deploy.images import read_image
from ramstrans.deploy.preprocess import Preprocess
from ramstrans.deploy.session import softmax

__all__ = ["bench_end_to_end", "MODELS"]

# label: (config, overrides, scales exported)
MODELS: dict[str, tuple[str, list[str], int]] = {
    "rams_vitb16_448": ("cub_vitb16_448", [], 2),
    "student_vits16_448": ("distill_cub_vits16_448", [], 1),
    "student_vits16_224": ("distill_cub_vits16_448", ["model.img_size=224", "data.resize=256"], 1),
}
CLASSES = 200


def _jpeg(folder: Path) -> Path:
    """A 500 x 375 JPEG (CUB's typical size), smooth noise at quality 90."""
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), (500, 375), interpolation=cv2.INTER_CUBIC)
    path = folder / "bird.jpg"
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def _build(config: str, overrides: list[str]) -> tuple[Any, Preprocess]:
    from ramstrans.config import load_config
    from ramstrans.models import build_model

    cfg = load_config(config, overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(replace(cfg.model, pretrained=None), CLASSES).eval()
    return model, Preprocess.of(cfg.data.resize, cfg.model.img_size, model.backbone.mean, model.backbone.std)


def _exports(model: Any, scales: int, folder: Path, label: str) -> dict[str, Path]:
    """fp32 and int8 ONNX files of the single-scale graph (and of the fused graph with ``scales`` > 1)."""
    import onnx

    from ramstrans.export.onnx import build_onnx

    rng = np.random.default_rng(0)
    shape = (4, model.backbone.in_chans, *model.input_size)
    calibration = ([f"random{i}" for i in range(8)], lambda: iter([rng.standard_normal(shape, np.float32)] * 2))
    paths = {}
    for s in sorted({1, scales}):
        for precision in ("fp32", "int8"):
            proto = build_onnx(model, s, {}, {}, precision=precision, calibration=calibration)
            paths[f"{'single' if s == 1 else 'fused'}_{precision}"] = folder / f"{label}_{s}_{precision}.onnx"
            onnx.save(proto, str(paths[f"{'single' if s == 1 else 'fused'}_{precision}"]))
    return paths


def _resolved_models() -> dict[str, Any]:
    """Each timed model's config, overrides, exported scales and resolved config."""
    from ramstrans.config import load_config

    return {
        label: {"config": cfg, "overrides": sets, "scales": scales, "resolved": asdict(load_config(cfg, sets))}
        for label, (cfg, sets, scales) in MODELS.items()
    }


def _top5(probs: np.ndarray) -> np.ndarray:
    return np.argpartition(-probs[0], 5)[:5]


def _fns(model: Any, pre: Preprocess, sessions: dict[str, Any], jpeg: Path) -> dict[str, Callable[[], object]]:
    """What one label times: eager single (and fused), and each ONNX session, from the file to the top 5."""

    def tensor() -> torch.Tensor:
        return torch.from_numpy(pre(read_image(jpeg)))[None]

    fns: dict[str, Callable[[], object]] = {"eager_single": lambda: torch.topk(model(tensor()).softmax(-1), 5)}
    if model.num_scales > 1:
        fns["eager_fused"] = lambda: torch.topk(model.predict(tensor(), 2, boxes=False).probs, 5)
    for name, sess in sessions.items():
        fns[f"onnx_{name}"] = _onnx_top5(sess, pre, jpeg, fused=name.startswith("fused"))
    return fns


def _onnx_top5(sess: Any, pre: Preprocess, jpeg: Path, fused: bool) -> Callable[[], np.ndarray]:
    """An ONNX session's label, from the file to the top 5 (a fused graph gives probabilities, a single one logits)."""

    def label() -> np.ndarray:
        out = sess.run(["probs" if fused else "logits"], {"images": pre(read_image(jpeg))[None]})[0]
        return _top5(out if fused else softmax(out))

    return label


def _overhead(model: Any, x: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    """The fused model's parts in eager at batch ``len(x)``: scale 1 with and without the attention capture, the
    rollout, components and boxes, and the crop and zoom."""
    from ramstrans.models import attention_rollout, component_boxes, crop_and_zoom, largest_component, threshold_rollout

    bb = model.backbone
    attentions = bb.forward_features(x, scale=0, capture="all").attentions
    rollout = attention_rollout(attentions, bb.grid_size, bb.residual, bb.rollout_rows, bb.num_prefix_tokens)
    boxes = component_boxes(largest_component(threshold_rollout(rollout, model.alpha)), bb.patch_size, bb.img_size)
    return _times(
        {
            "single_pass": lambda: model(x),
            "scale1_with_capture": lambda: bb.forward_features(x, scale=0, capture="all"),
            "scale1_without_capture": lambda: bb.forward_features(x, scale=0, capture="none"),
            "rollout": lambda: attention_rollout(
                attentions, bb.grid_size, bb.residual, bb.rollout_rows, bb.num_prefix_tokens
            ),
            "components_and_boxes": lambda: component_boxes(
                largest_component(threshold_rollout(rollout, model.alpha)), bb.patch_size, bb.img_size
            ),
            "crop_and_zoom": lambda: crop_and_zoom(x, boxes, bb.img_size),
            "fused": lambda: model.predict(x, 2, boxes=False),
        },
        repeats,
    )


def _startup(argv: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak resident MB of ``ramstrans <argv>`` in a fresh process. The peak is the
    child's own ``VmHWM`` (Linux): the rusage of a child started from this process would count this process's memory,
    which the child inherits until it runs its own program."""
    code = (
        f"import sys; from ramstrans.cli import main; code = main({argv!r}); "
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
        "print('VmHWM', hwm[0] if hwm else 'nan', file=sys.stderr); sys.exit(code)"
    )
    start = os.times().elapsed
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = os.times().elapsed - start
    assert proc.stderr is not None
    kb = [line.split()[1] for line in proc.stderr.read().splitlines() if line.startswith("VmHWM")]
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_mb": float(kb[0]) / 1024 if kb else float("nan"),
        "exit": os.waitstatus_to_exitcode(status),
    }


def bench_end_to_end(
    repeats: int = 50,
    threads: tuple[int, ...] = (1, 2),
    zoom_share: float = 0.61,
    checkpoint: str | None = None,
    overhead_repeats: int = 10,
) -> dict[str, object]:
    """End-to-end latency of every model and form (see the module doc).

    Args:
        repeats: timed repeats per row (interleaved).
        threads: torch / onnxruntime / OpenCV threads.
        zoom_share: the share of images adaptive zoom sends to the fused graph (the demo's, at its threshold).
        checkpoint: a checkpoint whose ``predict`` start-up on one image to measure, against that of its ONNX
            export (single scale, fp32), or None.
        overhead_repeats: repeats of the fused model's overhead breakdown (batch 1).
    """
    available = torch.get_num_threads()
    result: dict[str, Any] = {
        "command": f"ramstrans bench latency --end-to-end --repeats {repeats}"
        + (f" --checkpoint {checkpoint}" if checkpoint else ""),
        "machine": _machine(),
        "repeats": repeats,
        "zoom_share": zoom_share,
        "models": _resolved_models(),
        "rows": {},
    }
    with tempfile.TemporaryDirectory(prefix="ramstrans-e2e-") as tmp:
        jpeg = _jpeg(Path(tmp))
        built = {label: _build(cfg, sets) for label, (cfg, sets, _) in MODELS.items()}
        paths = {label: _exports(built[label][0], MODELS[label][2], Path(tmp), label) for label in MODELS}
        for n in threads:
            torch.set_num_threads(n)
            cv2.setNumThreads(n)
            fns = {}
            for label, (model, pre) in built.items():
                sessions = _ort_sessions(paths[label], n)
                fns.update({f"{label}/{k}": f for k, f in _fns(model, pre, sessions, jpeg).items()})
            with torch.no_grad():
                result["rows"][f"threads{n}"] = _times(fns, repeats)
            with torch.no_grad():
                model, pre = built["rams_vitb16_448"]
                x = torch.from_numpy(pre(read_image(jpeg)))[None]
                result[f"fused_overhead_threads{n}"] = _overhead(model, x, overhead_repeats)
        torch.set_num_threads(available)
        cv2.setNumThreads(-1)
        if checkpoint is not None:
            from ramstrans.export.onnx import export_onnx

            onnx_file = export_onnx(checkpoint, str(Path(tmp) / "startup.onnx"))
            result["startup"] = {
                "checkpoint_file": checkpoint,
                "onnx": _startup(["predict", str(onnx_file), str(jpeg)]),
                "checkpoint": _startup(["predict", checkpoint, str(jpeg)]),
            }
    result["ratios"] = _ratios(result)
    return result


def _ratios(result: dict[str, Any]) -> dict[str, float]:
    """The deployment goals' ratios, per thread count (median over median): RAMS-Trans ViT-B/16's faster fp32 form
    (eager or onnxruntime), single and fused, over each int8 student; fused over single; adaptive zoom's mean."""
    out = {}
    for key, rows in result["rows"].items():

        def ms(name: str, r: dict = rows) -> float:
            return float(r[name]["median_ms"])

        rams = "rams_vitb16_448"
        single = min(ms(f"{rams}/eager_single"), ms(f"{rams}/onnx_single_fp32"))
        fused = min(ms(f"{rams}/eager_fused"), ms(f"{rams}/onnx_fused_fp32"))
        for label in ("student_vits16_448", "student_vits16_224"):
            out[f"{key}/single_over_{label}_int8"] = single / ms(f"{label}/onnx_single_int8")
            out[f"{key}/fused_over_{label}_int8"] = fused / ms(f"{label}/onnx_single_int8")
        out[f"{key}/fused_over_single_eager"] = ms(f"{rams}/eager_fused") / ms(f"{rams}/eager_single")
        out[f"{key}/fused_over_single_onnx"] = ms("rams_vitb16_448/onnx_fused_fp32") / ms(
            "rams_vitb16_448/onnx_single_fp32"
        )
        share = result["zoom_share"]
        out[f"{key}/adaptive_onnx_fp32_ms"] = ms("rams_vitb16_448/onnx_single_fp32") + share * ms(
            "rams_vitb16_448/onnx_fused_fp32"
        )
    return out
