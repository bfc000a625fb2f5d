"""A torch model behind ``deploy.predict``'s array interface: what ``ramstrans predict`` runs for a checkpoint, a run
folder or an export folder (the reader's ``LoadedModel``): the test transform prepares each file, batches run
``predict`` on the device, and ``--visualize`` draws each batch's zoom panels."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from ramstrans.data import read_image
from ramstrans.deploy.modes import check_zoom_on, parse_scales
from ramstrans.errors import UsageError
from ramstrans.inference.evaluate import gate_threshold
from ramstrans.inference.load import LoadedModel
from ramstrans.inference.visualize import draw_panels
from ramstrans.models import RAMSTrans, ZoomCriterion
from ramstrans.registry import EvalRequest, load_source
from ramstrans.runtime.amp import amp_setup, autocast
from ramstrans.runtime.dist import resolve_device

__all__ = ["TorchArrays", "open_torch_arrays"]


class TorchArrays:
    """A loaded torch model (``LoadedModel``) on its device, behind ``deploy.predict.ArrayModel``.

    Args:
        loaded: the model its source's reader gave.
        device: auto | cpu | cuda.
    """

    def __init__(self, loaded: LoadedModel, device: str = "auto") -> None:
        self.loaded = loaded
        self.model = loaded.torch_model("ramstrans predict")
        self.class_names, self.num_scales = loaded.class_names, self.model.num_scales
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.amp_dtype = amp_setup(self.device, loaded.config.train.amp if loaded.config is not None else True)[0]

    @property
    def gate_threshold(self) -> float | None:
        return gate_threshold(self.model)

    @property
    def draws(self) -> str:
        return "" if isinstance(self.model, RAMSTrans) else "is a classifier without attention"

    def check_scales(self, scales: int | str, zoom_on: str = "maxprob") -> None:
        """Refuse more scales than the model has (``--zoom-on gate`` without a gate: ``resolve_threshold``)."""
        parse_scales(scales, self.num_scales)

    def prepare(self, path: Path) -> Tensor:
        """One image file's (C, H, W) input under the model's test transform."""
        image: Tensor = self.loaded.transform(read_image(path), None, 0)[0]
        return image

    @torch.no_grad()
    def predict_batch(
        self, images: list[Tensor], scales: int | str, threshold: float, zoom_on: str, mirror: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, K) float32 probabilities and (B,) bool zoomed flags of prepared images (``mirror``: of their
        mirrors), from the model's ``predict``."""
        x = torch.stack(images).to(self.device)
        with autocast(self.device, self.amp_dtype):
            criterion = cast(ZoomCriterion, check_zoom_on(zoom_on))
            pred = self.model.predict(x.flip(-1) if mirror else x, scales, threshold, criterion, boxes=False)
        return pred.probs.float().cpu().numpy(), pred.zoomed.cpu().numpy()

    def drawer(self, folder: Path) -> Callable[[list[Any], list[Path]], None]:
        """Draws each batch's zoom panels into ``folder``, numbered in order."""
        model = self.model
        assert isinstance(model, RAMSTrans)  # run_predict asks ``draws`` first
        drawn = [0]

        def draw(images: list[Any], paths: list[Path]) -> None:
            x = torch.stack(images).to(self.device)
            drawn[0] += len(draw_panels(model, x, paths, self.class_names, folder, first=drawn[0])[0])

        return draw


def open_torch_arrays(request: EvalRequest) -> TorchArrays:
    """The reader of a source's torch model behind arrays (``ramstrans.registry.SourceKind.arrays``'s default).

    Raises:
        UsageError: ``--providers`` given (they are an ONNX file's).
    """
    if request.providers:
        raise UsageError("--providers applies to an ONNX file; a checkpoint runs on --device")
    return TorchArrays(load_source(request), request.device)
