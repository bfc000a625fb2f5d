"""``ramstrans visualize``."""

import argparse

from ramstrans.cli.common import OVERWRITE_HELP, add_request_arguments, request_from

__all__ = ["add"]


def run(a: argparse.Namespace) -> None:
    from ramstrans.inference.visualize import run_visualize

    files = run_visualize(request_from(a), output_dir=a.output, images=a.images or (), num=a.num, overwrite=a.overwrite)
    print(
        f"wrote {len(files) - 1} zoom panels and their contact sheet ({files[-1].name}, with a legend) to "
        f"{files[-1].parent}"
    )


def add(sub: argparse._SubParsersAction) -> None:
    """The visualize subcommand."""
    v = sub.add_parser("visualize", help="draw where the model zooms")
    add_request_arguments(v, "split", "device", "data_root", "weights")
    v.add_argument("--images", nargs="+", help="image files to draw")
    v.add_argument("--num", type=int, default=16)
    v.add_argument("--output", help="output folder (default: beside the checkpoint)")
    v.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    v.set_defaults(func=run)
