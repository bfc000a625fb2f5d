"""``ramstrans train``."""

import argparse

from ramstrans.config import DEFAULT_CONFIG

__all__ = ["add"]


def run(a: argparse.Namespace) -> None:
    from ramstrans.training.run import resolve_training, run_training

    overrides = list(a.set or [])
    if a.output_dir:
        overrides.append(f"train.output_dir={a.output_dir}")
    cfg, checkpoint = resolve_training(a.config, overrides, a.resume)
    s = run_training(
        cfg, resume=checkpoint, show_progress=not a.no_progress, overwrite=a.overwrite, restart=a.resume == "auto"
    )
    t = s["test"]
    loc = f", proposal mIoU {t['loc_miou']:.3f}, IoU>=0.5 {t['loc_iou50']:.1f}%" if "loc_miou" in t else ""
    print(
        f"test top-1 {t['top1']:.2f}% (single scale, {s['weights']} weights, {t['images']} images){loc}; "
        f"checkpoint {s['checkpoint']}"
    )


def add(sub: argparse._SubParsersAction) -> None:
    """The train subcommand."""
    t = sub.add_parser("train", help="train RAMS-Trans (default: the synthetic CPU demo)")
    t.add_argument("--config", help=f"YAML file or name in ramstrans/configs/ (default: {DEFAULT_CONFIG})")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument(
        "--resume",
        metavar="CKPT|DIR|auto",
        help="continue a run: a checkpoint, a run folder (its newest checkpoint), or auto (the configured "
        "run folder's newest checkpoint, a fresh start if it has none); the run's stored config is "
        "used, with --set on top",
    )
    t.add_argument("--output-dir", help="shortcut for --set train.output_dir=DIR")
    t.add_argument("--overwrite", action="store_true", help="replace another run already in the run folder")
    t.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    t.set_defaults(func=run)
