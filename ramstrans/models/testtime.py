"""The test-time pieces of ``RAMSTrans.predict``: the zoom criteria, the per-head probabilities, and the assembly of a
``Prediction`` from scale 1's probabilities and those of the zoomed scales (of every image, or of the adaptive
zoom's subset, placed back into the batch)."""

from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from ramstrans.deploy.modes import ZOOM_CRITERIA
from ramstrans.errors import UsageError
from ramstrans.models.backbones.distilled import HEADS, select_head
from ramstrans.models.outputs import Prediction, fuse_probs

__all__ = ["Predictor", "ZoomCriterion", "ZOOM_CRITERIA", "check_zoom_on", "head_probs", "assemble_prediction"]

ZoomCriterion = Literal["maxprob", "margin", "gate"]  # the names of ``deploy.modes.ZOOM_CRITERIA``


class Predictor(Protocol):
    """What evaluation and ``ramstrans predict`` run: RAMSTrans, Classifier, an ONNX export's ``OnnxPredictor``, or
    test-time augmentation's ``FlipTTA`` around any of them."""

    @property
    def num_scales(self) -> int:
        """The scales ``predict`` can fuse (1: none to zoom)."""
        ...

    @property
    def zoom_gate(self) -> Any:
        """The fitted zoom gate (its ``threshold`` is the one chosen on validation), or None."""
        ...

    @property
    def zoom_passes(self) -> int:
        """Backbone passes adaptive zoom adds for an image it zooms (RAMS-Trans reuses scale 1's pass)."""
        ...

    @property
    def training(self) -> bool: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def predict(
        self,
        x: Tensor,
        scales: int | str = 1,
        zoom_threshold: float = 0.5,
        zoom_on: ZoomCriterion = "maxprob",
        boxes: bool = True,
    ) -> Prediction:
        """(B, C, H, W) normalised images -> the test-time ``Prediction`` (single scale, fused, or "auto")."""
        ...


def check_zoom_on(zoom_on: ZoomCriterion, adaptive: bool, has_gate: bool) -> None:
    """Refuse an unknown criterion, or "gate" for adaptive zoom without a fitted zoom gate."""
    if zoom_on not in ZOOM_CRITERIA:
        raise UsageError(f"zoom_on must be one of {', '.join(ZOOM_CRITERIA)}, got {zoom_on!r}")
    if zoom_on == "gate" and adaptive and not has_gate:
        raise UsageError(
            "zoom_on 'gate' needs a fitted zoom gate: ramstrans fit-gate --checkpoint ... writes a checkpoint with one"
        )


def head_probs(cls: Tensor, dist: Tensor | None, temperature: Tensor | float = 1.0) -> dict[str, Tensor]:
    """Softmax probabilities per head of (B, K) logits divided by ``temperature`` (a () tensor on their device, or a
    number; 1 leaves them as they are, exactly): {"cls"} without a distillation token, else {"mean", "cls",
    "dist"}."""
    if dist is None:
        return {"cls": (cls.float() / temperature).softmax(-1)}
    return {h: (select_head(cls, dist, h).float() / temperature).softmax(-1) for h in HEADS}


def assemble_prediction(
    first: dict[str, Tensor],
    zooms: list[dict[str, Tensor]],
    idx: Tensor | None,
    main: str,
    box: Tensor | None,
    zoomed: Tensor,
    has_dist: bool,
) -> Prediction:
    """A ``Prediction`` from scale 1's per-head (B, K) probabilities ``first`` and the zoomed scales' ``zooms``.

    Args:
        first: scale 1's probabilities per head (``head_probs``) of the whole batch.
        zooms: per zoomed scale, its probabilities per head, of the images ``idx`` (all when None).
        idx: the indices of the zoomed images (adaptive zoom), or None when every image ran every scale.
        main: the test-time head ("cls" without a distillation token, else the model's ``eval_head``).
        box: scale 1's (B, 4) proposal, or None when not asked for.
        zoomed: (B,) bool, which images ran the zoomed scales.
        has_dist: the model has a distillation token (every head's probabilities go into ``head_probs``).
    """

    def placed(base: Tensor, values: Tensor) -> Tensor:  # values of the zoomed images into a (B, K) tensor
        return values if idx is None else base.index_copy(0, idx, values)

    def rows(t: Tensor) -> Tensor:
        return t if idx is None else t[idx]

    fused = {h: placed(p, fuse_probs([rows(p)] + [z[h] for z in zooms])) if zooms else p for h, p in first.items()}
    nan = torch.full_like(first[main], float("nan"))
    return Prediction(
        probs=fused[main],
        boxes=box,
        zoomed=zoomed,
        scale_probs=[first[main]] + [placed(nan, z[main]) for z in zooms],
        head_probs=fused if has_dist else {},
    )
