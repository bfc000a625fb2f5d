"""Test-time augmentation: ``--tta flip`` predicts the mean of an image's and its mirror's probabilities.

``FlipTTA`` wraps a model (a checkpoint's or an ONNX export's predictor) behind the same ``predict``; evaluation counts
its cost in backbone passes like the zoom's: every view costs its own passes (two views of a single-scale model cost
2 passes per image, of a fused two-scale model 4, and adaptive zoom decides per view).
"""

import torch
from torch import Tensor

from ramstrans.deploy.modes import check_tta
from ramstrans.models import Prediction, Predictor, ZoomCriterion

__all__ = ["FlipTTA", "with_tta"]


class FlipTTA:
    """A model's ``predict`` on (B, C, H, W) images and on their horizontal mirrors, averaged.

    Args:
        model: a ``Predictor`` (RAMSTrans, Classifier, OnnxPredictor).
    """

    views = 2

    def __init__(self, model: Predictor) -> None:
        self.model = model

    @property
    def num_scales(self) -> int:
        return int(self.model.num_scales)

    @property
    def zoom_gate(self) -> object:
        return self.model.zoom_gate

    @property
    def zoom_passes(self) -> int:
        return int(self.model.zoom_passes)

    @property
    def training(self) -> bool:
        return bool(self.model.training)

    def eval(self) -> "FlipTTA":
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> "FlipTTA":
        self.model.train(mode)
        return self

    @torch.no_grad()
    def predict(
        self,
        x: Tensor,
        scales: int | str = 1,
        zoom_threshold: float = 0.5,
        zoom_on: ZoomCriterion = "maxprob",
        boxes: bool = True,
    ) -> Prediction:
        """The mean of the two views' probabilities (every head's and every scale's; a scale's row is NaN where
        either view did not run it); the boxes are the image's own; ``zoomed`` counts the (B,) views that zoomed.

        Args:
            x: (B, C, H, W) normalised images (a mirror of the normalised image is the normalised mirror).
            scales, zoom_threshold, zoom_on, boxes: as the model's ``predict``.
        """
        a = self.model.predict(x, scales, zoom_threshold, zoom_on, boxes)
        b = self.model.predict(x.flip(-1), scales, zoom_threshold, zoom_on, boxes=False)
        return Prediction(
            probs=(a.probs + b.probs) / 2,
            boxes=a.boxes,
            zoomed=a.zoomed.long() + b.zoomed.long(),
            scale_probs=[(p + q) / 2 for p, q in zip(a.scale_probs, b.scale_probs)],
            head_probs={h: (p + b.head_probs[h]) / 2 for h, p in a.head_probs.items()},
        )


def with_tta(model: Predictor, tta: str) -> tuple[Predictor, int]:
    """``model`` wrapped for test-time augmentation ``tta`` ("none" or "flip"), and its views per image.

    Raises:
        UsageError: another value.
    """
    return (FlipTTA(model), FlipTTA.views) if check_tta(tta) == "flip" else (model, 1)
