"""``ramstrans export``: the targets of ``ramstrans.export.TARGETS``."""

import argparse

from ramstrans.cli.common import CHECKPOINT_HELP, OVERWRITE_HELP, WEIGHTS_HELP
from ramstrans.errors import UsageError
from ramstrans.export import TARGETS, target

__all__ = ["add", "run"]

# what each target's output is, for the closing sentence
_WROTE = {
    "timm": "a timm folder to {path}: timm.create_model('local-dir:{path}', pretrained=True) loads the single-scale "
    "model",
    "onnx": "the {mode} model as ONNX to {path}",
    "onnx_fused": "the {mode} model as ONNX to {path} (its single-scale graph, for --scales 1 and auto, beside it)",
}


def run(a: argparse.Namespace) -> None:
    options = {}
    if a.format == "onnx":
        options = {"precision": a.precision, "calibration_images": a.calibration_images}
    elif a.precision != "fp32":
        raise UsageError(f"--precision {a.precision} applies to --format onnx; a timm folder holds float32 weights")
    path = target(a.format)(a.checkpoint, a.out, a.scales, a.weights, overwrite=a.overwrite, **options)
    mode = ("single-scale" if a.scales == 1 else f"fused {a.scales}-scale") + (
        f" {a.precision}" if a.format == "onnx" else ""
    )
    key = "onnx_fused" if a.format == "onnx" and a.scales > 1 else a.format
    said = _WROTE.get(key, "the {mode} model to {path}").format(path=path, mode=mode)
    if a.format == "timm" and a.scales > 1:
        said += f"; ramstrans predict {path} runs {a.scales} scales"
    print(f"wrote {said}")


def add(sub: argparse._SubParsersAction) -> None:
    """The export subcommand."""
    x = sub.add_parser("export", help="write a trained model as a timm folder or an ONNX file")
    x.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    x.add_argument(
        "--format",
        default="timm",
        choices=tuple(TARGETS),
        help="timm: a folder timm loads with create_model('local-dir:PATH', pretrained=True); onnx: a file",
    )
    x.add_argument("--out", required=True, help="the folder (timm) or .onnx file to write")
    x.add_argument(
        "--scales",
        type=int,
        default=1,
        help="1: the single-scale model; N: the fused N-scale model (onnx: in the graph; timm: rebuilt by "
        "ramstrans predict, timm itself loads scale 1)",
    )
    x.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16", "int8"),
        help="onnx: fp16 (for GPUs; inputs and outputs stay float32) or int8 (static, calibrated on training images)",
    )
    x.add_argument(
        "--calibration-images",
        type=int,
        default=256,
        help="int8: training-split images that calibrate the activation ranges, drawn with a fixed seed (default: "
        "%(default)s)",
    )
    x.add_argument("--weights", default="auto", choices=("auto", "raw", "ema"), help=WEIGHTS_HELP)
    x.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    x.set_defaults(func=run)
