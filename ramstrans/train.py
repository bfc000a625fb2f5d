"""``ramstrans train``: config -> built objects -> ``engine.train_steps``, with checkpoints, logs and curves.

This module and the ``build_*`` functions are the only code that reads the config; the engine gets built objects.
"""
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, save_config
from .data import DataBundle, build_data, eval_loader, load_index, train_loader
from .dist import DistInfo, all_reduce_sum_, barrier, init_distributed, shutdown
from .engine import evaluate, train_steps
from .losses import MultiScaleLoss
from .mixing import Mixer
from .models import MultiScaleForward, RAMSTrans, build_model
from .visualize import plot_curves

__all__ = ["run_training", "build_optimizer", "build_scheduler", "build_mixer", "amp_setup"]


def amp_setup(device: torch.device, enabled: bool) -> Tuple[Optional[torch.dtype], Optional[torch.amp.GradScaler]]:
    """bf16 autocast where supported, else fp16 with a GradScaler; nothing on the CPU."""
    if not enabled or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def build_optimizer(train_cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer factory ('momentum' = plain SGD momentum; tokens and biases without weight decay)."""
    kwargs = {"momentum": train_cfg.momentum} if train_cfg.opt in ("momentum", "sgd", "nesterov") else {}
    try:
        return create_optimizer_v2(model, opt=train_cfg.opt, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                                   **kwargs)
    except (AssertionError, ValueError) as e:
        raise ValueError(f"train.opt '{train_cfg.opt}' is not a timm optimizer ({e})") from None


def build_scheduler(train_cfg, optimizer: torch.optim.Optimizer) -> CosineLRScheduler:
    """Linear warm-up for ``warmup_steps``, then cosine from lr to ``min_lr`` at ``steps``, updated per step."""
    if not 0 <= train_cfg.warmup_steps < train_cfg.steps:
        raise ValueError(f"train.warmup_steps ({train_cfg.warmup_steps}) must be in [0, train.steps "
                         f"({train_cfg.steps}))")
    return CosineLRScheduler(optimizer, t_initial=train_cfg.steps - train_cfg.warmup_steps, lr_min=train_cfg.min_lr,
                             warmup_t=train_cfg.warmup_steps, warmup_lr_init=train_cfg.warmup_lr,
                             warmup_prefix=True, t_in_epochs=False)


def build_mixer(mix_cfg, model: RAMSTrans, seed: int, rank: int = 0) -> Optional[Mixer]:
    """The batch mixer of ``cfg.mix`` (None when off); sizes come from the backbone."""
    if not mix_cfg.enabled:
        return None
    bb = model.backbone
    return Mixer(num_classes=model.num_classes, image_size=bb.img_size, grid_size=bb.grid_size,
                 mixup_alpha=mix_cfg.mixup_alpha, cutmix_alpha=mix_cfg.cutmix_alpha, prob=mix_cfg.prob,
                 switch_prob=mix_cfg.switch_prob, label_smoothing=mix_cfg.label_smoothing,
                 correct_lam=mix_cfg.correct_lam, transmix=mix_cfg.transmix, area_weight=mix_cfg.area_weight,
                 seed=seed, rank=rank)


def _checkpoint_state(cfg: Config, model: RAMSTrans, optimizer, scheduler, scaler, step: int,
                      class_names) -> Dict[str, object]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "step": step, "rng": rng_state(),
            "config": asdict(cfg), "class_names": list(class_names),
            "normalization": {"mean": list(model.backbone.mean), "std": list(model.backbone.std)}}


@dataclass
class _Run:
    """Everything a training run builds from the config (the engine receives these, not the config)."""

    model: RAMSTrans
    data: DataBundle
    criterion: MultiScaleLoss
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: Optional[torch.amp.GradScaler]
    amp_dtype: Optional[torch.dtype]
    start: int


def _build(cfg: Config, ckpt: Optional[dict], info: DistInfo, device: torch.device) -> _Run:
    t = cfg.train
    torch.manual_seed(t.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    if not info.is_main:
        barrier()  # rank 0 generates / indexes first (the synthetic set is written once)
    index = load_index(cfg.data)
    if info.is_main:
        barrier()
    model = build_model(cfg.model, len(index.class_names))
    if ckpt is not None:
        if ckpt.get("class_names") != index.class_names:
            raise ValueError("the checkpoint to resume was trained on other classes than the configured data set")
        model.load_state_dict(ckpt["model"])
        norm = ckpt["normalization"]
        model.backbone.mean, model.backbone.std = tuple(norm["mean"]), tuple(norm["std"])
    data = build_data(cfg.data, index, cfg.model.img_size, model.backbone.mean, model.backbone.std, t.seed)
    for name, ds in (("train", data.train), ("val", data.val), ("test", data.test)):
        if ds is not None and len(ds) < info.world_size:
            raise ValueError(f"the {name} split has {len(ds)} images, fewer than the {info.world_size} processes")
    if len(cfg.loss.scale_weights) != cfg.model.num_scales:
        raise ValueError(f"loss.scale_weights has {len(cfg.loss.scale_weights)} entries but model.num_scales is "
                         f"{cfg.model.num_scales}")
    criterion = MultiScaleLoss(weights=cfg.loss.scale_weights, label_smoothing=cfg.loss.label_smoothing)
    model.to(device)
    global_batch = t.batch_size * info.world_size
    lr_cfg = replace(t, lr=t.lr * global_batch / t.lr_ref_batch) if t.lr_ref_batch > 0 else t
    optimizer = build_optimizer(lr_cfg, model)
    scheduler = build_scheduler(lr_cfg, optimizer)
    amp_dtype, scaler = amp_setup(device, t.amp)
    start = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start = int(ckpt["step"])
        set_rng_state(ckpt["rng"])
    return _Run(model, data, criterion, optimizer, scheduler, scaler, amp_dtype, start)


def run_training(cfg: Config, resume: Optional[str] = None, show_progress: bool = True) -> Dict[str, object]:
    """Train as configured (single process, or one rank of a torchrun job); returns the final single-scale test
    metrics and the run's files. Only rank 0 writes files and shows progress.

    Args:
        cfg: resolved config.
        resume: checkpoint to continue from (step, schedule and RNG continue; the data order continues exactly when
            the number of processes is the same, and is a different, equally valid order otherwise).
        show_progress: show the tqdm bar (rank 0).
    """
    t = cfg.train
    info, device = init_distributed(t.device, t.dist_timeout_s)
    try:
        return _train(cfg, load_checkpoint(resume) if resume else None, info, device, show_progress)
    finally:
        shutdown()


def _train(cfg: Config, ckpt: Optional[dict], info: DistInfo, device: torch.device,
           show_progress: bool) -> Dict[str, object]:
    t = cfg.train
    r = _build(cfg, ckpt, info, device)
    model, data = r.model, r.data
    out_dir = Path(t.output_dir).expanduser()
    log_path = out_dir / "metrics.jsonl"
    names = data.index.class_names
    best: Dict[str, float] = {"top1": -1.0}
    last_val: Dict[str, float] = {}
    start = {"event": "start", "step": r.start, "world_size": info.world_size,
             "global_batch": t.batch_size * info.world_size, "lr": r.optimizer.param_groups[0]["initial_lr"],
             "device": str(device), "train_images": len(data.train)}
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        print(f"training {cfg.model.backbone} with {cfg.model.num_scales} scale(s) on {len(data.train)} images: "
              f"global batch {start['global_batch']} ({t.batch_size} x {info.world_size} process(es)), "
              f"lr {start['lr']:.3g}, steps {r.start}..{t.steps} on {device}", flush=True)

    def log(entry: Dict[str, object]) -> None:
        if info.is_main:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def save(name: str, done: int) -> None:
        if info.is_main:
            save_checkpoint(_checkpoint_state(cfg, model, r.optimizer, r.scheduler, r.scaler, done, names),
                            out_dir / name)

    def run_eval(dataset) -> Dict[str, float]:
        shard = range(info.rank, len(dataset), info.world_size)  # every image once; sums reduced exactly
        res = evaluate(model, eval_loader(dataset, t.eval_batch_size, cfg.data.num_workers, shard), device=device,
                       num_classes=len(names), amp_dtype=r.amp_dtype, reduce=all_reduce_sum_)
        res.pop("_state")
        return res

    def after_step(done: int) -> None:
        if done % t.ckpt_every == 0 or done == t.steps:
            save("checkpoint.pth", done)
        periodic = bool(t.eval_every) and done % t.eval_every == 0
        if data.val is not None and (periodic or done == t.steps):
            val = run_eval(data.val)
            last_val.update(val, step=done)
            log({"step": done, "split": "val", **val})
            if val["top1"] > best["top1"]:  # model selection on validation only, never on test
                best.update(val, step=done)
                save("best_val.pth", done)
        if periodic and done != t.steps:  # test numbers for the curves; they select nothing
            log({"step": done, "split": "test", **run_eval(data.test)})

    log(start)
    stats = {"steps": 0, "images": 0, "seconds": 0.0, "skipped": 0}
    if r.start < t.steps:
        # Every parameter is used in every forward (all scales run inside one forward), so DDP needs no
        # find_unused_parameters; the attention capture is detached and adds no gradient to synchronise.
        train_module = MultiScaleForward(model)
        if info.enabled:
            train_module = DDP(train_module, device_ids=[device.index] if device.type == "cuda" else None)
        loader = train_loader(data.train, t.batch_size, t.seed, r.start, cfg.data.num_workers, info.rank,
                              info.world_size)
        stats = train_steps(train_module, r.criterion, r.optimizer, r.scheduler, loader, device=device,
                            start_step=r.start, total_steps=t.steps, amp_dtype=r.amp_dtype, scaler=r.scaler,
                            clip_grad=t.clip_grad, mixer=build_mixer(cfg.mix, model, t.seed, info.rank),
                            log_every=t.log_every, log=log, after_step=after_step,
                            show_progress=show_progress and info.is_main, world_size=info.world_size)
    final = {"step": t.steps, "split": "test", "final": True, **run_eval(data.test)}
    log(final)
    summary = {"test": final, "train": stats, "checkpoint": str(out_dir / "checkpoint.pth"),
               "best_val": best if data.val is not None else None, "final_val": last_val or None,
               "world_size": info.world_size}
    if info.is_main:
        plot_curves(log_path, out_dir / "curves.png")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
