"""``ramstrans bench``: the benchmarks of ``ramstrans.bench``."""

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from ramstrans.cli.glance import run_glance
from ramstrans.errors import UsageError
from ramstrans.fields import whole_numbers
from ramstrans.runtime.files import write_text_atomic

__all__ = ["add"]


def _bench_latency(a: argparse.Namespace) -> dict:
    from ramstrans.bench.latency import bench_config_latency, bench_latency, bench_proposal

    if a.end_to_end:
        from ramstrans.bench.end_to_end import bench_end_to_end

        return {"end_to_end": bench_end_to_end(repeats=a.repeats, checkpoint=a.checkpoint)}
    if a.configs:
        return {
            "configs": bench_config_latency(
                a.configs.split(","), batch=a.batch, repeats=a.repeats, overrides=a.set or ()
            )
        }
    r = {"proposal": bench_proposal(repeats=a.repeats)}
    if a.checkpoint:
        if a.zoom_threshold is None:
            raise UsageError(
                "bench latency --checkpoint needs --zoom-threshold (choose it with ramstrans eval "
                "--split val --sweep-zoom)"
            )
        r["model"] = bench_latency(a.checkpoint, a.zoom_threshold, repeats=a.repeats)
    return r


def _positive(text: str, name: str) -> list[float]:
    """Comma-separated finite positive numbers, or one sentence naming ``name`` (the bench and its option)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(0 < v < float("inf") for v in values):
        raise UsageError(f"{name} must be comma-separated positive numbers, got '{text}'")
    return values


def _multiples(text: str) -> list[int]:
    """``--multiples``: distinct positive whole numbers, in increasing order."""
    values = _positive(text, "bench zoom --multiples")
    if not all(v == int(v) for v in values):
        raise UsageError(f"bench zoom --multiples must be whole multiples of the demo's steps, got '{text}'")
    return sorted({int(v) for v in values})


def _sd_grid(a: argparse.Namespace) -> dict[str, Sequence]:
    targets = a.sd_target.split(",")
    if not set(targets) <= {"fused", "last"}:
        raise UsageError(f"bench zoom --sd-target takes fused and/or last, got '{a.sd_target}'")
    return {
        "beta": _positive(a.sd_beta, "bench zoom --sd-beta"),
        "tau": _positive(a.sd_tau, "bench zoom --sd-tau"),
        "target": targets,
    }


def _student(text: str) -> dict[str, object]:
    """One ``ALPHA:TAU:MIX`` entry of ``--student-grid``: λ in [0, 1], τ > 0, MIX 0 or 1."""
    try:
        alpha, tau, mix = (float(v) for v in text.split(":"))
    except ValueError:
        alpha = tau = mix = float("nan")
    if not (0 <= alpha <= 1 and 0 < tau < float("inf") and mix in (0, 1)):
        raise UsageError(
            f"bench zoom --student-grid entries are ALPHA:TAU:MIX with ALPHA in [0, 1], TAU > 0 and MIX 0 or 1 "
            f"(e.g. 1:1:0), got '{text}'"
        )
    return {"alpha": alpha, "tau": tau, "mix": bool(mix)}


def _seeds(a: argparse.Namespace) -> list[int]:
    """``--seeds``: comma-separated whole numbers ≥ 0, or one sentence naming the bench."""
    return whole_numbers(a.seeds, f"bench {a.what} --seeds")


def _run_inat(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.inat import bench_inat_index

    return bench_inat_index(a.num_images, a.num_classes, a.workdir)


def _run_predict(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.predict import bench_predict

    counts = [int(v) for v in _positive(a.counts, "bench predict --counts")]
    r = bench_predict(counts, a.workdir, a.batch_size, a.num_workers)
    if a.out:
        write_text_atomic(a.out, json.dumps({**r, "command": f"ramstrans bench predict --counts {a.counts}"}, indent=1))
    return r


def _run_ddp(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.ddp import bench_ddp

    return bench_ddp(a.backbone, a.img_size, a.batch, a.repeats, a.depth)


def _run_demo(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.demo import bench_demo

    r = bench_demo(_seeds(a), a.config, a.split, a.out or "runs/bench_demo", a.set or (), a.zoom_threshold)
    print(_demo_table(r, Path(a.out or "runs/bench_demo") / f"{a.split}_result.json"))
    return None


def _run_distill(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.distill import bench_distill

    return bench_distill(_seeds(a), a.split, a.out or "runs/bench_distill", overrides=a.set or ())


def _run_options(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.options import bench_options

    return bench_options(_seeds(a), a.out or "runs/bench_options", overrides=a.set or ())


def _run_ema(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.training import bench_ema

    return bench_ema(_seeds(a), a.config, a.ema_decay, a.out or "runs/bench_ema", a.set or ())


def _run_accum(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.training import bench_accum

    return bench_accum(_seeds(a)[0], a.config, a.accum, a.out or "runs/bench_accum", a.set or ())


def _run_zoom(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.zoom import bench_zoom

    r = bench_zoom(
        a.stage,
        _seeds(a),
        a.config,
        a.out or "runs/bench_zoom",
        a.set or (),
        sd_grid=_sd_grid(a),
        student_grid=[_student(s) for s in a.student_grid.split(",")],
        multiples=_multiples(a.multiples),
    )
    print(f"bench zoom --stage {a.stage}: written to {r['result']}")
    return None


def _run_transmix(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.transmix import bench_transmix

    return bench_transmix(a.backbone, a.img_size, a.batch, a.repeats, a.device or "cpu", a.depth)


def _run_core(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.core import bench_core

    return bench_core(a.backbone, a.img_size, a.batch, a.repeats, a.device or "cpu", a.depth)


def _run_quantize(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.quantize import bench_quantize

    files = [c for c in (a.checkpoints or "").split(",") if c]
    return bench_quantize(files, a.out or "runs/bench_quantize", split=a.split, calibration_images=a.calibration_images)


def _run_backbones(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.backbones import bench_backbones

    r = bench_backbones(_seeds(a), a.config, a.out or "runs/bench_backbones", a.set or ())
    return {"rows": r["rows"], "minus_vit": r["minus_vit"]}


def _run_longtail(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.longtail import bench_longtail

    r = bench_longtail(
        _seeds(a),
        _positive(a.ratios, "bench longtail --ratios"),
        a.methods.split(","),
        a.config,
        a.out or "runs/bench_longtail",
        a.set or (),
    )
    return {"summary": r["summary"]}


def _run_gpu(a: argparse.Namespace) -> dict | None:
    import torch

    from ramstrans.bench.gpu import bench_gpu

    device = a.device or "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("bench gpu: no CUDA device here; run it where one is, or try it with --device cpu --tiny")
    out = a.out or "runs/bench_gpu/result.json"
    r = bench_gpu(device, a.budget_s, out, a.tiny, a.train_check)
    print(f"bench gpu: {len(r['rows'])} rows written to {out}")
    return None


def _run_report(a: argparse.Namespace) -> dict | None:
    from ramstrans.bench.report import bench_report

    r = bench_report(repeats=a.repeats)
    if a.out:
        write_text_atomic(
            a.out, json.dumps({**r, "command": f"ramstrans bench report --repeats {a.repeats}"}, indent=1)
        )
    return r


# What each ``bench WHAT`` runs: its result (printed as JSON), or None when it printed its own report.
_BENCHES: dict[str, Callable[[argparse.Namespace], dict | None]] = {
    "inat": _run_inat,
    "predict": _run_predict,
    "ddp": _run_ddp,
    "demo": _run_demo,
    "distill": _run_distill,
    "options": _run_options,
    "ema": _run_ema,
    "accum": _run_accum,
    "zoom": _run_zoom,
    "latency": _bench_latency,
    "transmix": _run_transmix,
    "quantize": _run_quantize,
    "backbones": _run_backbones,
    "longtail": _run_longtail,
    "gpu": _run_gpu,
    "glance": run_glance,
    "report": _run_report,
}


def run(a: argparse.Namespace) -> None:
    r = _BENCHES.get(a.what, _run_core)(a)
    if r is not None:
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


def add(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmarks: speed against timm, TransMix cost, iNat indexing, the demo's claim")
    b.add_argument(
        "what",
        nargs="?",
        default="core",
        choices=tuple(["core", *_BENCHES]),
        help="core: model speed against timm (default); transmix: TransMix cost per step; ddp: a "
        "2-process gloo step against a 1-process step; inat: indexing a generated iNat 2017 JSON; "
        "demo: plain ViT against RAMS-Trans over seeds; distill: the demo teacher, and the student "
        "without a teacher, with soft and with hard distillation over seeds; options: the distilled "
        "transformer's options against the demo RAMS-Trans (validation); ema: raw against EMA "
        "weights over seeds (validation); accum: one batch against accumulated batches (validation); "
        "latency: test-time latency of a checkpoint (eager, fused, adaptive, onnxruntime), of the "
        "proposal, and of configs (--configs) at batch 1; zoom: the zoom's accuracy at one pass "
        "(self-distillation, a student of the fused teacher, the zoom gate) against cost, by --stage; "
        "quantize: the top-1 each ONNX precision costs, per checkpoint of --checkpoints; backbones: RAMS-Trans on a "
        "ViT, a register ViT and a ResNet (activation saliency) over seeds (validation); longtail: the long-tail "
        "remedies (samplers, logit adjustment) on a long-tailed demo over seeds and --ratios; gpu: one prepared GPU "
        "benchmark (train and inference throughput, syncs, compile, proposal, loader, onnxruntime CUDA) within "
        "--budget-s; predict: the streaming of predict's rows over folders of --counts images (first row, memory); "
        "glance: glance and focus (each scale at its own size, the zoom from the source) as top-1 against GMACs, "
        "by --rows on a --variant over seeds; report: eval --report's page at CUB's 5,794 test images (size, first "
        "paint in the system Chromium)",
    )
    _speed_arguments(b)
    _run_arguments(b)
    _zoom_and_latency_arguments(b)
    b.set_defaults(func=run)


def _speed_arguments(b: argparse.ArgumentParser) -> None:
    """The model-speed benchmarks' options (core, transmix, ddp) and inat's."""
    b.add_argument("--backbone", default="vit_base_patch16_224")
    b.add_argument("--img-size", type=int, default=448)
    b.add_argument("--batch", type=int, default=2)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--device", help="core, transmix: cpu (default) or cuda; gpu: cuda (default) or cpu")
    b.add_argument("--depth", type=int, default=0, help="override the depth (0: the model's own)")
    b.add_argument("--num-images", type=int, default=579184, help="inat: training images of the generated JSON")
    b.add_argument("--num-classes", type=int, default=5089, help="inat: categories of the generated JSON")
    b.add_argument("--workdir", help="inat, predict: where to write the generated files (default: a temporary folder)")
    b.add_argument(
        "--counts", default="1000,10000,100000", help="predict: comma-separated numbers of images of each run"
    )
    b.add_argument("--batch-size", type=int, default=32, help="predict: images per batch")
    b.add_argument("--workers", dest="num_workers", type=int, default=2, help="predict: decoding threads")


def _run_arguments(b: argparse.ArgumentParser) -> None:
    """The options of the benchmarks that train runs (demo, distill, options, ema, accum) and of latency's model."""
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
    b.add_argument("--checkpoints", help="quantize: comma-separated checkpoints or run folders (NAME_seedN groups)")
    b.add_argument("--calibration-images", type=int, default=256, help="quantize: int8 calibration images")
    b.add_argument("--budget-s", type=float, default=420.0, help="gpu: no new row starts after this many seconds")
    b.add_argument("--tiny", action="store_true", help="gpu: a 2-block ViT at 64 px (the CPU check the tests run)")
    b.add_argument("--train-check", action="store_true", help="gpu: also train, resume and evaluate a short run")
    b.add_argument("--variant", default="hires", choices=("hires", "demo"), help="glance: the data set variant")
    b.add_argument(
        "--cost", choices=("demo", "cub", "both"), help="glance: time and count the rows instead (run it alone)"
    )
    b.add_argument("--frontier", help="glance: draw the test results and cost of --out into this PNG")
    b.add_argument("--rows", help="glance: comma-separated rows (vit, rams_input, rams_source, gf_<glance>_<focus>)")
    b.add_argument("--ratios", default="10,50", help="longtail: imbalance ratios r (data.synthetic.imbalance)")
    b.add_argument(
        "--methods",
        default="uniform,class_balanced,sqrt,logit_adjust",
        help="longtail: comma-separated remedies (uniform is always run: the paired differences need it)",
    )


def _zoom_and_latency_arguments(b: argparse.ArgumentParser) -> None:
    """bench zoom's stages and grids, and latency's configs."""
    b.add_argument(
        "--stage",
        default="screen",
        choices=("screen", "ema", "report", "latency"),
        help="zoom: screen (the grids, on validation), ema (the target's source with an EMA), report "
        "(every row, validation and test), latency (ms per image; run it alone)",
    )
    b.add_argument("--sd-beta", default="0.5,1,2,4", help="zoom --stage screen: self-distillation weights β")
    b.add_argument("--sd-tau", default="1,2,4", help="zoom --stage screen: self-distillation temperatures τ")
    b.add_argument("--sd-target", default="fused,last", help="zoom --stage screen: self-distillation targets")
    b.add_argument(
        "--student-grid",
        default="0.5:1:0,0.5:2:0,1:1:0,0.5:1:1",
        help="zoom --stage screen: the students of the fused teacher, comma-separated ALPHA:TAU:MIX (MIX 1: CutMix)",
    )
    b.add_argument(
        "--multiples", default="1,2,4", help="zoom --stage report: multiples of the demo's steps for the trend rows"
    )
    b.add_argument(
        "--end-to-end",
        action="store_true",
        help="latency: from a JPEG on disk to the top 5 (decode, preprocess, model, softmax), RAMS-Trans ViT-B/16 "
        "and the ViT-S/16 student, eager and onnxruntime fp32 / int8, batch 1 (--repeats: at least 50; "
        "--checkpoint: also the start-up of predict on it and on its ONNX export)",
    )
    b.add_argument(
        "--configs",
        help="latency: comma-separated configs whose models to time at --batch (instead of the "
        "proposal and a checkpoint)",
    )
