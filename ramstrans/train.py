"""``ramstrans train``: config -> built objects -> ``engine.train_steps``, with checkpoints, logs and curves.

This module and the ``build_*`` functions are the only code that reads the config; the engine gets built objects.
"""
import json
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, save_config
from .data import build_data, eval_loader, load_index, train_loader
from .engine import evaluate, train_steps
from .losses import MultiScaleLoss
from .models import MultiScaleForward, RAMSTrans, build_model
from .visualize import plot_curves

__all__ = ["run_training", "build_optimizer", "build_scheduler", "resolve_device", "amp_setup"]


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' was asked for but this machine has no CUDA GPU (use train.device=cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda[:N], got '{name}'")
    return torch.device(name)


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


def _checkpoint_state(cfg: Config, model: RAMSTrans, optimizer, scheduler, scaler, step: int,
                      class_names) -> Dict[str, object]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "step": step, "rng": rng_state(),
            "config": asdict(cfg), "class_names": list(class_names),
            "normalization": {"mean": list(model.backbone.mean), "std": list(model.backbone.std)}}


def run_training(cfg: Config, resume: Optional[str] = None, show_progress: bool = True) -> Dict[str, object]:
    """Train as configured; returns the final (single-scale) test metrics and the run's files.

    Args:
        cfg: resolved config.
        resume: checkpoint to continue from (same config; step, schedule, RNG and data order continue).
        show_progress: show the tqdm bar.
    """
    t = cfg.train
    device = resolve_device(t.device)
    amp_dtype, scaler = amp_setup(device, t.amp)
    torch.manual_seed(t.seed)
    out_dir = Path(t.output_dir).expanduser()
    ckpt = load_checkpoint(resume) if resume else None
    index = load_index(cfg.data)
    num_classes = len(index.class_names)
    model = build_model(cfg.model, num_classes)
    if ckpt is not None:
        if ckpt.get("class_names") != index.class_names:
            raise ValueError(f"checkpoint {resume} was trained on other classes than the configured data set")
        model.load_state_dict(ckpt["model"])
        norm = ckpt.get("normalization") or {}
        model.backbone.mean, model.backbone.std = tuple(norm["mean"]), tuple(norm["std"])
    data = build_data(cfg.data, index, cfg.model.img_size, model.backbone.mean, model.backbone.std, t.seed)
    model.to(device)
    criterion = MultiScaleLoss(weights=cfg.loss.scale_weights, label_smoothing=cfg.loss.label_smoothing)
    if len(cfg.loss.scale_weights) != cfg.model.num_scales:
        raise ValueError(f"loss.scale_weights has {len(cfg.loss.scale_weights)} entries but model.num_scales is "
                         f"{cfg.model.num_scales}")
    optimizer = build_optimizer(t, model)
    scheduler = build_scheduler(t, optimizer)
    start = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start = int(ckpt["step"])
        set_rng_state(ckpt["rng"])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    log_path = out_dir / "metrics.jsonl"
    names = data.index.class_names
    best = {"top1": -1.0}

    def log(entry: Dict[str, object]) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def run_eval(dataset) -> Dict[str, float]:
        res = evaluate(model, eval_loader(dataset, t.eval_batch_size, cfg.data.num_workers), device=device,
                       num_classes=num_classes, amp_dtype=amp_dtype)
        res.pop("_state")
        return res

    def after_step(done: int) -> None:
        if done % t.ckpt_every == 0 or done == t.steps:
            save_checkpoint(_checkpoint_state(cfg, model, optimizer, scheduler, scaler, done, names),
                            out_dir / "checkpoint.pth")
        periodic = bool(t.eval_every) and done % t.eval_every == 0
        if data.val is not None and (periodic or done == t.steps):
            val = run_eval(data.val)
            log({"step": done, "split": "val", **val})
            if val["top1"] > best["top1"]:  # model selection on validation only, never on test
                best.update(val, step=done)
                save_checkpoint(_checkpoint_state(cfg, model, optimizer, scheduler, scaler, done, names),
                                out_dir / "best_val.pth")
        if periodic and done != t.steps:  # test numbers for the curves; they select nothing
            log({"step": done, "split": "test", **run_eval(data.test)})

    if start < t.steps:
        loader = train_loader(data.train, t.batch_size, t.seed, start, cfg.data.num_workers)
        stats = train_steps(MultiScaleForward(model), criterion, optimizer, scheduler, loader, device=device,
                            start_step=start, total_steps=t.steps, amp_dtype=amp_dtype, scaler=scaler,
                            clip_grad=t.clip_grad, log_every=t.log_every, log=log, after_step=after_step,
                            show_progress=show_progress)
    else:
        stats = {"steps": 0, "images": 0, "seconds": 0.0, "skipped": 0}
    final = {"step": t.steps, "split": "test", "final": True, **run_eval(data.test)}
    log(final)
    plot_curves(log_path, out_dir / "curves.png")
    summary = {"test": final, "train": stats, "checkpoint": str(out_dir / "checkpoint.pth"),
               "best_val": best if data.val is not None else None}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
