"""The training loop, ``train_steps``: it receives built objects and returns a dict; no config here."""

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ramstrans.errors import DataError
from ramstrans.runtime.amp import autocast

__all__ = ["train_steps", "MAX_EMPTY_DRAWS"]

logger = logging.getLogger("ramstrans")

# Optimizer steps in a row whose batches were all unreadable before training gives up (the data set is broken).
MAX_EMPTY_DRAWS = 100


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


def train_steps(
    model: nn.Module,
    criterion: Callable,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loader: DataLoader,
    *,
    device: torch.device,
    start_step: int,
    total_steps: int,
    start_batch: int | None = None,
    grad_accum: int = 1,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float = 0.0,
    mixer: Callable | None = None,
    log_every: int = 20,
    log: Callable[[str, dict[str, object]], None] | None = None,
    after_step: Callable[[int, int], None] | None = None,
    show_progress: bool = True,
    world_size: int = 1,
    fwt_learner: Callable | None = None,
) -> dict[str, float]:
    """Optimizer steps ``start_step`` .. ``total_steps - 1`` on batches from the endless ``loader``.

    Every step is one optimizer update on ``grad_accum`` batches: each batch's loss is weighted by its share of the
    step's images, so the gradient equals that of one batch of all of them. A batch whose images were all unreadable
    is dropped; when all of a step's batches are, the step draws new ones (the data position, not the step, counts
    batches, so a resume continues exactly).

    Args:
        model: a module whose forward returns ``MultiScaleOutput`` (``MultiScaleForward``, or DDP around it).
        criterion: callable(inputs, output, targets) -> named loss terms.
        optimizer: the optimizer.
        scheduler: timm scheduler with ``step_update(num_updates)``.
        loader: endless loader of dicts with ``image`` (B, C, H, W), ``label`` (B,) and ``skipped``, starting at
            batch ``start_batch``.
        device: where to compute.
        start_step: first step (resume).
        total_steps: stop after this many steps in all.
        start_batch: the loader's first batch position (default ``start_step * grad_accum``).
        grad_accum: batches per optimizer step.
        amp_dtype: autocast dtype or None.
        scaler: GradScaler for fp16, or None.
        clip_grad: max gradient norm (0 = off).
        mixer: optional callable(images, labels, key) -> (mixed images, fn(output) -> (per-scale targets, record)); the
            key is the batch position, and the record (mix kind, mean λ per scale) is logged for every batch.
        log_every: steps between "train" records (mean loss terms, lr, images/s).
        log: receives (kind, record) with kind "train" or "mix".
        after_step: called with (steps done, batches drawn so far) after every step (EMA, checkpoints, evaluation).
        show_progress: a tqdm bar when stderr is a terminal; log lines otherwise.
        world_size: processes (for the global images/s).
        fwt_learner: the learning-to-learn step of the feature-wise transformation (``l2l.FwtLearner``), run
            instead of the plain forward / backward of each batch (hard labels, no mixer).

    Returns:
        {"steps", "images" (this process), "seconds", "skipped" (unreadable images), "batches" (position at the end)}.

    Raises:
        FloatingPointError: the loss became non-finite (checked on the host every ``log_every`` steps).
        DataError: ``MAX_EMPTY_DRAWS`` steps in a row found only unreadable images.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    data = iter(loader)
    batch_pos = start_step * grad_accum if start_batch is None else start_batch
    progress = _Progress(start_step, total_steps, show_progress and sys.stderr.isatty())
    t0 = t_log = time.perf_counter()
    images = images_log = skipped = window = 0
    sums: dict[str, Tensor] = {}
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step, kept on the device
    for step in range(start_step, total_steps):
        batches, n_skipped, drawn = _draw(data, grad_accum, step)
        skipped += n_skipped
        scheduler.step_update(num_updates=step)
        optimizer.zero_grad(set_to_none=True)
        n_images = sum(b["image"].shape[0] for b in batches)
        terms: dict[str, Tensor] = {}
        for i, batch in enumerate(batches):
            share = batch["image"].shape[0] / n_images
            sync = i == len(batches) - 1 or not hasattr(model, "no_sync")  # DDP all-reduces on the last batch only
            with contextlib.nullcontext() if sync else model.no_sync():
                part = _backward(
                    model,
                    criterion,
                    batch,
                    device,
                    amp_dtype,
                    scaler,
                    mixer,
                    batch_pos + i,
                    share,
                    lambda record: log("mix", {"step": step + 1, **record}) if log else None,  # noqa: B023
                    fwt_learner,
                )  # (called within this step: the loop variable is the current one)
            for k, v in part.items():
                terms[k] = terms.get(k, 0.0) + v
        batch_pos += drawn
        _optimizer_step(optimizer, params, scaler, clip_grad)
        loss = sum(terms.values())
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step + 1, first_bad)
        images += n_images
        images_log += n_images
        window += 1
        for k, v in {"loss": loss, **terms}.items():
            sums[k] = sums.get(k, 0.0) + v
        done = step + 1
        entry = None
        if done % log_every == 0 or done == total_steps:
            if first_bad.item() >= 0:
                raise FloatingPointError(
                    f"the training loss became non-finite at step {first_bad.item()}; lower train.lr or check the data"
                )
            now = time.perf_counter()
            entry = {
                "step": done,
                "lr": optimizer.param_groups[0]["lr"],
                **{k: float(v) / window for k, v in sums.items()},
                "img_per_s": images_log * world_size / max(now - t_log, 1e-9),
                "skipped": skipped,
                "time": time.time(),
            }
            if log is not None:
                log("train", entry)
            sums, images_log, t_log, window = {}, 0, now, 0
        progress.update(done, entry)
        if after_step is not None:
            after_step(done, batch_pos)
    progress.close()
    return {
        "steps": total_steps - start_step,
        "images": images,
        "seconds": time.perf_counter() - t0,
        "skipped": skipped,
        "batches": batch_pos,
    }


def _backward(
    model: nn.Module,
    criterion: Callable,
    batch: dict,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
    mixer: Callable | None,
    key: int,
    share: float,
    log_mix: Callable[[dict[str, object]], None],
    fwt_learner: Callable | None = None,
) -> dict[str, Tensor]:
    """Forward (mixed if ``mixer``), loss terms weighted by ``share``, backward; returns the detached weighted terms."""
    x = batch["image"].to(device, non_blocking=True)
    y = batch["label"].to(device, non_blocking=True)
    with autocast(device, amp_dtype):
        if fwt_learner is not None:
            return fwt_learner(model, criterion, x, y, key, share)
        if mixer is None:
            terms = criterion(x, model(x), y)
        else:
            x, targets_for = mixer(x, y, key)
            out = model(x)
            targets, record = targets_for(out)  # the zoomed scales' λ need this forward's crops and attention
            log_mix(record)
            terms = criterion(x, out, targets)
    loss = sum(terms.values()) * share
    (loss if scaler is None else scaler.scale(loss)).backward()
    return {k: v.detach() * share for k, v in terms.items()}


def _optimizer_step(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], scaler: torch.amp.GradScaler | None, clip_grad: float
) -> None:
    """Optional unscale + clip, and the optimizer step (through the fp16 scaler when there is one)."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
