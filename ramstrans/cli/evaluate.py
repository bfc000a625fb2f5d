"""``ramstrans eval``: one evaluation, or the zoom sweep on a validation split."""

import argparse
from dataclasses import replace

from ramstrans.cli.common import CHECKPOINT_HELP, OVERWRITE_HELP, add_request_arguments, request_from
from ramstrans.errors import UsageError

__all__ = ["add"]


def run(a: argparse.Namespace) -> None:
    from ramstrans.inference.calibration import run_calibrate
    from ramstrans.inference.evaluate import run_eval
    from ramstrans.inference.sweep import run_zoom_sweep

    request = request_from(a)
    if a.calibrate:
        fit = run_calibrate(replace(request, shift=()))  # fitted on the split's own images
        print(
            f"temperature {fit['temperature']:.4f} fitted on {fit['images']} {fit['split']} images (scale 1): ECE "
            f"{fit['ece_before']:.4f} -> {fit['ece_after']:.4f}, NLL {fit['nll_before']:.4f} -> "
            f"{fit['nll_after']:.4f}; stored in {fit['output']} (eval and predict apply it)"
        )
    if a.sweep_zoom:
        if a.report:
            raise UsageError(
                "--report belongs to an evaluation; --sweep-zoom writes the sweep (run them one at a time)"
            )
        _print_sweep(run_zoom_sweep(request, output_dir=a.output, zoom_on=a.zoom_on, overwrite=a.overwrite))
        return
    r = run_eval(
        request,
        output_dir=a.output,
        scales=a.scales,
        zoom_threshold=a.zoom_threshold,
        zoom_on=a.zoom_on,
        show_progress=not a.no_progress,
        overwrite=a.overwrite,
        tta=a.tta,
        shot_thresholds=(a.many_shot, a.few_shot),
        report=a.report,
    )
    if a.report:
        print(f"report: {r['report']} (open it in a browser; thumbnails in report_files/ beside it)")
    print(eval_sentence(r))


def eval_sentence(r: dict) -> str:
    """One line a person reads: what was scored how, the accuracy, and where the files went (the JSON is there)."""
    if r["scales"] == "auto":
        mode = (
            f"adaptive zoom below {r['zoom_threshold']:g} on {r['zoom_on']}, {r['passes_per_image']:.2f} backbone "
            "passes per image"
        )
    else:
        mode = "single scale" if r["scales"] == 1 else f"{r['scales']} scales fused"
    loc = f", proposal mIoU {r['loc_miou']:.3f}, IoU>=0.5 {r['loc_iou50']:.1f}%" if "loc_miou" in r else ""
    skipped = f", {r['skipped']} unreadable skipped" if r["skipped"] else ""
    tta = f", flip TTA ({r['passes_per_image']:.2f} passes per image)" if r.get("tta") == "flip" else ""
    shots = ", ".join(
        f"{g}-shot {s['accuracy']:.1f}%" for g, s in r.get("shots", {}).items() if s["accuracy"] is not None
    )
    shots = f" ({shots})" if shots else ""
    calibrated = f", T {r['temperature']:.3f}" if r.get("temperature", 1.0) != 1.0 else ""
    return (
        f"{r['split']} top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%, mean class accuracy "
        f"{r['mean_class_acc']:.2f}%{shots}, ECE {r['ece']:.4f}{calibrated} ({mode}{tta}, {r['weights']} "
        f"weights, {r['images']} images{skipped}){loc}; written to {r['output']}"
    )


def _print_sweep(r: dict) -> None:
    print(f"{'threshold':>9} {'top-1 %':>8} {'zoomed':>7} {'passes/image':>12}")
    for row in r["rows"]:
        print(f"{row['threshold']:9.2f} {row['top1']:8.2f} {row['zoomed_share']:7.1%} {row['passes_per_image']:12.2f}")
    best = r["chosen"]
    choice = (
        (
            f"--zoom-threshold {best['threshold']:g} ({best['top1']:.2f}%, {best['passes_per_image']:.2f} passes "
            "per image)"
        )
        if best
        else "none"
    )
    print(
        f"single scale {r['single_scale_top1']:.2f}%, full fusion {r['full_fusion_top1']:.2f}% "
        f"({r['full_fusion_passes_per_image']:g} passes); cheapest within {r['tolerance_points']:g} points of full "
        f"fusion: {choice}; written to {r['output']}"
    )


def add(sub: argparse._SubParsersAction) -> None:
    """The eval subcommand."""
    e = sub.add_parser("eval", help="evaluate a checkpoint (single scale by default)")
    add_request_arguments(
        e,
        "split",
        "batch_size",
        "device",
        "data_root",
        "workers",
        "skip_corrupt",
        "weights",
        "shift",
        source_help=f"{CHECKPOINT_HELP}, or a .onnx file written by ramstrans export (scored through onnxruntime)",
    )
    e.add_argument(
        "--scales",
        default="1",
        help="1 (the test-time model, default), N (fuse the first N scales) or "
        "auto (zoom only the images scale 1 is unsure of)",
    )
    e.add_argument(
        "--zoom-threshold",
        type=float,
        help="--scales auto: zoom the images whose scale-1 confidence is below this, in [0, 1] (choose it "
        "with --sweep-zoom on --split val; default: the gate's own with --zoom-on gate, else 0.5)",
    )
    e.add_argument(
        "--zoom-on",
        default="maxprob",
        choices=("maxprob", "margin", "gate"),
        help="--scales auto: the confidence, the top probability, the top-1 minus top-2 margin, or 1 - the "
        "fitted zoom gate's probability that the zoom changes the answer (ramstrans fit-gate)",
    )
    e.add_argument(
        "--sweep-zoom",
        action="store_true",
        help="top-1 against cost for a grid of zoom thresholds (on a validation split, never test); "
        "names the cheapest within 0.5 points of full fusion",
    )
    e.add_argument("--output", help="output folder (default: eval_<split>_scales<N>_<weights> beside the checkpoint)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    e.add_argument(
        "--tta",
        default="none",
        choices=("none", "flip"),
        help="flip: the mean of the image's and its mirror's probabilities (twice the passes)",
    )
    e.add_argument(
        "--calibrate",
        action="store_true",
        help="--split val only: fit a temperature on scale 1's validation logits, store it beside the checkpoint "
        "(eval, predict and adaptive zoom apply it from then on), then evaluate with it",
    )
    e.add_argument(
        "--report",
        action="store_true",
        help="also write report.html into the output folder: every image with where the model zooms, what the zoom "
        "changed, the confusions, per-class accuracy and calibration (opens offline in a browser)",
    )
    e.add_argument("--many-shot", type=int, default=100, help="many-shot classes: more training images than this")
    e.add_argument("--few-shot", type=int, default=20, help="few-shot classes: fewer training images than this")
    e.set_defaults(func=run)
