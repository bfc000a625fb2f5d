"""``ramstrans predict``."""

import argparse
import sys

from ramstrans.cli.common import OVERWRITE_HELP, add_request_arguments, request_from
from ramstrans.deploy.modes import FORMATS, TTA_CHOICES, ZOOM_CRITERIA

__all__ = ["add"]


def run(a: argparse.Namespace) -> int:
    from ramstrans.deploy.predict import run_predict  # without torch: an ONNX file's reader never imports it

    r = run_predict(
        request_from(a),
        a.paths,
        topk=a.topk,
        fmt=a.format,
        out=a.out,
        scales=a.scales,
        zoom_threshold=a.zoom_threshold,
        zoom_on=a.zoom_on,
        overwrite=a.overwrite,
        tta=a.tta,
        visualize=a.visualize,
        show_progress=not a.no_progress,
    )
    if r["skipped"]:
        print(
            f"ramstrans: {r['skipped']} of {r['images']} paths could not be read (listed in the output)",
            file=sys.stderr,
        )
    return 1 if r["skipped"] else 0


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify image files, folders and globs (a checkpoint, an exported folder or ONNX file)"
    )
    add_request_arguments(
        p,
        "batch_size",
        "device",
        "workers",
        "weights",
        "providers",
        workers=0,
        positional=True,
        source_help="a ramstrans checkpoint or run folder, a folder written by ramstrans export --format timm, or a "
        ".onnx file written by ramstrans export --format onnx (run by onnxruntime alone, without torch)",
    )
    p.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default: %(default)s)")
    p.add_argument("--format", default="csv", choices=FORMATS, help="CSV rows or JSON lines")
    p.add_argument("--out", help="file to write (default: standard output); rows are written as they are made")
    p.add_argument("--scales", default="1", help="1, N (fuse N scales) or auto (zoom the images scale 1 is unsure of)")
    p.add_argument(
        "--zoom-threshold",
        type=float,
        help="--scales auto: zoom below this confidence (default: the gate's own with --zoom-on gate, else 0.5)",
    )
    p.add_argument(
        "--zoom-on",
        default="maxprob",
        choices=ZOOM_CRITERIA,
        help="--scales auto: the confidence: the top probability, the top-1 minus top-2 margin, or 1 - the "
        "fitted zoom gate's probability that the zoom changes the answer (ramstrans fit-gate)",
    )
    p.add_argument("--visualize", metavar="DIR", help="also draw the zoom panel of every image into DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument(
        "--tta",
        default="none",
        choices=TTA_CHOICES,
        help="flip: the mean of each image's and its mirror's probabilities (twice the passes; zoomed: either view)",
    )
    p.set_defaults(func=run)
