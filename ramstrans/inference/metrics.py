"""Classification, calibration and localization metrics kept as sums and counts, so that shards reduce exactly."""

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["box_iou", "MetricAccumulator", "ece_of_bins", "shot_accuracy", "ECE_BINS", "SHOT_THRESHOLDS"]

CONFUSION_MAX_CLASSES = 1000  # a dense K x K count matrix is kept up to here (8 MB at 1,000 classes)
ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al., 2017)
SHOT_THRESHOLDS = (100, 20)  # many-shot: > 100 training images, few-shot: < 20, medium-shot: between (inclusive)


def ece_of_bins(count: Tensor, confidence: Tensor, correct: Tensor) -> float:
    """Expected calibration error from per-bin sums: Σ_b (n_b / N) · |accuracy_b − confidence_b|.

    Args:
        count: (bins,) images per bin.
        confidence: (bins,) summed top-1 confidence per bin.
        correct: (bins,) correct top-1 predictions per bin.
    """
    n = count.sum()
    if n == 0:
        return float("nan")
    return float(((correct - confidence).abs()).sum() / n)  # n_b · |acc_b − conf_b| = |correct_b − confidence_b|


def shot_accuracy(
    count: Sequence[float], correct: Sequence[float], train_counts: Sequence[int], thresholds: Sequence[int]
) -> dict[str, dict[str, float | int | None]]:
    """Mean per-class accuracy (percent) of the many- / medium- / few-shot classes, by their training images.

    Args:
        count: (K,) evaluated images per class.
        correct: (K,) correct top-1 predictions per class.
        train_counts: (K,) training images per class.
        thresholds: (many, few): many-shot classes have more than ``many`` training images, few-shot fewer than
            ``few``, medium-shot the rest.

    Returns:
        {"many" | "medium" | "few": {"classes": number of classes evaluated, "accuracy": percent or None}}.
    """
    many, few = thresholds
    n, c, t = np.asarray(count, float), np.asarray(correct, float), np.asarray(train_counts)
    groups = {"many": t > many, "medium": (t >= few) & (t <= many), "few": t < few}
    out: dict[str, dict[str, float | int | None]] = {}
    for name, member in groups.items():
        seen = member & (n > 0)
        acc = float(100.0 * (c[seen] / n[seen]).mean()) if seen.any() else None
        out[name] = {"classes": int(seen.sum()), "accuracy": acc}
    return out


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of paired xyxy boxes: (B, 4), (B, 4) -> (B,)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = lambda t: (t[:, 2:] - t[:, :2]).clamp(min=0).prod(dim=1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


class MetricAccumulator:
    """Per-class top-1 counts, top-5 hits, proposal IoU sums; ``state`` is a dict of tensors to all-reduce (sum).

    Args:
        num_classes: K.
    """

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self.state: dict[str, Tensor] = {
            "count": torch.zeros(num_classes, dtype=torch.float64),
            "correct": torch.zeros(num_classes, dtype=torch.float64),
            "top5": torch.zeros((), dtype=torch.float64),
            "iou_sum": torch.zeros((), dtype=torch.float64),
            "iou_hits": torch.zeros((), dtype=torch.float64),
            "iou_count": torch.zeros((), dtype=torch.float64),
            "bin_count": torch.zeros(ECE_BINS, dtype=torch.float64),  # per confidence bin: images,
            "bin_confidence": torch.zeros(ECE_BINS, dtype=torch.float64),  # summed top-1 probability,
            "bin_correct": torch.zeros(ECE_BINS, dtype=torch.float64),  # correct top-1 predictions
        }
        if num_classes <= CONFUSION_MAX_CLASSES:
            self.state["confusion"] = torch.zeros(num_classes, num_classes, dtype=torch.float64)

    def update(
        self, scores: Tensor, labels: Tensor, pred_boxes: Tensor | None = None, gt_boxes: Tensor | None = None
    ) -> None:
        """Add a batch: scores (B, K), labels (B,), optional xyxy boxes (B, 4) with NaN rows for 'no box'."""
        scores, labels = scores.detach().float().cpu(), labels.cpu()
        pred = scores.argmax(dim=1)
        s = self.state
        s["count"] += torch.bincount(labels, minlength=self.k).double()
        s["correct"] += torch.bincount(labels[pred == labels], minlength=self.k).double()
        top5 = scores.topk(min(5, self.k), dim=1).indices
        s["top5"] += (top5 == labels[:, None]).any(dim=1).sum()
        if "confusion" in s:
            s["confusion"].index_put_((labels, pred), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
        # bin b holds confidences in (b / bins, (b + 1) / bins]; a confidence of exactly 0 joins bin 0
        conf = scores.max(dim=1).values.double()
        b = (conf * ECE_BINS).ceil().long().sub(1).clamp(0, ECE_BINS - 1)
        s["bin_count"] += torch.bincount(b, minlength=ECE_BINS).double()
        s["bin_confidence"] += torch.bincount(b, weights=conf, minlength=ECE_BINS)
        s["bin_correct"] += torch.bincount(b, weights=(pred == labels).double(), minlength=ECE_BINS)
        if pred_boxes is not None and gt_boxes is not None:
            # per-image IoU, independent of batching
            gt, pb = gt_boxes.cpu().double(), pred_boxes.detach().cpu().double()
            valid = ~torch.isnan(gt).any(dim=1)
            iou = box_iou(pb[valid], gt[valid])
            s["iou_sum"] += iou.sum()
            s["iou_hits"] += (iou >= 0.5).sum()
            s["iou_count"] += valid.sum()

    def summary(self) -> dict[str, float]:
        """top1 / top5 / mean per-class accuracy in percent, the expected calibration error of the top-1 confidence
        (15 bins, a fraction); IoU metrics where boxes were seen."""
        s = self.state
        n = s["count"].sum().item()
        seen = s["count"] > 0
        out = {
            "images": int(n),
            "top1": 100.0 * s["correct"].sum().item() / max(n, 1),
            "top5": 100.0 * s["top5"].item() / max(n, 1),
            "mean_class_acc": 100.0 * (s["correct"][seen] / s["count"][seen]).mean().item() if seen.any() else 0.0,
            "ece": ece_of_bins(s["bin_count"], s["bin_confidence"], s["bin_correct"]),
        }
        if s["iou_count"] > 0:
            out["loc_miou"] = s["iou_sum"].item() / s["iou_count"].item()
            out["loc_iou50"] = 100.0 * s["iou_hits"].item() / s["iou_count"].item()
        return out
