"""``ramstrans fit-gate``."""

import argparse

from ramstrans.cli.common import add_request_arguments, request_from

__all__ = ["add"]


def run(a: argparse.Namespace) -> None:
    from ramstrans.inference.gate import run_fit_gate

    r = run_fit_gate(request_from(a), out=a.out, overwrite=a.overwrite)

    def point(row: dict | None) -> str:
        return f"{row['top1']:.2f}% at {row['passes_per_image']:.2f} passes per image" if row else "none"

    print(
        f"{r['split']} split, {r['images']} images: single scale {r['single_scale_top1']:.2f}%, full fusion "
        f"{r['full_fusion_top1']:.2f}%; the zoom changes {r['changed_share']:.1%} of the answers (oracle: "
        f"{point(r['oracle'])}). Cheapest within {r['tolerance_points']:g} points of full fusion, out of fold: "
        f"zoom gate {point(r['gate_oof']['chosen'])} (threshold {r['threshold']:.4g}), top probability "
        f"{point(r['maxprob']['chosen'])}. Wrote {r['output']} (use --scales auto --zoom-on gate) and {r['report']}"
    )


def add(sub: argparse._SubParsersAction) -> None:
    """The fit-gate subcommand."""
    g = sub.add_parser(
        "fit-gate",
        help="fit the learned zoom gate of a multi-scale checkpoint on its validation split "
        "and write a new checkpoint with it",
    )
    add_request_arguments(g, "split", "batch_size", "device", "data_root", "workers", "weights", split="val")
    g.add_argument("--out", help="the checkpoint to write (default: <checkpoint stem>_gate.pth beside it)")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g.set_defaults(func=run)
