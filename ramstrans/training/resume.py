"""Continuing a training run from its checkpoint (``resume_run``): the EMA, the optimizer's per-parameter state, the
scaler, the step, the data position and the RNG; a warning where the config changed what the checkpoint planned (the
lr schedule, the batch layout)."""

import logging

import torch

from ramstrans.checkpoint import set_rng_state
from ramstrans.config import Config, ConfigError, config_diff, config_from_dict
from ramstrans.errors import CheckpointError
from ramstrans.runtime.dist import DistInfo
from ramstrans.training.build import lr_at, scaled
from ramstrans.training.monitor import TrainingRun

__all__ = ["resume_run"]

logger = logging.getLogger("ramstrans")
_SCHEDULE_KEYS = ("steps", "warmup_steps", "warmup_lr", "lr", "min_lr", "lr_ref_batch", "batch_size", "grad_accum")


def _restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict, old_opt: str, new_opt: str) -> None:
    """Per-parameter state (momentum, Adam moments) from the checkpoint; hyperparameters stay the configured ones."""
    fresh = optimizer.state_dict()
    same = old_opt == new_opt and [len(g["params"]) for g in saved["param_groups"]] == [
        len(g["params"]) for g in fresh["param_groups"]
    ]
    if not same:
        raise ConfigError(
            f"the optimizer differs from the checkpoint's (train.opt {old_opt} -> {new_opt}, or other "
            "parameter groups from train.layer_decay / train.weight_decay): its state cannot be "
            "resumed; start a new run from the checkpoint with --set model.pretrained=CHECKPOINT"
        )
    groups = [
        {**s, **{k: v for k, v in f.items() if k != "params"}}
        for s, f in zip(saved["param_groups"], fresh["param_groups"])
    ]
    optimizer.load_state_dict({"state": saved["state"], "param_groups": groups})


def _warn_if_replanned(old: Config, new: Config, start: int, world_size: int) -> None:
    """Log a warning when the config changes the lr schedule a checkpoint was trained on."""
    changed = {k: v for k, v in config_diff(old, new, "train").items() if k.split(".", 1)[1] in _SCHEDULE_KEYS}
    if not changed or start >= new.train.steps:
        return
    before = lr_at(scaled(old.train, world_size), min(start, old.train.steps - 1))
    after = lr_at(scaled(new.train, world_size), start)
    logger.warning(
        "the lr schedule changed on resume (%s): it is re-planned over %d steps and continues from step %d "
        "at lr %.3g (the checkpoint's schedule had %.3g)",
        ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()),
        new.train.steps,
        start,
        after,
        before,
    )


def resume_run(r: TrainingRun, ckpt: dict, cfg: Config, info: DistInfo) -> None:
    """Continue ``r`` from a checkpoint: EMA, optimizer, scaler, step, data position, RNG; warn where the config
    changed what the checkpoint planned."""
    missing = [k for k in ("optimizer", "rng", "step") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"the checkpoint to resume has no '{missing[0]}' entry: it cannot be continued exactly; "
            "start a new run from its weights with --set model.pretrained=CHECKPOINT"
        )
    old_cfg = config_from_dict(ckpt["config"])
    t, old = cfg.train, old_cfg.train
    r.start = int(ckpt["step"])
    if t.steps < r.start:
        raise ConfigError(
            f"the checkpoint is at step {r.start} but train.steps is {t.steps}: raise train.steps to train on"
        )
    _warn_if_replanned(old_cfg, cfg, r.start, info.world_size)
    _restore_optimizer(r.optimizer, ckpt["optimizer"], old.opt, t.opt)
    if r.scaler is not None and ckpt.get("scaler"):
        r.scaler.load_state_dict(ckpt["scaler"])
    if r.ema is not None:
        if isinstance(ckpt.get("model_ema"), dict):
            r.ema.module.load_state_dict(ckpt["model_ema"])
        else:
            logger.warning("the checkpoint has no EMA weights: the EMA starts from the resumed weights")
    layout = {"batch_size": t.batch_size, "grad_accum": t.grad_accum, "world_size": info.world_size}
    positions = ckpt.get("data_positions") or []
    if ckpt.get("data_layout") == layout and len(positions) == info.world_size:
        r.start_batch = int(positions[info.rank])
    else:
        r.start_batch = r.start * t.grad_accum
        logger.warning(
            "the batch layout differs from the checkpoint's (%s -> %s): the data continues in another, "
            "equally valid order",
            ckpt.get("data_layout"),
            layout,
        )
    r.best_val = ckpt.get("best_val")
    set_rng_state(ckpt["rng"])
