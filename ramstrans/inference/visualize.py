"""``ramstrans visualize``: where a trained model zooms, on images of a split or on any image files."""

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from ramstrans.data import ImageReadError, load_index, read_image
from ramstrans.deploy.images import expand_paths
from ramstrans.errors import UsageError
from ramstrans.fields import number
from ramstrans.inference.load import LoadedModel
from ramstrans.inference.plots import contact_sheet, denormalize, heatmap_overlay, save_panel
from ramstrans.models import RAMSTrans, crop_and_zoom
from ramstrans.registry import EvalRequest, load_source
from ramstrans.runtime.dist import resolve_device
from ramstrans.runtime.files import check_output

__all__ = ["run_visualize", "draw_panels"]

logger = logging.getLogger("ramstrans")
BATCH = 32  # images drawn per forward


def _pick(n_total: int, num: int) -> list[int]:
    """``num`` indices spread evenly over a split (deterministic)."""
    return sorted(set(np.linspace(0, n_total - 1, min(num, n_total)).round().astype(int).tolist()))


def run_visualize(
    request: EvalRequest,
    *,
    output_dir: str | None = None,
    images: Sequence[str] = (),
    num: int = 16,
    overwrite: bool = False,
) -> list[Path]:
    """Per image a panel PNG of where the model zooms, plus ``contact_sheet.png``; returns the files written.

    Args:
        request: the model source (a checkpoint or a run folder: its config names the data set), its weights and
            device, the split to draw from and a copy of the data set at another root.
        output_dir: where to write (default: next to the checkpoint, ``visualize``).
        images: image files, folders or globs (any, not only from the data set); when empty, ``num`` images of
            ``request.split``.
        num: how many split images.
        overwrite: write into ``output_dir`` even if it holds files.
    """
    if not images:
        number(num, "visualize --num", low=1, integer=True)
    dev = resolve_device(request.device)
    loaded: LoadedModel = load_source(request)
    cfg, names = loaded.run_config("visualize"), loaded.class_names
    model = _rams(loaded)
    model.to(dev)
    if images:
        paths, titles, truths = _named_images(images)
    else:
        data_cfg = replace(cfg.data, root=request.data_root) if request.data_root else cfg.data
        paths, titles, truths = _split_images(data_cfg, not request.data_root, request.split, num, names)
    if output_dir:
        check_output(output_dir, [request.source, *paths], overwrite, "--output")
    out = Path(output_dir) if output_dir else loaded.file.parent / "visualize"
    written, tiles = _draw_all(model, dev, loaded.transform, names, out, paths, titles, truths)
    contact_sheet(tiles, out / "contact_sheet.png", saliency=model.backbone.saliency)
    return written + [out / "contact_sheet.png"]


def _rams(loaded: LoadedModel) -> RAMSTrans:
    """The source's RAMS-Trans model; a classifier is refused (it has no map to show)."""
    model = loaded.torch_model("visualize")
    if not isinstance(model, RAMSTrans):
        backbone = loaded.config.model.backbone if loaded.config is not None else model.backbone.name
        raise UsageError(
            f"checkpoint {loaded.file} holds a {backbone} classifier: it has no attention to show (visualize needs a "
            "RAMS-Trans model)"
        )
    return model


def _draw_all(
    model: RAMSTrans,
    dev: torch.device,
    transform: Any,
    names: list[str],
    out: Path,
    paths: list[Path],
    titles: list[str],
    truths: list[str] | None,
) -> tuple[list[Path], list[tuple]]:
    """Every readable image's panel into ``out``, ``BATCH`` at a time: the files written and the contact-sheet
    tiles.

    Raises:
        UsageError: none of the images could be read.
    """
    written: list[Path] = []
    tiles: list[tuple] = []
    unreadable: list[str] = []
    for start in range(0, len(paths), BATCH):
        x, kept = _read_chunk(paths, range(start, min(start + BATCH, len(paths))), transform, unreadable)
        if kept:
            w, t = draw_panels(
                model,
                x.to(dev),
                [paths[i] for i in kept],
                names,
                out,
                [titles[i] for i in kept],
                [truths[i] for i in kept] if truths else None,
                first=len(written),
            )
            written += w
            tiles += t
    if not tiles:
        raise UsageError(f"none of the {len(paths)} images could be read (image {unreadable[0]})")
    return written, tiles


def _named_images(images: Sequence[str]) -> tuple[list[Path], list[str], None]:
    """The files a user named (folders walked, globs expanded), their titles, no truths."""
    paths, unlistable = expand_paths(images)
    for folder, reason in unlistable:
        logger.warning("skipping folder %s: it %s", folder, reason)
    return paths, [p.name for p in paths], None


def _split_images(
    data_cfg: Any, generate: bool, split: str, num: int, names: list[str]
) -> tuple[list[Path], list[str], list[str]]:
    """``num`` images spread over a split of the data set, their titles and true class names."""
    index = load_index(data_cfg, generate=generate)
    table = index.split(split)
    rows = table.iloc[_pick(len(table), num)]
    titles = [f"{Path(p).name} (true: {names[k]})" for p, k in zip(rows["path"], rows["label"])]
    return [index.root / p for p in rows["path"]], titles, [names[k] for k in rows["label"]]


def _read_chunk(paths: list[Path], chunk: range, transform: Any, unreadable: list[str]) -> tuple[Tensor, list[int]]:
    """The images of ``chunk`` that can be read, stacked, and their indices; the others go into ``unreadable``."""
    images, kept = [], []
    for i in chunk:
        try:
            images.append(transform(read_image(paths[i]), None, 0)[0])
            kept.append(i)
        except ImageReadError as e:  # one bad file does not stop the others
            logger.warning("skipping %s: it %s", paths[i], e.reason)
            unreadable.append(f"{paths[i]} {e.reason}")
    return (torch.stack(images) if images else torch.empty(0)), kept


def draw_panels(
    model: RAMSTrans,
    x: torch.Tensor,
    paths: Sequence[Path],
    names: list[str],
    out: Path,
    titles: Sequence[str] | None = None,
    truths: Sequence[str | None] | None = None,
    first: int = 0,
) -> tuple[list[Path], list[tuple[np.ndarray, list[str], list[bool]]]]:
    """One panel PNG per image (input with the zoom box, rollout, kept component, zoomed crop, top-3 per scale) and a
    labelled contact-sheet tile per image (true class if known, the prediction of each scale).

    Args:
        model: the model (eval mode).
        x: (B, C, H, W) normalised images.
        paths: their files (the panels are named after them).
        names: class names.
        out: folder for the panels.
        titles: panel titles (default: the file names).
        truths: true class names, None where unknown.
        first: the number of the first panel (panels are numbered in order, ``NNN_<file stem>.png``).

    Returns:
        (panel files, tiles).
    """
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        prop = model.propose(x)
        multi = model.forward_multiscale(x)
        zoom = crop_and_zoom(x, prop.boxes, model.input_size)  # the crop at the batch's (the source's) resolution
    mean, std = model.backbone.mean, model.backbone.std
    written, tiles = [], []
    for i, path in enumerate(paths):
        img = denormalize(x[i].cpu().numpy(), mean, std)
        top3 = []
        for lg in multi.logits:
            p, k = lg[i].float().softmax(-1).topk(min(3, len(names)))
            top3.append([(names[j], float(q)) for q, j in zip(p.tolist(), k.tolist())])
        file = out / f"{first + i:03d}_{Path(path).stem}.png"
        save_panel(
            file,
            img,
            prop.rollout[i].cpu().numpy(),
            prop.mask[i].cpu().numpy(),
            prop.component[i].cpu().numpy(),
            prop.boxes[i].tolist(),
            denormalize(zoom[i].cpu().numpy(), mean, std),
            top3,
            titles[i] if titles else Path(path).name,
            model.backbone.saliency,
        )
        written.append(file)
        over = heatmap_overlay(img, prop.rollout[i].cpu().numpy(), 0.35)
        x0, y0, x1, y1 = (int(round(v)) for v in prop.boxes[i].tolist())
        tile = cv2.rectangle(over.copy(), (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), 2)
        truth = truths[i] if truths else None
        lines = ([f"true {truth}"] if truth else []) + [f"s{s + 1}: {preds[0][0]}" for s, preds in enumerate(top3)]
        tiles.append((tile, lines, [truth is None or preds[0][0] == truth for preds in top3]))
    return written, tiles
