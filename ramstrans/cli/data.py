"""``ramstrans make-synthetic`` and ``ramstrans check-data``."""

import argparse
import json

__all__ = ["add"]


def _cmd_make_synthetic(a: argparse.Namespace) -> None:
    from ramstrans.data.synthetic.birds import make_synthetic

    out = make_synthetic(
        a.out,
        a.num_classes,
        a.train_per_class,
        a.test_per_class,
        a.image_size,
        a.seed,
        overwrite=a.overwrite,
        detail=a.detail,
    )
    print(f"wrote the synthetic birds ({a.num_classes} classes) in the CUB-200-2011 layout to {out}")


def _cmd_check_data(a: argparse.Namespace) -> int:
    from ramstrans.data.check import check_data, exit_code, format_report

    report = check_data(a.dataset, a.root, a.num_workers, decode=not a.no_decode, progress=not a.no_progress)
    print(json.dumps(report) if a.json else format_report(report))
    return exit_code(report)


def add(sub: argparse._SubParsersAction) -> None:
    """The make-synthetic and check-data subcommands."""
    m = sub.add_parser("make-synthetic", help="write the synthetic fine-grained birds in the CUB layout")
    m.add_argument("--out", required=True)
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--train-per-class", type=int, default=150)
    m.add_argument("--test-per-class", type=int, default=50)
    m.add_argument("--image-size", type=int, default=160)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument(
        "--detail", type=float, default=0.65, help="size of the species' parts relative to the bird (the demo's 0.65)"
    )
    m.add_argument("--overwrite", action="store_true", help="replace what --out holds (by default that is refused)")
    m.set_defaults(func=_cmd_make_synthetic)
    _add_check_data(sub)


def _add_check_data(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("check-data", help="check a data set folder: counts, missing / unreadable images, labels")
    c.add_argument("--dataset", required=True, help="cub, dogs, inat17, nabirds, folder, csv (as data.dataset)")
    c.add_argument("--root", required=True, help="the data set root (as data.root)")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    c.add_argument(
        "--workers", dest="num_workers", type=int, default=0, help="threads decoding images (default: one per core)"
    )
    c.add_argument("--no-decode", action="store_true", help="only check that the images exist")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_check_data)
