"""``ramstrans eval``: a trained checkpoint on a split of its data set (or of a copy of it at another root)."""
import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import Config
from .data import ImageDataset, Transform, eval_loader, load_index
from .dist import resolve_device
from .engine import amp_setup, evaluate
from .files import write_text_atomic
from .models import RAMSTrans
from .plots import plot_confusion

__all__ = ["run_eval", "test_transform", "eval_folder"]


def test_transform(cfg: Config, model: RAMSTrans) -> Transform:
    """The deterministic test-time transform of a trained model (resize, center crop, its normalisation)."""
    return Transform(train=False, crop=cfg.model.img_size, resize=cfg.data.resize, mean=model.backbone.mean,
                     std=model.backbone.std)


def eval_folder(checkpoint: str, split: str, scales: int, weights: str) -> Path:
    """Where an evaluation is written by default: beside the checkpoint, one folder per split, scales and weights."""
    return Path(checkpoint).parent / f"eval_{split}_scales{scales}_{weights}"


def _per_class_csv(state: Dict[str, torch.Tensor], names: List[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["class_id", "class_name", "images", "correct", "accuracy"])
    for k, name in enumerate(names):
        n, c = int(state["count"][k]), int(state["correct"][k])
        w.writerow([k, name, n, c, f"{100.0 * c / n:.2f}" if n else ""])
    return buf.getvalue()


def run_eval(checkpoint: str, *, output_dir: Optional[str] = None, split: str = "test", scales: int = 1,
             weights: str = "auto", batch_size: int = 32, device: str = "auto", data_root: Optional[str] = None,
             num_workers: int = 2, skip_corrupt: bool = False, show_progress: bool = True) -> Dict[str, object]:
    """Evaluate a checkpoint: top-1 / top-5 / mean per-class accuracy, localization where boxes exist; write the JSON
    summary, the per-class CSV and (<= 50 classes) the confusion matrix PNG.

    Args:
        checkpoint: ramstrans checkpoint.
        output_dir: where to write (default ``eval_folder``: beside the checkpoint).
        split: data split to evaluate.
        scales: 1 = the single-scale test-time model; N fuses the first N scales' probabilities.
        weights: "auto" (the EMA weights when the checkpoint has them, as training reported), "raw" or "ema".
        batch_size: images per batch.
        device: auto | cpu | cuda.
        data_root: the data set at another path than the training config's (used as it is, never generated).
        num_workers: loader workers.
        skip_corrupt: skip and count undecodable images.
        show_progress: a progress bar on a terminal.
    """
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    model, cfg, names = model_from_checkpoint(ckpt, weights=weights, origin=f"checkpoint {checkpoint}")
    used = "ema" if weights == "ema" or (weights == "auto" and isinstance(ckpt.get("model_ema"), dict)) else "raw"
    model.to(dev).eval()
    if not 1 <= scales <= model.num_scales:
        raise ValueError(f"checkpoint {checkpoint} has {model.num_scales} scale(s); cannot run {scales}")
    if data_root:
        cfg.data.root = data_root
    index = load_index(cfg.data, generate=not data_root)
    if index.class_names != names:
        raise ValueError(f"the data set at {index.root} has other classes than checkpoint {checkpoint}")
    ds = ImageDataset(index.root, index.split(split), names, test_transform(cfg, model), skip_corrupt)
    amp_dtype, _ = amp_setup(dev, cfg.train.amp)
    res, state = evaluate(model, eval_loader(ds, batch_size, num_workers), device=dev, num_classes=len(names),
                          amp_dtype=amp_dtype, scales=scales, show_progress=show_progress, what=f"{split} split")
    out = Path(output_dir) if output_dir else eval_folder(checkpoint, split, scales, used)
    out.mkdir(parents=True, exist_ok=True)
    res.update(split=split, scales=scales, weights=used, checkpoint=str(checkpoint), step=int(ckpt["step"]))
    write_text_atomic(out / "summary.json", json.dumps(res, indent=1))
    write_text_atomic(out / "per_class.csv", _per_class_csv(state, names))
    if "confusion" in state:
        plot_confusion(state["confusion"].numpy(), names, out / "confusion.png")
    return res
