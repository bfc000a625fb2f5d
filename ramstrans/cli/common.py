"""What the subcommands share: help texts, bounds, and the options of a model source (``EvalRequest``), declared once
and read back into one request."""

import argparse
import dataclasses
from typing import Any

from ramstrans.registry import EvalRequest

__all__ = ["CHECKPOINT_HELP", "WEIGHTS_HELP", "OVERWRITE_HELP", "NUMBERS", "add_request_arguments", "request_from"]

CHECKPOINT_HELP = "a checkpoint file, or a run folder (its newest checkpoint)"
WEIGHTS_HELP = "auto (the EMA weights when the checkpoint has them, as training reported), raw or ema"
OVERWRITE_HELP = "replace the output if it already exists (never one of the inputs)"
_COUNT: dict[str, Any] = {"low": 1, "integer": True}  # a count of at least one
_SOME: dict[str, Any] = {"low": 0, "integer": True}  # a count that may be zero
# Every numeric option of every subcommand, checked in one place (``ramstrans.fields.number``) before a command runs:
# finite, in range, whole where a count is meant. dest -> (flag, bounds); a dest means the same in every subcommand.
NUMBERS: dict[str, tuple[str, dict[str, Any]]] = {
    "num_workers": ("--workers", _SOME),
    "batch_size": ("--batch-size", _COUNT),
    "topk": ("--topk", _COUNT),
    "repeats": ("--repeats", _COUNT),
    "batch": ("--batch", _COUNT),
    "num": ("--num", _COUNT),
    "scales": ("--scales", _COUNT),  # export's (an int); eval's and predict's are text, checked by deploy.modes
    "many_shot": ("--many-shot", _SOME),
    "few_shot": ("--few-shot", _SOME),
    "calibration_images": ("--calibration-images", _SOME),
    "zoom_threshold": ("--zoom-threshold", {"low": 0, "high": 1}),
    "budget_s": ("--budget-s", {"above": 0}),
    "ema_decay": ("--ema-decay", {"low": 0, "high": 1}),
    "accum": ("--accum", _COUNT),
    "img_size": ("--img-size", _COUNT),
    "depth": ("--depth", _SOME),
    "num_images": ("--num-images", _COUNT),
    "num_classes": ("--num-classes", _COUNT),
    "train_per_class": ("--train-per-class", _COUNT),
    "test_per_class": ("--test-per-class", _COUNT),
    "image_size": ("--image-size", {"low": 16, "integer": True}),  # the synthetic birds' smallest
    "seed": ("--seed", _SOME),
    "detail": ("--detail", {"above": 0, "high": 2}),
}


def add_request_arguments(
    p: argparse.ArgumentParser,
    *options: str,
    split: str = "test",
    workers: int = 2,
    source_help: str = CHECKPOINT_HELP,
    positional: bool = False,
) -> None:
    """Declare the model source (``--checkpoint``, or with ``positional`` the first argument) and the named options of
    ``EvalRequest`` on ``p``: any of "split", "batch_size", "device", "data_root", "workers", "skip_corrupt",
    "weights", "shift", "providers"."""
    if positional:
        p.add_argument("source", metavar="model", help=source_help)
    else:
        p.add_argument("--checkpoint", dest="source", required=True, help=source_help)
    add = {
        "split": lambda: p.add_argument("--split", default=split, help="the data split (default: %(default)s)"),
        "batch_size": lambda: p.add_argument("--batch-size", type=int, default=32),
        "device": lambda: p.add_argument("--device", default="auto", help="a checkpoint's device: auto, cpu or cuda"),
        "data_root": lambda: p.add_argument("--data-root", help="data set root, if not the training config's"),
        "workers": lambda: p.add_argument(
            "--workers",
            dest="num_workers",
            type=int,
            default=workers,
            help="data loader processes (predict: decoding threads; 0: in this process; default: %(default)s)",
        ),
        "skip_corrupt": lambda: p.add_argument(
            "--skip-corrupt", action="store_true", help="skip and count unreadable images"
        ),
        "weights": lambda: p.add_argument(
            "--weights", default="auto", choices=("auto", "raw", "ema"), help=WEIGHTS_HELP
        ),
        "shift": lambda: p.add_argument(
            "--shift",
            help="a shifted test set: comma-separated colour, blur, contrast (fixed hue rotation, Gaussian blur, "
            "halved contrast) applied after the crop",
        ),
        "providers": lambda: p.add_argument(
            "--providers",
            help="an ONNX file's onnxruntime execution providers, comma-separated in order of preference (default: "
            "CPUExecutionProvider; e.g. CUDAExecutionProvider,CPUExecutionProvider where onnxruntime-gpu is "
            "installed)",
        ),
    }
    for name in options:
        add[name]()


def request_from(a: argparse.Namespace) -> EvalRequest:
    """The ``EvalRequest`` of parsed arguments: the options ``add_request_arguments`` declared (comma lists made
    tuples), the rest at their defaults."""
    names = {f.name for f in dataclasses.fields(EvalRequest)}
    values = {k: v for k, v in vars(a).items() if k in names}
    for key in ("shift", "providers"):
        if key in values:
            values[key] = tuple(n for n in (values[key] or "").split(",") if n)
    return EvalRequest(**values)
