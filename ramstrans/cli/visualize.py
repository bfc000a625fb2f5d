"""``ramstrans visualize``."""

import argparse

from ramstrans.cli.common import CHECKPOINT_HELP, OVERWRITE_HELP, WEIGHTS_HELP

__all__ = ["add"]


def run(a: argparse.Namespace) -> None:
    from ramstrans.inference.visualize import run_visualize

    files = run_visualize(
        a.checkpoint,
        output_dir=a.output,
        images=a.images or (),
        split=a.split,
        num=a.num,
        device=a.device,
        data_root=a.data_root,
        weights=a.weights,
        overwrite=a.overwrite,
    )
    print(
        f"wrote {len(files) - 1} zoom panels and their contact sheet ({files[-1].name}, with a legend) to "
        f"{files[-1].parent}"
    )


def add(sub: argparse._SubParsersAction) -> None:
    """The visualize subcommand."""
    v = sub.add_parser("visualize", help="draw where the model zooms")
    v.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    v.add_argument("--images", nargs="+", help="image files to draw")
    v.add_argument("--split", default="test")
    v.add_argument("--num", type=int, default=16)
    v.add_argument("--output", help="output folder (default: beside the checkpoint)")
    v.add_argument("--device", default="auto")
    v.add_argument("--data-root")
    v.add_argument("--weights", default="auto", choices=("auto", "raw", "ema"), help=WEIGHTS_HELP)
    v.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    v.set_defaults(func=run)
