"""The two loops: ``train_steps`` and ``evaluate``. They receive built objects and return dicts; no config here."""
import contextlib
import math
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .losses import MultiScaleLoss
from .metrics import MetricAccumulator

__all__ = ["train_steps", "evaluate", "autocast"]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Mixed-precision context for ``dtype`` (None: full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_steps(
        model: nn.Module,
        criterion: MultiScaleLoss,
        optimizer: torch.optim.Optimizer,
        scheduler,
        loader: DataLoader,
        *,
        device: torch.device,
        start_step: int,
        total_steps: int,
        amp_dtype: Optional[torch.dtype] = None,
        scaler: Optional[torch.amp.GradScaler] = None,
        clip_grad: float = 0.0,
        mixer: Optional[Callable] = None,
        log_every: int = 20,
        log: Optional[Callable[[Dict[str, float]], None]] = None,
        after_step: Optional[Callable[[int], None]] = None,
        show_progress: bool = True,
        world_size: int = 1,
) -> Dict[str, float]:
    """Optimizer steps ``start_step`` .. ``total_steps - 1`` on batches from the endless ``loader``.

    Args:
        model: a module whose forward returns ``MultiScaleOutput`` (``MultiScaleForward``, or DDP around it).
        criterion: per-scale loss returning named terms.
        optimizer: the optimizer.
        scheduler: timm scheduler with ``step_update(num_updates)``.
        loader: endless loader of dicts with ``image`` (B, C, H, W) and ``label`` (B,).
        device: where to compute.
        start_step: first step (resume).
        total_steps: stop after this many steps in all.
        amp_dtype: autocast dtype or None.
        scaler: GradScaler for fp16, or None.
        clip_grad: max gradient norm (0 = off).
        mixer: optional callable(images, labels, step) -> (mixed images, fn(output) -> (per-scale targets, record));
            its record (mix kind, mean λ per scale) is logged every step.
        log_every: steps between ``log`` calls.
        log: receives {"step", "lr", "loss", <terms>, "img_per_s", ...}.
        after_step: called with the number of steps done (checkpoints, periodic evaluation).
        show_progress: tqdm bar with loss, lr, img/s and ETA.
        world_size: processes (for the global images/s).

    Returns:
        {"steps": steps done in this call, "images": images seen (this process), "seconds": wall time}.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    data = iter(loader)
    bar = tqdm(total=total_steps, initial=start_step, disable=not show_progress, dynamic_ncols=True, unit="step")
    t0 = t_log = time.perf_counter()
    images = images_log = skipped = window = 0
    sums: Dict[str, float] = {}
    for step in range(start_step, total_steps):
        batch = next(data)
        skipped += batch["skipped"]
        if "image" not in batch:  # every image of the batch was corrupt and skipped
            continue
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        scheduler.step_update(num_updates=step)
        with autocast(device, amp_dtype):
            terms, record = _losses(model, criterion, x, y, mixer, step)
        loss = sum(terms.values())
        _optimize(loss, optimizer, params, scaler, clip_grad)
        images += x.shape[0]
        images_log += x.shape[0]
        window += 1
        for k, v in {"loss": loss, **terms}.items():
            sums[k] = sums.get(k, 0.0) + v.detach()
        done = step + 1
        bar.update(1)
        if record and log is not None:
            log({"step": done, **record})
        if done % log_every == 0 or done == total_steps:
            means = {k: float(v) / window for k, v in sums.items()}
            if not math.isfinite(means["loss"]):
                raise FloatingPointError(f"the training loss became {means['loss']} by step {done}; lower "
                                         "train.lr or check the data")
            now = time.perf_counter()
            rate = images_log * world_size / max(now - t_log, 1e-9)
            lr = optimizer.param_groups[0]["lr"]
            entry = {"step": done, "lr": lr, **means, "img_per_s": rate, "skipped": skipped, "time": time.time()}
            bar.set_postfix(loss=f"{means['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
            if log is not None:
                log(entry)
            sums, images_log, t_log, window = {}, 0, now, 0
        if after_step is not None:
            after_step(done)
    bar.close()
    return {"steps": total_steps - start_step, "images": images, "seconds": time.perf_counter() - t0,
            "skipped": skipped}


def _losses(model: nn.Module, criterion: MultiScaleLoss, x: torch.Tensor, y: torch.Tensor, mixer: Optional[Callable],
            step: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    """Forward (mixed if ``mixer``) and the per-scale loss terms; returns (terms, mix record or {})."""
    if mixer is None:
        return criterion(model(x).logits, y), {}
    x, targets_for = mixer(x, y, step)
    out = model(x)
    targets, record = targets_for(out)  # the zoomed scales' λ need this forward's crops and attention
    return criterion(out.logits, targets), record


def _optimize(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: List[nn.Parameter],
              scaler: Optional[torch.amp.GradScaler], clip_grad: float) -> None:
    """Backward, optional unscale + clip, and the optimizer step (through the fp16 scaler when there is one)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: DataLoader,
        *,
        device: torch.device,
        num_classes: int,
        amp_dtype: Optional[torch.dtype] = None,
        scales: int = 1,
        reduce: Optional[Callable[[Dict[str, torch.Tensor]], None]] = None,
        show_progress: bool = False,
) -> Dict[str, float]:
    """Accuracy (single-scale by default, or the mean of the first ``scales`` scales' probabilities) and, where the
    batches carry boxes, the scale-1 proposal's IoU with them.

    Args:
        model: RAMSTrans (not wrapped).
        loader: finite loader of dicts with ``image``, ``label``, ``box``.
        device: where to compute.
        num_classes: K.
        amp_dtype: autocast dtype or None.
        scales: number of scales fused (1 = the test-time model).
        reduce: in-place sum of the metric state across processes (distributed evaluation).
        show_progress: tqdm bar.

    Returns:
        {"images", "top1", "top5", "mean_class_acc", ["loc_miou", "loc_iou50"], "skipped"}.
    """
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(num_classes)
    skipped = 0
    for batch in tqdm(loader, disable=not show_progress, dynamic_ncols=True, unit="batch"):
        skipped += batch["skipped"]
        if "image" not in batch:
            continue
        x = batch["image"].to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            if scales == 1:
                prop = model.propose(x)
                probs, boxes = prop.logits.float().softmax(-1), prop.boxes
            else:
                out = model.forward_multiscale(x, num_scales=scales)
                probs = torch.stack([lg.float().softmax(-1) for lg in out.logits]).mean(0)
                boxes = out.boxes[0]
        acc.update(probs, batch["label"], boxes, batch["box"])
    acc.state["skipped"] = torch.tensor(float(skipped), dtype=torch.float64)
    if reduce is not None:
        reduce(acc.state)
    model.train(was_training)
    result = acc.summary()
    result["skipped"] = int(acc.state["skipped"].item())
    result["_state"] = acc.state
    return result
