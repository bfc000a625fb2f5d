"""``ramstrans export``: the targets of ``ramstrans.export.TARGETS``."""

import argparse

from ramstrans.cli.common import CHECKPOINT_HELP, OVERWRITE_HELP, WEIGHTS_HELP
from ramstrans.export import TARGETS, target

__all__ = ["add", "run"]

# what each target's output is, for the closing sentence
_WROTE = {
    "timm": "a timm folder to {path}: timm.create_model('local-dir:{path}', pretrained=True) loads the single-scale "
    "model",
    "onnx": "the {mode} model as ONNX to {path}",
}


def run(a: argparse.Namespace) -> None:
    path = target(a.format)(a.checkpoint, a.out, a.scales, a.weights, overwrite=a.overwrite)
    mode = "single-scale" if a.scales == 1 else f"fused {a.scales}-scale"
    said = _WROTE.get(a.format, "the {mode} model to {path}").format(path=path, mode=mode)
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
    x.add_argument("--weights", default="auto", choices=("auto", "raw", "ema"), help=WEIGHTS_HELP)
    x.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    x.set_defaults(func=run)
