"""What a training run holds (``TrainingRun``) and what it does after every optimizer step (``RunMonitor``): the EMA
update, checkpoints, periodic evaluation, best-on-validation selection and the metric records."""

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from ramstrans.checkpoint import rng_state, save_checkpoint, save_run_checkpoint
from ramstrans.config import Config
from ramstrans.data import DataBundle
from ramstrans.distill.teacher import Teacher
from ramstrans.models import Model
from ramstrans.runtime.dist import DistInfo, all_gather_int
from ramstrans.runtime.runlog import MetricsLog

__all__ = ["TrainingRun", "RunMonitor"]


@dataclass
class TrainingRun:
    """Everything a training run builds from the config (the engine receives these, not the config)."""

    model: Model
    ema: ModelEmaV3 | None
    data: DataBundle
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    start: int = 0
    start_batch: int = 0
    best_val: dict[str, float] | None = None
    teacher: Teacher | None = None  # the frozen distillation teacher
    teacher_source: dict[str, str] | None = None  # its path, architecture and file hash (checked on resume)


class RunMonitor:
    """What a run does after every optimizer step: update the EMA, write checkpoints (keeping the newest
    ``train.keep_checkpoints``), evaluate periodically, select ``best_val.pth`` on validation only, and log.

    Args:
        cfg: the resolved config (its ``train`` section sets the cadence; the whole config goes into checkpoints).
        run: the built run.
        out_dir: the run folder.
        info: this process's rank and world size (only rank 0 writes; every rank evaluates its shard).
        metrics: the run's metrics log (None on ranks other than 0).
        evaluate_fn: fn(model, dataset, split name) -> metrics of a (distributed) evaluation.
    """

    def __init__(
        self,
        *,
        cfg: Config,
        run: TrainingRun,
        out_dir: Path,
        info: DistInfo,
        metrics: MetricsLog | None,
        evaluate_fn: Callable[[Model, object, str], dict[str, float]],
    ) -> None:
        self.cfg, self.run, self.out_dir, self.info = cfg, run, out_dir, info
        self.metrics, self.evaluate_fn = metrics, evaluate_fn
        self.best: dict[str, Any] = dict(run.best_val or {"top1": -1.0})
        self.last_val: dict[str, Any] = {}

    @property
    def reported(self) -> str:
        """Which weights the run reports and selects on: "ema" when an EMA is kept, else "raw"."""
        return "ema" if self.run.ema is not None else "raw"

    def weights(self) -> list[tuple[str, Model]]:
        """(name, model) of every set of weights the run evaluates."""
        return [("raw", self.run.model)] + ([("ema", self.run.ema.module)] if self.run.ema is not None else [])

    def log(self, kind: str, record: dict[str, object]) -> None:
        if self.metrics is not None:
            self.metrics.write(kind, record)

    def evaluate(self, split: str, step: int, **extra: object) -> dict[str, dict[str, Any]]:
        """Every set of weights on a split; logged; returns {weights: record (step, split, weights, metrics)}."""
        dataset = {"val": self.run.data.val, "test": self.run.data.test}[split]
        out = {}
        for name, model in self.weights():
            metrics = self.evaluate_fn(model, dataset, split)
            out[name] = {"step": step, "split": split, "weights": name, **extra, **metrics}
            self.log("eval", out[name])
        return out

    def state(self, done: int, batches: int) -> dict[str, object]:
        """The checkpoint of the run after ``done`` steps (every rank must call it: it gathers the data positions)."""
        r, t = self.run, self.cfg.train
        return {
            "model": r.model.state_dict(),
            "model_ema": r.ema.module.state_dict() if r.ema is not None else None,
            "optimizer": r.optimizer.state_dict(),
            "scaler": r.scaler.state_dict() if r.scaler else None,
            "step": done,
            "data_positions": all_gather_int(batches),
            "data_layout": {"batch_size": t.batch_size, "grad_accum": t.grad_accum, "world_size": self.info.world_size},
            "rng": rng_state(),
            "config": asdict(self.cfg),
            "class_names": list(r.data.index.class_names),
            "class_counts": None if r.data.class_counts is None else r.data.class_counts.tolist(),  # training images
            "best_val": self.best if self.best["top1"] >= 0 else None,
            "teacher": r.teacher_source,
        }

    def save(self, done: int, batches: int, latest: bool = True, best: bool = False) -> None:
        """Write the newest checkpoint and/or ``best_val.pth``; refused when the weights are no longer finite."""
        finite = torch.stack([p.detach().isfinite().all() for p in self.run.model.parameters()]).all()
        if not finite.item():
            raise FloatingPointError(
                f"the weights became non-finite by step {done}; the last checkpoint on disk is "
                "kept; lower train.lr or check the data"
            )
        state = self.state(done, batches)
        if self.info.is_main and latest:
            save_run_checkpoint(state, self.out_dir, self.cfg.train.keep_checkpoints)
        if self.info.is_main and best:
            save_checkpoint(state, self.out_dir / "best_val.pth")

    def after_step(self, done: int, batches: int) -> None:
        """EMA update, checkpoint, validation (selecting best_val.pth) and the periodic test curve."""
        t, r = self.cfg.train, self.run
        if r.ema is not None:
            r.ema.update(r.model, step=done)
        periodic = bool(t.eval_every) and done % t.eval_every == 0
        best = False
        if r.data.val is not None and (periodic or done == t.steps):
            val = self.evaluate("val", done)[self.reported]
            self.last_val = {**val, "step": done}
            if val["top1"] > self.best["top1"]:  # model selection on validation only, never on test
                self.best = {**val, "step": done}
                best = True
        latest = done % t.ckpt_every == 0 or done == t.steps
        if latest or best:
            self.save(done, batches, latest, best)
        if periodic and done != t.steps:  # test numbers for the curves; they select nothing
            self.evaluate("test", done)
