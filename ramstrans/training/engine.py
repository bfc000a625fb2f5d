"""The training loop, ``train_steps``: the same for every kind of run. What one batch does is a step object chosen
when the run is built (``training.steps``), the update after a step's batches is another; the loop draws batches,
accumulates, updates, logs and calls the run's hooks. No config here, and no host read per step: the loss is checked
for non-finite values and the log's numbers are read on the device's side every ``log_every`` steps only."""

import functools
import logging
import operator
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ramstrans.errors import DataError
from ramstrans.training.steps import BatchStep, OptimizerUpdate

__all__ = ["train_steps", "LoopPlan", "MAX_EMPTY_DRAWS"]

logger = logging.getLogger("ramstrans")

# Optimizer steps in a row whose batches were all unreadable before training gives up (the data set is broken).
MAX_EMPTY_DRAWS = 100


@dataclass
class LoopPlan:
    """Which steps the loop runs and how it counts.

    Attributes:
        start_step: the first step (a resumed run's).
        total_steps: stop after this many steps in all.
        start_batch: the loader's first batch position (a resume continues the data exactly).
        grad_accum: batches per optimizer step (each batch's loss weighted by its share of the step's images).
        log_every: steps between "train" records.
        world_size: processes (for the global images/s).
    """

    start_step: int
    total_steps: int
    start_batch: int
    grad_accum: int = 1
    log_every: int = 20
    world_size: int = 1


class _Progress:
    """A tqdm bar on a terminal; otherwise (a pipe, a file, ``show_progress=False``) a plain log line every
    ``log_every`` steps through the ``ramstrans`` logger."""

    def __init__(self, start: int, total: int, show_bar: bool) -> None:
        self.bar = tqdm(total=total, initial=start, dynamic_ncols=True, unit="step") if show_bar else None
        self.start, self.total, self.t0 = start, total, time.perf_counter()

    def update(self, done: int, entry: dict[str, float] | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if entry is not None:
                self.bar.set_postfix(
                    loss=f"{entry['loss']:.3f}", lr=f"{entry['lr']:.2e}", img_s=f"{entry['img_per_s']:.1f}"
                )
        elif entry is not None:
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / max(done - self.start, 1) * (self.total - done)
            logger.info(
                "step %d/%d  loss %.4f  lr %.3g  %.1f img/s  eta %s",
                done,
                self.total,
                entry["loss"],
                entry["lr"],
                entry["img_per_s"],
                time.strftime("%H:%M:%S", time.gmtime(eta)),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _draw(data: Iterator[dict], count: int, step: int) -> tuple[list[dict], int, int]:
    """The next ``count`` batches of one optimizer step; a draw whose batches are all unreadable is redrawn.

    Returns:
        (non-empty batches, unreadable images skipped, batches drawn).
    """
    skipped = drawn = 0
    for _ in range(MAX_EMPTY_DRAWS):
        batches = [next(data) for _ in range(count)]
        drawn += count
        skipped += sum(b["skipped"] for b in batches)
        kept = [b for b in batches if "image" in b]
        if kept:
            return kept, skipped, drawn
    raise DataError(
        f"every image of {drawn} batches in a row was unreadable at step {step + 1}: the training data "
        "is broken (run ramstrans check-data)"
    )


@dataclass
class _Window:
    """Sums since the last log record, on the device; read (one host sync) only when a record is written."""

    t_log: float = field(default_factory=time.perf_counter)
    images: int = 0
    steps: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)

    def add(self, terms: dict[str, Tensor], stats: dict[str, Tensor], images: int) -> None:
        self.images, self.steps = self.images + images, self.steps + 1
        for into, values in ((self.sums, {"loss": _total(terms), **terms}), (self.stats, stats)):
            for k, v in values.items():
                into[k] = into[k] + v if k in into else v

    def records(self, step: int, lr: float, skipped: int, world_size: int) -> tuple[dict, dict | None]:
        """The "train" record (mean loss terms, lr, images/s) and the "mix" record (batches of each mix kind, mean λ
        per scale over the window's batches) or None."""
        now = time.perf_counter()
        train = {
            "step": step,
            "lr": lr,
            **{k: float(v) / self.steps for k, v in self.sums.items()},
            "img_per_s": self.images * world_size / max(now - self.t_log, 1e-9),
            "skipped": skipped,
            "time": time.time(),
        }
        counts = {kind: int(self.stats.get(f"mix_{kind}", 0)) for kind in ("cutmix", "mixup", "none")}  # fixed columns
        batches = sum(counts.values())
        mix = (
            {
                "step": step,
                "batches": batches,
                **counts,
                **{k: float(v) / batches for k, v in self.stats.items() if k.startswith("lam_")},
            }
            if batches
            else None
        )
        return train, mix


def _total(terms: dict[str, Tensor]) -> Tensor:
    """The loss: the sum of the named terms."""
    return functools.reduce(operator.add, terms.values())  # in the terms' order, as sum() adds them


def _accumulate(step: BatchStep, model: torch.nn.Module, batches: list[dict], first_key: int) -> tuple[dict, dict, int]:
    """Forward / backward of a step's batches; returns (summed weighted terms, summed statistics, images)."""
    n_images = sum(b["image"].shape[0] for b in batches)
    terms: dict[str, Tensor] = {}
    stats: dict[str, Tensor] = {}
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        no_sync = getattr(model, "no_sync", None)  # DDP: all-reduce on the step's last batch only
        with nullcontext() if last or no_sync is None else no_sync():
            part, part_stats = step(batch, first_key + i, batch["image"].shape[0] / n_images)
        for into, values in ((terms, part), (stats, part_stats)):
            for k, v in values.items():
                into[k] = into[k] + v if k in into else v
    return terms, stats, n_images


def _step(
    step: BatchStep, update: OptimizerUpdate, scheduler: Any, data: Any, grad_accum: int, s: int, batch_pos: int
) -> tuple[dict, dict, int, int, int]:
    """Optimizer step ``s``: draw its batches (the first at data position ``batch_pos``), schedule, forward /
    backward, update; returns (summed weighted terms, summed statistics, images, unreadable images, batches drawn)."""
    batches, n_skipped, drawn = _draw(data, grad_accum, s)
    scheduler.step_update(num_updates=s)
    update.zero_grad()
    terms, stats, n_images = _accumulate(step, step.model, batches, batch_pos)
    update()
    return terms, stats, n_images, n_skipped, drawn


def _flush(
    window: _Window,
    first_bad: Tensor,
    done: int,
    lr: float,
    skipped: int,
    world_size: int,
    log: Callable[[str, dict[str, object]], None] | None,
) -> dict:
    """At a log step: refuse a non-finite loss (``first_bad``: the first bad step, or -1), and log the window's
    "train" and "mix" records; returns the train record.

    Raises:
        FloatingPointError: the loss became non-finite since the last check.
    """
    if first_bad.item() >= 0:
        raise FloatingPointError(
            f"the training loss became non-finite at step {first_bad.item()}; lower train.lr or check the data"
        )
    entry, mix = window.records(done, lr, skipped, world_size)
    for kind, record in (("train", entry), ("mix", mix)):
        if log is not None and record is not None:
            log(kind, record)
    return entry


def train_steps(
    step: BatchStep,
    update: OptimizerUpdate,
    scheduler: Any,
    loader: Any,
    plan: LoopPlan,
    *,
    log: Callable[[str, dict[str, object]], None] | None = None,
    after_step: Callable[[int, int], None] | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """Optimizer steps ``plan.start_step`` .. ``plan.total_steps - 1`` on batches from the endless ``loader``.

    Every step is one update on ``plan.grad_accum`` batches: each batch's loss is weighted by its share of the step's
    images, so the gradient equals that of one batch of all of them. A batch whose images were all unreadable is
    dropped; when all of a step's batches are, the step draws new ones (the data position, not the step, counts
    batches, so a resume continues exactly).

    Args:
        step: what one batch does (``steps.BatchStep`` or a subclass); its ``model`` is put in train mode.
        update: the optimizer update after a step's batches.
        scheduler: timm scheduler with ``step_update(num_updates)``.
        loader: endless loader of dicts with ``image`` (B, C, H, W), ``label`` (B,) and ``skipped``, starting at
            batch ``plan.start_batch``.
        plan: the steps, accumulation, log interval and processes.
        log: receives (kind, record) with kind "train" or "mix" every ``plan.log_every`` steps.
        after_step: called with (steps done, batches drawn so far) after every step (EMA, checkpoints, evaluation).
        show_progress: a tqdm bar when stderr is a terminal; log lines otherwise.

    Returns:
        {"steps", "images" (this process), "seconds", "skipped" (unreadable images), "batches" (position at the end)}.

    Raises:
        FloatingPointError: the loss became non-finite (checked on the host every ``log_every`` steps).
        DataError: ``MAX_EMPTY_DRAWS`` steps in a row found only unreadable images.
    """
    step.model.train()
    data, batch_pos, t0 = iter(loader), plan.start_batch, time.perf_counter()
    progress = _Progress(plan.start_step, plan.total_steps, show_progress and sys.stderr.isatty())
    window, images, skipped = _Window(), 0, 0
    first_bad = torch.full((), -1, dtype=torch.long, device=step.device)  # first non-finite step, on the device
    for s in range(plan.start_step, plan.total_steps):
        terms, stats, n_images, n_skipped, drawn = _step(step, update, scheduler, data, plan.grad_accum, s, batch_pos)
        batch_pos, skipped, images = batch_pos + drawn, skipped + n_skipped, images + n_images
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(_total(terms)), s + 1, first_bad)
        window.add(terms, stats, n_images)
        done, entry = s + 1, None
        if done % plan.log_every == 0 or done == plan.total_steps:
            entry = _flush(window, first_bad, done, update.lr, skipped, plan.world_size, log)
            window = _Window()
        progress.update(done, entry)
        if after_step is not None:
            after_step(done, batch_pos)
    progress.close()
    return {
        "steps": plan.total_steps - plan.start_step,
        "images": images,
        "seconds": time.perf_counter() - t0,
        "skipped": skipped,
        "batches": batch_pos,
    }
