"""``ramstrans fit-gate``."""

import argparse

from ramstrans.cli.common import CHECKPOINT_HELP, WEIGHTS_HELP

__all__ = ["add"]


def run(a: argparse.Namespace) -> None:
    from ramstrans.inference.gate import run_fit_gate

    r = run_fit_gate(
        a.checkpoint,
        out=a.out,
        split=a.split,
        weights=a.weights,
        batch_size=a.batch_size,
        device=a.device,
        data_root=a.data_root,
        num_workers=a.workers,
        overwrite=a.overwrite,
    )

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
    g.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    g.add_argument("--split", default="val", help="the split to fit on (never test; default: %(default)s)")
    g.add_argument("--out", help="the checkpoint to write (default: <checkpoint stem>_gate.pth beside it)")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--device", default="auto")
    g.add_argument("--data-root", help="data set root, if not the training config's")
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--weights", default="auto", choices=("auto", "raw", "ema"), help=WEIGHTS_HELP)
    g.set_defaults(func=run)
