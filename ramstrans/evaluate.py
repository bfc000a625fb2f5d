"""``ramstrans eval`` and ``ramstrans visualize``: a trained checkpoint on a split or on any image files."""
import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from .checkpoint import load_checkpoint
from .config import Config, config_from_dict
from .data import ImageDataset, Transform, eval_loader, load_index, read_image
from .engine import evaluate
from .models import RAMSTrans, build_model, crop_and_zoom
from .dist import resolve_device
from .train import amp_setup
from .visualize import contact_sheet, denormalize, heatmap_overlay, plot_confusion, save_panel

__all__ = ["load_trained", "run_eval", "run_visualize", "export_single_scale"]


def load_trained(checkpoint: str, device: torch.device) -> Tuple[RAMSTrans, Config, List[str]]:
    """The model of a ramstrans checkpoint (eval mode, on ``device``), its config and its class names."""
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"])
    cfg.model.pretrained = None  # the checkpoint holds the weights
    names = list(ckpt["class_names"])
    model = build_model(cfg.model, len(names))
    model.load_state_dict(ckpt["model"])
    norm = ckpt["normalization"]
    model.backbone.mean, model.backbone.std = tuple(norm["mean"]), tuple(norm["std"])
    return model.to(device).eval(), cfg, names


def _test_transform(cfg: Config, model: RAMSTrans) -> Transform:
    return Transform(train=False, crop=cfg.model.img_size, resize=cfg.data.resize, mean=model.backbone.mean,
                     std=model.backbone.std)


def run_eval(checkpoint: str, output_dir: Optional[str] = None, split: str = "test", scales: int = 1,
             batch_size: int = 32, device: str = "auto", data_root: Optional[str] = None, num_workers: int = 2,
             skip_corrupt: bool = False) -> Dict[str, float]:
    """Evaluate a checkpoint: top-1 / top-5 / mean per-class accuracy, localization where boxes exist; write the JSON
    summary, the per-class CSV and (<= 50 classes) the confusion matrix PNG into ``output_dir``.

    Args:
        checkpoint: ramstrans checkpoint.
        output_dir: where to write (default: next to the checkpoint, ``eval_<split>``).
        split: data split to evaluate.
        scales: 1 = the single-scale test-time model; N fuses the first N scales' probabilities.
        batch_size: images per batch.
        device: auto | cpu | cuda.
        data_root: evaluate on data at another path than the training config's.
        num_workers: loader workers.
        skip_corrupt: skip and count undecodable images.
    """
    dev = resolve_device(device)
    model, cfg, names = load_trained(checkpoint, dev)
    if not 1 <= scales <= model.num_scales:
        raise ValueError(f"checkpoint {checkpoint} has {model.num_scales} scale(s); cannot run {scales}")
    if data_root:
        cfg.data.root = data_root
    index = load_index(cfg.data)
    if index.class_names != names:
        raise ValueError(f"the data set at {index.root} has other classes than checkpoint {checkpoint}")
    ds = ImageDataset(index.root, index.split(split), names, _test_transform(cfg, model), skip_corrupt)
    amp_dtype, _ = amp_setup(dev, cfg.train.amp)
    res = evaluate(model, eval_loader(ds, batch_size, num_workers), device=dev, num_classes=len(names),
                   amp_dtype=amp_dtype, scales=scales, show_progress=True)
    state = res.pop("_state")
    out = Path(output_dir) if output_dir else Path(checkpoint).parent / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    res.update(split=split, scales=scales, checkpoint=str(checkpoint))
    (out / "summary.json").write_text(json.dumps(res, indent=1))
    with open(out / "per_class.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["class_id", "class_name", "images", "correct", "accuracy"])
        for k, name in enumerate(names):
            n, c = int(state["count"][k]), int(state["correct"][k])
            w.writerow([k, name, n, c, f"{100.0 * c / n:.2f}" if n else ""])
    if "confusion" in state:
        plot_confusion(state["confusion"].numpy(), names, out / "confusion.png")
    return res


def export_single_scale(checkpoint: str, out: str, extra: Optional[Dict[str, object]] = None) -> Path:
    """Write the test-time model of a checkpoint as a plain timm state dict (``.safetensors``) with a JSON sidecar
    (architecture, timm kwargs, input size, normalisation, class names): what deployment needs, nothing of training.

    Args:
        checkpoint: ramstrans checkpoint.
        out: the ``.safetensors`` file to write (the sidecar gets the same name with ``.json``).
        extra: more fields for the sidecar.

    Returns:
        The written ``.safetensors`` path.
    """
    from safetensors.torch import save_file
    model, cfg, names = load_trained(checkpoint, torch.device("cpu"))
    path = Path(out)
    if path.suffix != ".safetensors":
        raise ValueError(f"export target {out} must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.backbone.vit.state_dict().items()}, str(path))
    meta = {"architecture": cfg.model.backbone, "timm_kwargs": dict(cfg.model.backbone_kwargs),
            "img_size": cfg.model.img_size, "num_classes": len(names), "mean": list(model.backbone.mean),
            "std": list(model.backbone.std), "class_names": names, "source_checkpoint": str(checkpoint),
            "step": int(load_checkpoint(checkpoint)["step"]), **(extra or {})}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return path


def _pick(n_total: int, num: int) -> List[int]:
    """``num`` indices spread evenly over a split (deterministic)."""
    return sorted(set(np.linspace(0, n_total - 1, min(num, n_total)).round().astype(int).tolist()))


def run_visualize(checkpoint: str, output_dir: Optional[str] = None, images: Sequence[str] = (),
                  split: str = "test", num: int = 16, device: str = "auto",
                  data_root: Optional[str] = None) -> List[Path]:
    """Per image a panel PNG of where the model zooms, plus ``contact_sheet.png``; returns the files written.

    Args:
        checkpoint: ramstrans checkpoint.
        output_dir: where to write (default: next to the checkpoint, ``visualize``).
        images: image files (any, not only from the data set); when empty, ``num`` images of ``split``.
        split: data split to draw from.
        num: how many split images.
        device: auto | cpu | cuda.
        data_root: data at another path than the training config's.
    """
    dev = resolve_device(device)
    model, cfg, names = load_trained(checkpoint, dev)
    transform = _test_transform(cfg, model)
    if images:
        paths = [Path(p) for p in images]
        titles = [p.name for p in paths]
    else:
        if data_root:
            cfg.data.root = data_root
        index = load_index(cfg.data)
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
