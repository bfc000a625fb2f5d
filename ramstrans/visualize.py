"""``ramstrans visualize``: where a trained model zooms, on images of a split or on any image files."""
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np
import torch

from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import load_index, read_image
from .dist import resolve_device
from .evaluate import test_transform
from .models import crop_and_zoom
from .plots import contact_sheet, denormalize, heatmap_overlay, save_panel

__all__ = ["run_visualize"]


def _pick(n_total: int, num: int) -> List[int]:
    """``num`` indices spread evenly over a split (deterministic)."""
    return sorted(set(np.linspace(0, n_total - 1, min(num, n_total)).round().astype(int).tolist()))


def run_visualize(checkpoint: str, *, output_dir: Optional[str] = None, images: Sequence[str] = (),
                  split: str = "test", num: int = 16, device: str = "auto", data_root: Optional[str] = None,
                  weights: str = "auto") -> List[Path]:
    """Per image a panel PNG of where the model zooms, plus ``contact_sheet.png``; returns the files written.

    Args:
        checkpoint: ramstrans checkpoint.
        output_dir: where to write (default: next to the checkpoint, ``visualize``).
        images: image files (any, not only from the data set); when empty, ``num`` images of ``split``.
        split: data split to draw from.
        num: how many split images.
        device: auto | cpu | cuda.
        data_root: the data set at another path than the training config's (used as it is, never generated).
        weights: "auto" (EMA weights when the checkpoint has them), "raw" or "ema".
    """
    if not images and num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    dev = resolve_device(device)
    model, cfg, names = model_from_checkpoint(load_checkpoint(checkpoint), weights=weights,
                                              origin=f"checkpoint {checkpoint}")
    model.to(dev).eval()
    transform = test_transform(cfg, model)
    if images:
        paths = [Path(p) for p in images]
        titles = [p.name for p in paths]
    else:
        if data_root:
            cfg.data.root = data_root
        index = load_index(cfg.data, generate=not data_root)
        table = index.split(split)
        rows = table.iloc[_pick(len(table), num)]
        paths = [index.root / p for p in rows["path"]]
        titles = [f"{Path(p).name} (true: {names[k]})" for p, k in zip(rows["path"], rows["label"])]
    x = torch.stack([transform(read_image(p), None, 0)[0] for p in paths]).to(dev)
    out = Path(output_dir) if output_dir else Path(checkpoint).parent / "visualize"
    out.mkdir(parents=True, exist_ok=True)
    H, W = model.backbone.img_size
    written, sheet = [], []
    with torch.no_grad():
        prop = model.propose(x)
        multi = model.forward_multiscale(x)
        zoom = crop_and_zoom(x, prop.boxes, (H, W))
    mean, std = model.backbone.mean, model.backbone.std
    for i, path in enumerate(paths):
        img = denormalize(x[i].cpu().numpy(), mean, std)
        top3 = []
        for lg in multi.logits:
            p, k = lg[i].float().softmax(-1).topk(min(3, len(names)))
            top3.append([(names[j], float(q)) for q, j in zip(p.tolist(), k.tolist())])
        file = out / f"{i:03d}_{path.stem}.png"
        save_panel(file, img, prop.rollout[i].cpu().numpy(), prop.mask[i].cpu().numpy(),
                   prop.component[i].cpu().numpy(), prop.boxes[i].tolist(),
                   denormalize(zoom[i].cpu().numpy(), mean, std), top3, titles[i])
        written.append(file)
        over = heatmap_overlay(img, prop.rollout[i].cpu().numpy(), 0.35)
        x0, y0, x1, y1 = (int(round(v)) for v in prop.boxes[i].tolist())
        sheet.append(cv2.rectangle(over.copy(), (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), 2))
    contact_sheet(sheet, out / "contact_sheet.png")
    written.append(out / "contact_sheet.png")
    return written
