"""``ramstrans train``: config -> built objects -> ``engine.train_steps``, with checkpoints, logs and curves.

This module and the ``build_*`` functions are the only code that reads the config; the engine gets built objects.

Resume semantics: the run continues from the checkpoint's step, weights, EMA, optimizer state, data position and RNG.
The learning-rate schedule is a function of the config and the step (nothing of it is restored), so a changed
``train.steps`` (or lr, warm-up, min_lr) re-plans the cosine over the new length and training continues on it from the
resumed step; a warning gives the lr before and after.
"""

import json
import logging
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch

from ramstrans.checkpoint import LATEST, find_checkpoint, load_checkpoint
from ramstrans.config import DEFAULT_CONFIG, Config, ConfigError, config_diff, load_config, save_config
from ramstrans.data import build_data, eval_loader, load_index, sampling_weights, train_loader
from ramstrans.errors import UsageError
from ramstrans.inference.evaluate import evaluate
from ramstrans.inference.plots import plot_curves
from ramstrans.models import Model, build_model
from ramstrans.models.backbones.distilled import Head
from ramstrans.models.build import model_from_checkpoint
from ramstrans.runtime.amp import amp_setup
from ramstrans.runtime.dist import DistInfo, all_reduce_sum_, barrier, init_distributed, shutdown
from ramstrans.runtime.files import write_text_atomic
from ramstrans.runtime.runlog import MetricsLog
from ramstrans.training.build import (
    build_criterion,
    build_ema,
    build_optimizer,
    build_scheduler,
    build_step,
    build_teacher,
    build_update,
    lr_at,
    scaled,
)
from ramstrans.training.engine import LoopPlan, train_steps
from ramstrans.training.monitor import RunMonitor, TrainingRun
from ramstrans.training.resume import resume_run
from ramstrans.training.runfolder import first_missing, prepare_folder, remove_if_unused

__all__ = ["run_training", "resolve_training"]

logger = logging.getLogger("ramstrans")


def resolve_training(config: str | None, overrides: Sequence[str], resume: str | None) -> tuple[Config, Path | None]:
    """The config and checkpoint of ``ramstrans train [--config] [--set ...] [--resume ...]``.

    Without ``--resume``: the config file (default ``synthetic_cpu``) and the overrides. With ``--resume CKPT|DIR``: the
    config stored in the checkpoint, the overrides on top, and the checkpoint's folder as the run folder (unless
    overridden). With ``--resume auto``: the configured run folder's newest checkpoint if it has one (then as above),
    else a fresh run.

    Raises:
        ConfigError: ``--config`` together with a checkpoint to resume (the checkpoint holds the config).
        FileNotFoundError: the checkpoint or run folder does not exist.
    """
    if resume is None:
        return load_config(config or DEFAULT_CONFIG, overrides), None
    if resume != "auto" and config is not None:
        raise ConfigError(
            "--config cannot be combined with --resume CHECKPOINT: the checkpoint holds the run's "
            "config; change values with --set"
        )
    named = load_config(config or DEFAULT_CONFIG, overrides) if resume == "auto" else None
    path = find_checkpoint(resume, named.train.output_dir if named else "")
    if path is None:
        assert named is not None  # only --resume auto finds no checkpoint
        return named, None
    stored = load_checkpoint(path, mmap=True)["config"]  # mapped: the tensors are not read
    stored.setdefault("train", {})["output_dir"] = str(path.parent)
    cfg = load_config(None, overrides, base=stored)
    differs = sorted(k for k in config_diff(named, cfg) if k != "train.output_dir") if named else []
    if differs:
        logger.warning(
            "resuming %s with the config stored in it; the --config file differs in %s", path, ", ".join(differs)
        )
    return cfg, path


def _build(cfg: Config, ckpt: dict | None, info: DistInfo, device: torch.device) -> TrainingRun:
    """Data, model (fresh, or rebuilt from the checkpoint alone), EMA, optimizer, schedule, AMP; resumed if ``ckpt``."""
    t = cfg.train
    torch.manual_seed(t.seed)  # once per run: the same initial weights on every rank (DDP also broadcasts rank 0's)
    if not info.is_main:
        barrier()  # rank 0 generates / indexes first (the synthetic set is written once)
    index = load_index(cfg.data)
    if info.is_main:
        barrier()
    if ckpt is not None:
        model = model_from_checkpoint(ckpt, cfg.model, weights="raw", origin="the checkpoint to resume")[0]
        if list(ckpt["class_names"]) != index.class_names:
            raise UsageError("the checkpoint to resume was trained on other classes than the configured data set")
    else:
        model = build_model(cfg.model, len(index.class_names), source_size=cfg.data.source_size)
    crop, resize = cfg.pipeline_size
    as_uint8 = cfg.model.zoom_source == "source"  # the source batch travels as uint8 (a quarter of float32's bytes)
    data = build_data(cfg.data, index, crop, model.backbone.mean, model.backbone.std, t.seed, resize, as_uint8)
    for name, ds in (("train", data.train), ("val", data.val), ("test", data.test)):
        if ds is not None and len(cast(Sized, ds)) < info.world_size:
            raise UsageError(
                f"the {name} split has {len(cast(Sized, ds))} images, fewer than the {info.world_size} processes"
            )
    model.to(device)
    optimizer = build_optimizer(scaled(t, info.world_size), model)
    amp_dtype, scaler = amp_setup(device, t.amp)
    teacher, source = build_teacher(cfg, index.class_names, model, device, ckpt)
    r = TrainingRun(
        model=model,
        ema=build_ema(t, model),
        data=data,
        optimizer=optimizer,
        scheduler=build_scheduler(scaled(t, info.world_size), optimizer),
        scaler=scaler,
        amp_dtype=amp_dtype,
        teacher=teacher,
        teacher_source=source,
    )
    if ckpt is not None:
        resume_run(r, ckpt, cfg, info)
    return r


def run_training(
    cfg: Config,
    resume: str | Path | None = None,
    show_progress: bool = True,
    overwrite: bool = False,
    restart: bool = False,
) -> dict[str, Any]:
    """Train as configured (single process, or one rank of a torchrun job); returns the final single-scale test
    metrics of the reported weights and the run's files. Only rank 0 writes files and shows progress.

    Args:
        cfg: resolved config (``resolve_training`` gives the one a resume should use).
        resume: checkpoint to continue from (step, EMA, optimizer, data position and RNG continue; the data order
            continues exactly when the batch size, accumulation and number of processes are the same).
        show_progress: a tqdm bar on a terminal (log lines otherwise).
        overwrite: replace the files of another run in ``train.output_dir`` (by default that is refused).
        restart: ``--resume auto`` found no checkpoint: a run of the same config that died before its first
            checkpoint (config and logs only) is started again from step 0 in its folder.
    """
    t = cfg.train
    out_dir = Path(t.output_dir).expanduser()
    info, device = init_distributed(t.device, t.dist_timeout_s)
    lock, created = None, first_missing(out_dir.absolute())
    try:
        ckpt = load_checkpoint(resume) if resume else None
        same, lock = prepare_folder(
            out_dir, Path(resume) if resume else None, overwrite, info, cfg if restart else None
        )
        return _train(cfg, ckpt, same, info, device, show_progress)
    finally:
        if lock is not None:
            lock.release()
        if info.is_main:
            remove_if_unused(out_dir.absolute(), created)  # a failed start leaves no folder it created
        shutdown()


def _train(
    cfg: Config, ckpt: dict | None, same_folder: bool, info: DistInfo, device: torch.device, show_progress: bool
) -> dict[str, Any]:
    t = cfg.train
    r = _build(cfg, ckpt, info, device)
    out_dir = Path(t.output_dir).expanduser()
    metrics = None
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        metrics = MetricsLog(out_dir, t.tensorboard, r.start if same_folder else None)
    evaluate_fn = _evaluator(cfg, r, info, device)
    monitor = RunMonitor(cfg=cfg, run=r, out_dir=out_dir, info=info, metrics=metrics, evaluate_fn=evaluate_fn)
    stats = {"steps": 0, "images": 0, "seconds": 0.0, "skipped": 0, "batches": r.start_batch}
    try:
        _log_start(cfg, r, info, device, monitor, resumed=ckpt is not None)
        teacher_eval = _report_teacher(r, monitor, evaluate_fn) if r.teacher is not None and ckpt is None else None
        if r.start < t.steps:
            stats = _run_steps(cfg, r, info, device, monitor, show_progress and info.is_main)
        final = monitor.evaluate("test", t.steps, final=True)
    finally:
        if metrics is not None:
            metrics.close()
    summary = {
        "test": final[monitor.reported],
        "weights": monitor.reported,
        "test_by_weights": final,
        "train": stats,
        "checkpoint": str(out_dir / LATEST),
        "best_val": monitor.best if r.data.val is not None and monitor.best["top1"] >= 0 else None,
        "final_val": monitor.last_val or None,
        "world_size": info.world_size,
        "teacher": teacher_eval,
    }
    if info.is_main:
        plot_curves(out_dir / "metrics.jsonl", out_dir / "curves.png")
        write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def _evaluator(cfg: Config, r: TrainingRun, info: DistInfo, device: torch.device) -> Callable[..., dict[str, float]]:
    """evaluate_fn(model, dataset, split): this process's shard of the split (every image once; the metric sums
    reduced exactly across processes)."""

    def evaluate_fn(model: Model, dataset: Any, split: str) -> dict[str, float]:
        shard = range(info.rank, len(dataset), info.world_size)
        loader = eval_loader(dataset, cfg.train.eval_batch_size, cfg.data.num_workers, shard)
        return evaluate(
            model,
            loader,
            device=device,
            num_classes=len(r.data.index.class_names),
            amp_dtype=r.amp_dtype,
            reduce=all_reduce_sum_,
            what=f"{split} split",
        )[0]

    return evaluate_fn


def _run_steps(
    cfg: Config, r: TrainingRun, info: DistInfo, device: torch.device, monitor: RunMonitor, show_progress: bool
) -> dict[str, float]:
    """The engine on the run's built objects, from ``r.start`` to ``train.steps``."""
    t = cfg.train
    counts = r.data.class_counts
    criterion = build_criterion(
        cfg.loss,
        cfg.model.num_scales,
        cfg.distill,
        r.teacher,
        head=cast(Head, cfg.model.eval_head),
        ema=r.ema.module if r.ema is not None else None,
        class_counts=counts,
    ).to(device)
    labels = r.data.train_labels
    weights = None if labels is None else sampling_weights(labels, cfg.data.sampler, len(r.data.index.class_names))
    loader = train_loader(
        r.data.train,
        t.batch_size,
        t.seed,
        r.start_batch,
        cfg.data.num_workers,
        info.rank,
        info.world_size,
        t.grad_accum,
        weights,
    )
    plan = LoopPlan(
        start_step=r.start,
        total_steps=t.steps,
        start_batch=r.start_batch,
        grad_accum=t.grad_accum,
        log_every=t.log_every,
        world_size=info.world_size,
    )
    return train_steps(
        build_step(cfg, r, info, device, criterion),
        build_update(t, r),
        r.scheduler,
        loader,
        plan,
        log=monitor.log,
        after_step=monitor.after_step,
        show_progress=show_progress,
    )


def _report_teacher(
    r: TrainingRun, monitor: RunMonitor, evaluate_fn: Callable[..., dict[str, float]]
) -> dict[str, object]:
    """The teacher's own accuracy before the student learns from it (validation split, or test without one)."""
    assert r.teacher is not None and r.teacher_source is not None  # called only with a teacher
    split, ds = ("val", r.data.val) if r.data.val is not None else ("test", r.data.test)
    res = evaluate_fn(r.teacher, ds, split)
    passes = r.teacher.passes_per_image
    monitor.log(
        "teacher",
        {
            "step": 0,
            "split": split,
            **r.teacher_source,
            **res,
            "teacher_scales": r.teacher.scales,
            "passes_per_image": passes,
        },
    )
    logger.info(
        "teacher %s (%d scale(s) fused: %d backbone pass(es) without gradient per image and supervised "
        "scale, each step): %s top-1 %.2f%% (mean class accuracy %.2f%%)",
        r.teacher_source["name"],
        r.teacher.scales,
        passes,
        split,
        res["top1"],
        res["mean_class_acc"],
    )
    return {"split": split, **res}


def _log_start(
    cfg: Config, r: TrainingRun, info: DistInfo, device: torch.device, monitor: RunMonitor, resumed: bool
) -> None:
    t = cfg.train
    global_batch = t.batch_size * t.grad_accum * info.world_size
    peak = scaled(t, info.world_size).lr
    lr_now = lr_at(scaled(t, info.world_size), min(r.start, t.steps - 1))
    monitor.log(
        "start",
        {
            "step": r.start,
            "resumed": resumed,
            "world_size": info.world_size,
            "global_batch": global_batch,
            "lr": lr_now,
            "peak_lr": peak,
            "device": str(device),
            "train_images": len(cast(Sized, r.data.train)),
            "weights_reported": monitor.reported,
        },
    )
    if info.is_main:
        logger.info(
            "training %s with %d scale(s) on %d images: global batch %d (%d x %d accumulated x %d "
            "process(es)), lr %.3g at step %d (peak %.3g), steps %d..%d on %s",
            cfg.model.backbone,
            cfg.model.num_scales,
            len(cast(Sized, r.data.train)),
            global_batch,
            t.batch_size,
            t.grad_accum,
            info.world_size,
            lr_now,
            r.start,
            peak,
            r.start,
            t.steps,
            device,
        )
