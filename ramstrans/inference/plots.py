"""Pictures: where the model zooms (per-image panels, contact sheets), training curves, confusion matrices.

Pure drawing on arrays and files (cv2 / matplotlib); no model code here. Figures are made with matplotlib's object
API (``Figure``, no pyplot), so drawing never switches the backend of a notebook or a GUI that imported us.
"""

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ramstrans.registry import saliencies
from ramstrans.runtime.files import atomic_write
from ramstrans.runtime.runlog import read_records

__all__ = [
    "denormalize",
    "heatmap_overlay",
    "save_panel",
    "contact_sheet",
    "plot_curves",
    "plot_confusion",
    "plot_reliability",
    "confused_pairs",
    "plot_confused_pairs",
    "plot_zoom_sweep",
    "CONFUSION_PLOT_MAX",
]

CONFUSION_PLOT_MAX = 50  # classes up to which the confusion matrix is drawn; above, the most confused pairs


def _save_png(fig: Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))


def denormalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, H, W) normalised float array -> (H, W, 3) uint8 RGB."""
    img = image.transpose(1, 2, 0) * np.asarray(std)[None, None] + np.asarray(mean)[None, None]
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, saliency: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Blend a (gh, gw) saliency map, upsampled smoothly and min-max scaled, over an (H, W, 3) uint8 image."""
    h, w = image.shape[:2]
    s = cv2.resize(saliency.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    s = (s - s.min()) / max(float(s.max() - s.min()), 1e-12)
    heat = cv2.cvtColor(cv2.applyColorMap((s * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1 - weight, heat, weight, 0)


def _mask_picture(mask: np.ndarray, component: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Grey cells: above the threshold; white cells: the kept component."""
    cells = np.where(component, 255, np.where(mask, 110, 0)).astype(np.uint8)
    return cv2.resize(cells, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def save_panel(
    path: Path,
    image: np.ndarray,
    rollout: np.ndarray,
    mask: np.ndarray,
    component: np.ndarray,
    box: Sequence[float],
    zoom: np.ndarray,
    top3: list[list[tuple[str, float]]],
    title: str = "",
    saliency: str = "rollout",
) -> None:
    """One PNG: input with the box, rollout overlay, mask with the kept component, zoomed crop, top-3 per scale.

    Args:
        path: output PNG.
        image: (H, W, 3) uint8 input.
        rollout: (gh, gw) saliency.
        mask: (gh, gw) bool threshold mask.
        component: (gh, gw) bool kept component.
        box: xyxy pixels of the zoom.
        zoom: (H, W, 3) uint8 zoomed crop (scale 2 input).
        top3: per scale, [(class name, probability)] * 3.
        title: figure title (e.g. file name and true class).
        saliency: the model's saliency (``model.saliency``), named in the map's title.
    """
    fig = Figure(figsize=(16, 3.6))
    axes = fig.subplots(1, 5)
    x0, y0, x1, y1 = box
    axes[0].imshow(image)
    axes[0].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=2))
    axes[0].set_title("input + zoom box")
    axes[1].imshow(heatmap_overlay(image, rollout))
    axes[1].set_title(saliencies()[saliency])
    axes[2].imshow(_mask_picture(mask, component, image.shape[:2]), cmap="gray", vmin=0, vmax=255)
    axes[2].set_title("mask: grey > α·mean, white: kept component", fontsize=9)
    axes[3].imshow(zoom)
    axes[3].set_title("zoomed crop (scale 2)")
    lines = []
    for s, preds in enumerate(top3):
        lines.append(f"scale {s + 1}:")
        lines += [f"  {p * 100:5.1f}%  {name[:28]}" for name, p in preds]
    axes[4].text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_png(fig, path)


def contact_legend(saliency: str) -> tuple[str, str]:
    """The contact sheet's legend lines for a model of ``saliency``."""
    return (
        f"green box: the zoom (what scale 2 sees); colours: {saliencies()[saliency]}",
        "s1 / s2: top class of scale 1 / scale 2; green: right (or truth unknown), red: wrong",
    )


def _text(cell: np.ndarray, lines: Sequence[str], colours: Sequence[tuple[int, int, int]], width: int) -> None:
    for j, (line, colour) in enumerate(zip(lines, colours)):
        cv2.putText(cell, line[:width], (4, 13 + 14 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.38, colour, 1, cv2.LINE_AA)


def contact_sheet(
    tiles: list[tuple[np.ndarray, list[str], list[bool]]],
    path: Path,
    cols: int = 4,
    tile: int = 224,
    saliency: str = "rollout",
) -> None:
    """Tile (H, W, 3) uint8 images into one PNG, each under its caption lines on a dark band of its own (so no
    caption hides the picture; a line in green when its prediction is right or the truth unknown, red when wrong; the
    first line may name the truth), with a legend band at the bottom.

    Args:
        tiles: per image (picture, caption lines, per prediction line: right or unknown).
        path: the PNG to write.
        cols: tiles per row.
        tile: side of a tile's picture in pixels.
        saliency: the model's saliency (``model.saliency``), named in the legend.
    """
    legend_lines = contact_legend(saliency)
    rows = (len(tiles) + cols - 1) // cols
    band = 14 * max(len(lines) for _, lines, _ in tiles) + 4
    legend = 14 * len(legend_lines) + 6
    sheet = np.full((rows * (band + tile) + legend, cols * tile, 3), 255, np.uint8)
    for i, (img, lines, right) in enumerate(tiles):
        r, c = divmod(i, cols)
        cell = np.full((band + tile, tile, 3), 40, np.uint8)
        cell[band:] = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        colours = [(255, 255, 255)] * (len(lines) - len(right)) + [
            (90, 230, 90) if ok else (255, 90, 90) for ok in right
        ]
        _text(cell, lines, colours, 34)
        sheet[r * (band + tile) : (r + 1) * (band + tile), c * tile : (c + 1) * tile] = cell
    _text(sheet[-legend:], legend_lines, [(0, 0, 0)] * len(legend_lines), 200)
    png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))[1].tobytes()
    atomic_write(path, lambda tmp: None if Path(tmp).write_bytes(png) is None else None)


def plot_curves(log_path: Path, png: Path) -> None:
    """Training loss and learning rate per step, and evaluation top-1 where logged, from the JSON-lines log."""
    records = read_records(log_path)
    train = [r for r in records if r.get("kind") == "train"]
    fig = Figure(figsize=(14, 3.6))
    axes = fig.subplots(1, 3)
    if train:
        steps = [r["step"] for r in train]
        for key in sorted({k for r in train for k in r if k.startswith(("ce_scale", "kd_scale", "sd_scale"))}) + [
            "loss"
        ]:
            axes[0].plot(steps, [r.get(key, np.nan) for r in train], label=key)
        axes[0].legend()
        axes[1].plot(steps, [r["lr"] for r in train])
    evals = [r for r in records if r.get("kind") == "eval"]
    for split, weights in sorted({(r["split"], r.get("weights", "raw")) for r in evals}):
        ev = [r for r in evals if r["split"] == split and r.get("weights", "raw") == weights]
        axes[2].plot([r["step"] for r in ev], [r["top1"] for r in ev], "o-", label=f"{split} top-1 ({weights})")
    if axes[2].lines:
        axes[2].legend()
    for ax, title in zip(axes, ("training loss", "learning rate", "top-1 (%)")):
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.tight_layout()
    _save_png(fig, png)


def plot_confusion(matrix: np.ndarray, names: Sequence[str], png: Path) -> None:
    """Row-normalised confusion matrix (true rows, predicted columns)."""
    m = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    k = len(names)
    fig = Figure(figsize=(max(5, 0.3 * k + 3), max(4, 0.3 * k + 2)))
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels([n[:20] for n in names], rotation=90, fontsize=6)
    ax.set_yticklabels([n[:20] for n in names], fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im)
    fig.tight_layout()
    _save_png(fig, png)


def plot_reliability(count: np.ndarray, confidence: np.ndarray, correct: np.ndarray, out: Path) -> None:
    """``reliability.png`` in ``out``: per equal-width confidence bin, the accuracy (bars) against the mean top-1
    confidence (dots) and the diagonal of perfect calibration; the bars' labels are the bins' images."""
    bins = len(count)
    edges = np.linspace(0.0, 1.0, bins + 1)
    filled = count > 0
    acc, conf = np.zeros(bins), np.zeros(bins)
    acc[filled], conf[filled] = correct[filled] / count[filled], confidence[filled] / count[filled]
    ece = float(np.abs(correct - confidence).sum() / max(count.sum(), 1))
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.bar(edges[:-1], acc, width=1.0 / bins, align="edge", edgecolor="black", color="#6a9fd4", label="accuracy")
    ax.plot(((edges[:-1] + edges[1:]) / 2)[filled], conf[filled], "o", color="#d46a6a", label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    for x, n, a in zip(edges[:-1], count, acc):
        if n:
            ax.text(x + 0.5 / bins, a + 0.01, str(int(n)), ha="center", fontsize=5)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="top-1 confidence", ylabel="accuracy", title=f"ECE {ece:.4f}")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    _save_png(fig, out / "reliability.png")


def confused_pairs(confusion: np.ndarray, top: int = 20) -> list[tuple[int, int, int, float]]:
    """The ``top`` most frequent (true, predicted) mistakes: (true, predicted, images, share of the true class),
    most images first (ties: by class ids)."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    order = sorted(zip(-off[t, p], t, p))[:top]
    totals = confusion.sum(axis=1)
    return [(int(ti), int(pi), int(-n), float(-n / max(totals[ti], 1))) for n, ti, pi in order]


def plot_confused_pairs(confusion: np.ndarray, names: Sequence[str], png: Path, top: int = 20) -> None:
    """A horizontal bar chart of the ``top`` most confused class pairs (true -> predicted)."""
    pairs = confused_pairs(confusion, top)
    fig = Figure(figsize=(9, 0.35 * max(len(pairs), 1) + 1.2))
    ax = fig.subplots()
    labels = [f"{names[t][:28]} -> {names[p][:28]}" for t, p, _, _ in pairs]
    ax.barh(range(len(pairs)), [n for _, _, n, _ in pairs], color="tab:red")
    ax.set_yticks(range(len(pairs)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("images (true -> predicted)")
    ax.set_title(f"the {len(pairs)} most confused class pairs")
    fig.tight_layout()
    _save_png(fig, png)


def plot_zoom_sweep(
    rows: Sequence[dict], single: float, full: float, num_scales: int, chosen: dict | None, png: Path
) -> None:
    """Top-1 against backbone passes per image for each adaptive-zoom threshold, with single scale and full fusion."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    ax.plot([r["passes_per_image"] for r in rows], [r["top1"] for r in rows], "o-", label="adaptive (threshold)")
    for r in rows[::4]:
        ax.annotate(
            f"{r['threshold']:g}",
            (r["passes_per_image"], r["top1"]),
            fontsize=7,
            xytext=(3, -9),
            textcoords="offset points",
        )
    ax.plot([1.0], [single], "s", color="tab:gray", label=f"single scale {single:.1f}%")
    ax.plot([float(num_scales)], [full], "D", color="tab:green", label=f"full fusion {full:.1f}%")
    if chosen is not None:
        ax.plot(
            [chosen["passes_per_image"]],
            [chosen["top1"]],
            "*",
            markersize=14,
            color="tab:red",
            label=f"chosen: threshold {chosen['threshold']:g}",
        )
    ax.set_xlabel("backbone passes per image")
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, png)


def plot_gate_frontier(report: dict, num_scales: int, png: Path) -> None:
    """Top-1 against backbone passes per image of adaptive zoom on the fitting split: the zoom gate's out-of-fold
    frontier, the top probability's, the oracle, single scale and full fusion."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for key, label in (("maxprob", "top probability"), ("gate_oof", "zoom gate (out of fold)")):
        rows = report[key]["rows"]
        ax.plot([r["passes_per_image"] for r in rows], [r["top1"] for r in rows], "-", label=label)
        chosen = report[key]["chosen"]
        if chosen is not None:
            ax.plot(
                [chosen["passes_per_image"]],
                [chosen["top1"]],
                "*",
                markersize=12,
                label=f"{label}: {chosen['top1']:.1f}% at {chosen['passes_per_image']:.2f}",
            )
    oracle = report["oracle"]
    ax.plot(
        [oracle["passes_per_image"]],
        [oracle["top1"]],
        "^",
        color="tab:purple",
        label=f"oracle {oracle['top1']:.1f}% at {oracle['passes_per_image']:.2f}",
    )
    ax.plot(
        [1.0],
        [report["single_scale_top1"]],
        "s",
        color="tab:gray",
        label=f"single scale {report['single_scale_top1']:.1f}%",
    )
    ax.plot(
        [float(num_scales)],
        [report["full_fusion_top1"]],
        "D",
        color="tab:green",
        label=f"full fusion {report['full_fusion_top1']:.1f}%",
    )
    ax.set_xlabel("backbone passes per image")
    ax.set_ylabel(f"top-1 (%), {report['split']} split")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_png(fig, png)
