"""``ramstrans predict``."""

import argparse
import sys
from typing import Any

from ramstrans.cli.common import OVERWRITE_HELP, WEIGHTS_HELP
from ramstrans.errors import UsageError

__all__ = ["add"]


def run(a: argparse.Namespace) -> int:
    common = dict(
        topk=a.topk,
        fmt=a.format,
        out=a.out,
        scales=a.scales,
        zoom_threshold=a.zoom_threshold,
        zoom_on=a.zoom_on,
        batch_size=a.batch_size,
        num_workers=a.workers,
        overwrite=a.overwrite,
        tta=a.tta,
    )
    r = _run_onnx(a, common) if a.model.endswith(".onnx") else _run_checkpoint(a, common)
    if r["skipped"]:
        print(
            f"ramstrans: {r['skipped']} of {r['images']} paths could not be read (listed in the output)",
            file=sys.stderr,
        )
    return 1 if r["skipped"] else 0


def _run_onnx(a: argparse.Namespace, common: dict[str, Any]) -> dict[str, int]:
    """An ONNX export in onnxruntime: nothing here imports torch."""
    from ramstrans.deploy.predict import run_predict_onnx

    if a.visualize or a.device not in ("auto", "cpu") or a.weights != "auto":
        raise UsageError(
            "--visualize, --device and --weights apply to a checkpoint; an ONNX file runs on the --providers given"
        )
    providers = [p for p in (a.providers or "").split(",") if p] or None
    return run_predict_onnx(a.model, a.paths, providers=providers, **common)


def _run_checkpoint(a: argparse.Namespace, common: dict[str, Any]) -> dict[str, int]:
    from ramstrans.inference.predict import run_predict

    if a.providers:
        raise UsageError("--providers applies to an ONNX file; a checkpoint runs on --device")
    return run_predict(
        a.model,
        a.paths,
        device=a.device,
        weights=a.weights,
        visualize=a.visualize,
        show_progress=not a.no_progress,
        **common,
    )


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify image files, folders and globs (a checkpoint, an exported folder or ONNX file)"
    )
    p.add_argument(
        "model",
        help="a ramstrans checkpoint, a folder written by ramstrans export --format timm, or a .onnx file written by "
        "ramstrans export --format onnx (run by onnxruntime alone, without torch)",
    )
    p.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default: %(default)s)")
    p.add_argument("--format", default="csv", choices=("csv", "json"), help="CSV rows or JSON lines")
    p.add_argument("--out", help="file to write (default: standard output)")
    p.add_argument("--scales", default="1", help="1, N (fuse N scales) or auto (zoom the images scale 1 is unsure of)")
    p.add_argument(
        "--zoom-threshold",
        type=float,
        help="--scales auto: zoom below this confidence (default: the gate's own with --zoom-on gate, else 0.5)",
    )
    p.add_argument(
        "--zoom-on",
        default="maxprob",
        choices=("maxprob", "margin", "gate"),
        help="--scales auto: the confidence: the top probability, the top-1 minus top-2 margin, or 1 - the "
        "fitted zoom gate's probability that the zoom changes the answer (ramstrans fit-gate)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="a checkpoint's device: auto, cpu or cuda")
    p.add_argument(
        "--providers",
        help="an ONNX file's onnxruntime execution providers, comma-separated in order of preference (default: "
        "CPUExecutionProvider; e.g. CUDAExecutionProvider,CPUExecutionProvider where onnxruntime-gpu is installed)",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="decoding processes (an ONNX file: threads; 0: in this process)"
    )
    p.add_argument("--weights", default="auto", choices=("auto", "raw", "ema"), help=WEIGHTS_HELP)
    p.add_argument("--visualize", metavar="DIR", help="also draw the zoom panel of every image into DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument(
        "--tta",
        default="none",
        choices=("none", "flip"),
        help="flip: the mean of each image's and its mirror's probabilities (twice the passes; zoomed: either view)",
    )
    p.set_defaults(func=run)
