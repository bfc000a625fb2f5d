"""Classification and localization metrics kept as sums and counts, so that shards reduce exactly."""

import torch
from torch import Tensor

__all__ = ["box_iou", "MetricAccumulator"]

CONFUSION_MAX_CLASSES = 1000  # a dense K x K count matrix is kept up to here (8 MB at 1,000 classes)


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
        if pred_boxes is not None and gt_boxes is not None:
            # per-image IoU, independent of batching
            gt, pb = gt_boxes.cpu().double(), pred_boxes.detach().cpu().double()
            valid = ~torch.isnan(gt).any(dim=1)
            iou = box_iou(pb[valid], gt[valid])
            s["iou_sum"] += iou.sum()
            s["iou_hits"] += (iou >= 0.5).sum()
            s["iou_count"] += valid.sum()

    def summary(self) -> dict[str, float]:
        """top1 / top5 / mean per-class accuracy in percent; IoU metrics where boxes were seen."""
        s = self.state
        n = s["count"].sum().item()
        seen = s["count"] > 0
        out = {
            "images": int(n),
            "top1": 100.0 * s["correct"].sum().item() / max(n, 1),
            "top5": 100.0 * s["top5"].item() / max(n, 1),
            "mean_class_acc": 100.0 * (s["correct"][seen] / s["count"][seen]).mean().item() if seen.any() else 0.0,
        }
        if s["iou_count"] > 0:
            out["loc_miou"] = s["iou_sum"].item() / s["iou_count"].item()
            out["loc_iou50"] = 100.0 * s["iou_hits"].item() / s["iou_count"].item()
        return out
