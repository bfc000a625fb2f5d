"""The ``ramstrans`` command: argument parsing and subcommands only. User mistakes -> one sentence, exit 2;
``check-data`` exits 0 when the data set is clean and 1 when it found problems (which it lists)."""

import argparse
import json
import sys
from pathlib import Path

from ramstrans.config import DEFAULT_CONFIG
from ramstrans.errors import CheckpointError, ConfigError, DataError
from ramstrans.runtime.runlog import setup_console_logging

__all__ = ["main"]

_AT_LEAST = {"workers": 0, "batch_size": 1, "topk": 1, "repeats": 1, "batch": 1}
CHECKPOINT_HELP = "a checkpoint file, or a run folder (its newest checkpoint)"
WEIGHTS_HELP = "auto (the EMA weights when the checkpoint has them, as training reported), raw or ema"


def _cmd_train(a: argparse.Namespace) -> None:
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


def _cmd_eval(a: argparse.Namespace) -> None:
    from ramstrans.inference.evaluate import run_eval, run_zoom_sweep

    common = dict(
        output_dir=a.output,
        split=a.split,
        zoom_on=a.zoom_on,
        weights=a.weights,
        batch_size=a.batch_size,
        device=a.device,
        data_root=a.data_root,
        num_workers=a.workers,
        skip_corrupt=a.skip_corrupt,
        overwrite=a.overwrite,
    )
    if a.sweep_zoom:
        _print_sweep(run_zoom_sweep(a.checkpoint, **common))
        return
    r = run_eval(
        a.checkpoint,
        scales=a.scales,
        zoom_threshold=a.zoom_threshold,
        show_progress=not a.no_progress,
        shift=[n for n in (a.shift or "").split(",") if n],
        **common,
    )
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
    return (
        f"{r['split']} top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%, mean class accuracy "
        f"{r['mean_class_acc']:.2f}% ({mode}, {r['weights']} weights, {r['images']} images{skipped}){loc}; "
        f"written to {r['output']}"
    )


def _cmd_fit_gate(a: argparse.Namespace) -> None:
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


def _cmd_visualize(a: argparse.Namespace) -> None:
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


def _cmd_export(a: argparse.Namespace) -> None:
    from ramstrans.export import export_onnx, export_timm

    if a.format == "timm":
        path = export_timm(a.checkpoint, a.out, a.scales, a.weights, overwrite=a.overwrite)
        print(
            f"wrote a timm folder to {path}: timm.create_model('local-dir:{path}', pretrained=True) loads the "
            f"single-scale model" + (f"; ramstrans predict {path} runs {a.scales} scales" if a.scales > 1 else "")
        )
    else:
        path = export_onnx(a.checkpoint, a.out, a.scales, a.weights, overwrite=a.overwrite)
        print(f"wrote the {'single-scale' if a.scales == 1 else f'fused {a.scales}-scale'} model as ONNX to {path}")


def _cmd_predict(a: argparse.Namespace) -> int:
    from ramstrans.inference.predict import run_predict

    r = run_predict(
        a.model,
        a.paths,
        topk=a.topk,
        fmt=a.format,
        out=a.out,
        scales=a.scales,
        zoom_threshold=a.zoom_threshold,
        zoom_on=a.zoom_on,
        batch_size=a.batch_size,
        device=a.device,
        num_workers=a.workers,
        weights=a.weights,
        visualize=a.visualize,
        show_progress=not a.no_progress,
        overwrite=a.overwrite,
    )
    if r["skipped"]:
        print(
            f"ramstrans: {r['skipped']} of {r['images']} paths could not be read (listed in the output)",
            file=sys.stderr,
        )
    return 1 if r["skipped"] else 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files, folders and globs (a checkpoint or an exported folder)")
    p.add_argument("model", help="a ramstrans checkpoint or a folder written by ramstrans export --format timm")
    p.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default: %(default)s)")
    p.add_argument("--format", default="csv", choices=("csv", "json"), help="CSV rows or JSON lines")
    p.add_argument("--out", help="file to write (default: standard output)")
    p.add_argument("--scales", default="1", help="1, N (fuse N scales) or auto (zoom the images scale 1 is unsure of)")
    p.add_argument(
        "--zoom-threshold",
        type=float,
        help="--scales auto: zoom below this confidence (default: the gate's own with --zoom-on gate, else 0.5)",
    )
    p.add_argument(
        "--zoom-on",
        default="maxprob",
        choices=("maxprob", "margin", "gate"),
        help="--scales auto: the confidence: the top probability, the top-1 minus top-2 margin, or 1 - the "
        "fitted zoom gate's probability that the zoom changes the answer (ramstrans fit-gate)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: in this process)")
    p.add_argument("--weights", default="auto", choices=("auto", "raw", "ema"), help=WEIGHTS_HELP)
    p.add_argument("--visualize", metavar="DIR", help="also draw the zoom panel of every image into DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the output if it already exists (never one of the inputs)"
    )
    p.set_defaults(func=_cmd_predict)


def _cmd_make_synthetic(a: argparse.Namespace) -> None:
    from ramstrans.data.synthetic.birds import make_synthetic

    out = make_synthetic(
        a.out, a.num_classes, a.train_per_class, a.test_per_class, a.image_size, a.seed, overwrite=a.overwrite
    )
    print(f"wrote the synthetic birds ({a.num_classes} classes) in the CUB-200-2011 layout to {out}")


def _bench_latency(a: argparse.Namespace) -> dict:
    from ramstrans.bench.latency import bench_config_latency, bench_latency, bench_proposal

    if a.configs:
        return {
            "configs": bench_config_latency(
                a.configs.split(","), batch=a.batch, repeats=a.repeats, overrides=a.set or ()
            )
        }
    r = {"proposal": bench_proposal(repeats=a.repeats)}
    if a.checkpoint:
        if a.zoom_threshold is None:
            raise ValueError(
                "bench latency --checkpoint needs --zoom-threshold (choose it with ramstrans eval "
                "--split val --sweep-zoom)"
            )
        r["model"] = bench_latency(a.checkpoint, a.zoom_threshold, repeats=a.repeats)
    return r


def _cmd_bench(a: argparse.Namespace) -> None:
    if a.what == "inat":
        from ramstrans.bench.inat import bench_inat_index

        r = bench_inat_index(a.num_images, a.num_classes, a.workdir)
    elif a.what == "ddp":
        from ramstrans.bench.ddp import bench_ddp

        r = bench_ddp(a.backbone, a.img_size, a.batch, a.repeats, a.depth)
    elif a.what == "demo":
        from ramstrans.bench.demo import bench_demo

        r = bench_demo(
            [int(s) for s in a.seeds.split(",")],
            a.config,
            a.split,
            a.out or "runs/bench_demo",
            a.set or (),
            a.zoom_threshold,
        )
        print(_demo_table(r, Path(a.out or "runs/bench_demo") / f"{a.split}_result.json"))
        return
    elif a.what == "distill":
        from ramstrans.bench.distill import bench_distill

        r = bench_distill(
            [int(s) for s in a.seeds.split(",")], a.split, a.out or "runs/bench_distill", overrides=a.set or ()
        )
    elif a.what == "options":
        from ramstrans.bench.options import bench_options

        r = bench_options([int(s) for s in a.seeds.split(",")], a.out or "runs/bench_options", overrides=a.set or ())
    elif a.what == "ema":
        from ramstrans.bench.training import bench_ema

        r = bench_ema(
            [int(s) for s in a.seeds.split(",")], a.config, a.ema_decay, a.out or "runs/bench_ema", a.set or ()
        )
    elif a.what == "accum":
        from ramstrans.bench.training import bench_accum

        r = bench_accum(int(a.seeds.split(",")[0]), a.config, a.accum, a.out or "runs/bench_accum", a.set or ())
    elif a.what == "zoom":
        from ramstrans.bench.zoom import bench_zoom

        r = bench_zoom(a.stage, [int(s) for s in a.seeds.split(",")], a.config, a.out or "runs/bench_zoom", a.set or ())
        print(f"bench zoom --stage {a.stage}: written to {Path(a.out or 'runs/bench_zoom') / f'{a.stage}_result.json'}")
        return
    elif a.what == "latency":
        r = _bench_latency(a)
    elif a.what == "transmix":
        from ramstrans.bench.transmix import bench_transmix

        r = bench_transmix(a.backbone, a.img_size, a.batch, a.repeats, a.device, a.depth)
    else:
        from ramstrans.bench.core import bench_core

        r = bench_core(a.backbone, a.img_size, a.batch, a.repeats, a.device, a.depth)
    print(json.dumps(r, indent=1))


def _demo_table(r: dict, path: Path) -> str:
    """bench demo's result as a person reads it: per model, mean ± half-range of top-1 and the per-seed values."""
    rows = [
        ("plain ViT", r["vit"]["top1"]),
        ("RAMS-Trans, single scale", r["rams"]["top1"]),
        ("RAMS-Trans, both scales fused", r["rams_fused"]["top1"]),
    ]
    if "rams_adaptive" in r:
        passes = r["rams_adaptive"]["passes_per_image"]["mean"]
        rows.append(
            (f"RAMS-Trans, adaptive ({r['zoom_threshold']:g}; {passes:.2f} passes)", r["rams_adaptive"]["top1"])
        )
    rows.append(("RAMS-Trans single - ViT, same seed", r["rams_minus_vit_top1"]))
    lines = [f"bench demo, {r['split']} split, seeds {', '.join(map(str, r['seeds']))} (top-1 %):"]
    for name, m in rows:
        lines.append(
            f"  {name:<44} {m['mean']:6.1f} ± {m['spread']:4.1f}   per seed "
            + ", ".join(f"{v:.1f}" for v in m["values"])
        )
    return "\n".join(lines + [f"written to {path}"])


def _cmd_check_data(a: argparse.Namespace) -> int:
    from ramstrans.data.check import check_data, exit_code, format_report

    report = check_data(a.dataset, a.root, a.workers, decode=not a.no_decode, progress=not a.no_progress)
    print(json.dumps(report) if a.json else format_report(report))
    return exit_code(report)


def _add_check_data(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("check-data", help="check a data set folder: counts, missing / unreadable images, labels")
    c.add_argument("--dataset", required=True, help="cub, dogs, inat17, nabirds, folder, csv (as data.dataset)")
    c.add_argument("--root", required=True, help="the data set root (as data.root)")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    c.add_argument("--workers", type=int, default=0, help="threads decoding images (default: one per core)")
    c.add_argument("--no-decode", action="store_true", help="only check that the images exist")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_check_data)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmarks: speed against timm, TransMix cost, iNat indexing, the demo's claim")
    b.add_argument(
        "what",
        nargs="?",
        default="core",
        choices=("core", "transmix", "ddp", "inat", "demo", "distill", "options", "ema", "accum", "latency", "zoom"),
        help="core: model speed against timm (default); transmix: TransMix cost per step; ddp: a "
        "2-process gloo step against a 1-process step; inat: indexing a generated iNat 2017 JSON; "
        "demo: plain ViT against RAMS-Trans over seeds; distill: the demo teacher, and the student "
        "without a teacher, with soft and with hard distillation over seeds; options: the distilled "
        "transformer's options against the demo RAMS-Trans (validation); ema: raw against EMA "
        "weights over seeds (validation); accum: one batch against accumulated batches (validation); "
        "latency: test-time latency of a checkpoint (eager, fused, adaptive, onnxruntime), of the "
        "proposal, and of configs (--configs) at batch 1; zoom: the zoom's accuracy at one pass "
        "(self-distillation, a student of the fused teacher, the zoom gate) against cost, by --stage",
    )
    b.add_argument("--backbone", default="vit_base_patch16_224")
    b.add_argument("--img-size", type=int, default=448)
    b.add_argument("--batch", type=int, default=2)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--device", default="cpu")
    b.add_argument("--depth", type=int, default=0, help="override the depth (0: the model's own)")
    b.add_argument("--num-images", type=int, default=579184, help="inat: training images of the generated JSON")
    b.add_argument("--num-classes", type=int, default=5089, help="inat: categories of the generated JSON")
    b.add_argument("--workdir", help="inat: where to write the JSON files (default: a temporary folder)")
    b.add_argument("--seeds", default="0,1,2,3,4", help="demo, ema: comma-separated training seeds (accum: the first)")
    b.add_argument("--config", default="synthetic_cpu", help="demo, ema, accum: the config trained")
    b.add_argument(
        "--split", default="test", choices=("test", "val"), help="demo, distill: report on test, or tune on val"
    )
    b.add_argument(
        "--out",
        help="demo, ema, accum: run folders, named after each run's resolved config (finished "
        "runs are reused; default runs/bench_<what>)",
    )
    b.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="demo, distill, options, ema, accum, latency --configs: config override (distill: teacher and "
        "students; options: students only; latency: every config)",
    )
    b.add_argument("--ema-decay", type=float, default=0.99, help="ema: train.ema_decay")
    b.add_argument("--accum", type=int, default=2, help="accum: accumulated batches")
    b.add_argument(
        "--zoom-threshold",
        type=float,
        help="demo --split test, latency: the adaptive threshold (demo's "
        "default: the one bench demo --split val chose)",
    )
    b.add_argument("--checkpoint", help="latency: the two-scale checkpoint to time")
    b.add_argument(
        "--stage",
        default="screen",
        choices=("screen", "ema", "report", "latency"),
        help="zoom: screen (the grids, on validation), ema (the target's source with an EMA), report "
        "(every row, validation and test), latency (ms per image; run it alone)",
    )
    b.add_argument(
        "--configs",
        help="latency: comma-separated configs whose models to time at --batch (instead of the "
        "proposal and a checkpoint)",
    )
    b.set_defaults(func=_cmd_bench)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ramstrans", description="RAMS-Trans fine-grained recognition on timm ViTs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train RAMS-Trans (default: the synthetic CPU demo)")
    t.add_argument("--config", help=f"YAML file or name in configs/ (default: {DEFAULT_CONFIG})")
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
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint (single scale by default)")
    e.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    e.add_argument("--split", default="test")
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
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="auto")
    e.add_argument("--data-root", help="data set root, if not the training config's")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--skip-corrupt", action="store_true", help="skip and count unreadable images")
    e.add_argument("--weights", default="auto", choices=("auto", "raw", "ema"), help=WEIGHTS_HELP)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument(
        "--shift",
        help="a shifted test set: comma-separated colour, blur, contrast (fixed hue rotation, "
        "Gaussian blur, halved contrast) applied after the crop",
    )
    e.add_argument(
        "--overwrite", action="store_true", help="replace the output if it already exists (never one of the inputs)"
    )
    e.set_defaults(func=_cmd_eval)

    v = sub.add_parser("visualize", help="draw where the model zooms")
    v.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    v.add_argument("--images", nargs="+", help="image files to draw")
    v.add_argument("--split", default="test")
    v.add_argument("--num", type=int, default=16)
    v.add_argument("--output", help="output folder (default: beside the checkpoint)")
    v.add_argument("--device", default="auto")
    v.add_argument("--data-root")
    v.add_argument("--weights", default="auto", choices=("auto", "raw", "ema"), help=WEIGHTS_HELP)
    v.add_argument(
        "--overwrite", action="store_true", help="replace the output if it already exists (never one of the inputs)"
    )
    v.set_defaults(func=_cmd_visualize)

    x = sub.add_parser("export", help="write a trained model as a timm folder or an ONNX file")
    x.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    x.add_argument(
        "--format",
        default="timm",
        choices=("timm", "onnx"),
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
    x.add_argument(
        "--overwrite", action="store_true", help="replace the output if it already exists (never one of the inputs)"
    )
    x.set_defaults(func=_cmd_export)

    m = sub.add_parser("make-synthetic", help="write the synthetic fine-grained birds in the CUB layout")
    m.add_argument("--out", required=True)
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--train-per-class", type=int, default=150)
    m.add_argument("--test-per-class", type=int, default=50)
    m.add_argument("--image-size", type=int, default=160)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--overwrite", action="store_true", help="replace what --out holds (by default that is refused)")
    m.set_defaults(func=_cmd_make_synthetic)

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
    g.set_defaults(func=_cmd_fit_gate)

    _add_predict(sub)
    _add_check_data(sub)
    _add_bench(sub)
    return p


def _one_sentence(e: BaseException) -> str:
    """The user-facing line of an error (a DataLoader worker wraps it in a traceback: keep its last line)."""
    msg = str(e).strip()
    if "Original Traceback" in msg:
        msg = msg.splitlines()[-1].split(": ", 1)[-1]
    return msg.splitlines()[0] if msg else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_console_logging()
    try:
        for name, low in _AT_LEAST.items():  # counts argparse types cannot bound
            value = getattr(args, name, None)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        if getattr(args, "checkpoint", None):  # a run folder stands for its newest checkpoint
            from ramstrans.checkpoint import checkpoint_file

            args.checkpoint = str(checkpoint_file(args.checkpoint))
        code = args.func(args)
    except (ConfigError, DataError, CheckpointError, ValueError, FileNotFoundError, FloatingPointError, OSError) as e:
        print(f"ramstrans: error: {_one_sentence(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ramstrans: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
