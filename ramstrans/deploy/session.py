"""An ONNX file written by ``ramstrans export --format onnx`` in onnxruntime, without torch: its record (class names,
preprocessing, graph kind, precision), and ``OnnxModel.predict``, single scale, fused or adaptive like
``RAMSTrans.predict``.

A fused export is two files: ``NAME.onnx`` (every scale, one graph) and ``NAME.scale1.onnx`` (scale 1 alone, with the
zoom gate's confidence where one was fitted). ``--scales 1`` runs the second; ``--scales N`` the first; ``--scales
auto`` runs the second on every image and the first on those whose scale-1 confidence is below the threshold, so an
adaptive image costs 1 + 2 x (zoomed share) backbone passes (a checkpoint's adaptive zoom reuses scale 1: 1 + share).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ramstrans.deploy.images import read_image
from ramstrans.deploy.modes import check_zoom_on
from ramstrans.deploy.records import RECORD_KEY, read_onnx_record
from ramstrans.errors import CheckpointError, UsageError
from ramstrans.registry import EvalRequest
from ramstrans.runtime.files import register_read

__all__ = ["RECORD_KEY", "OnnxModel", "OnnxPrediction", "scale1_path", "softmax", "open_onnx"]


def scale1_path(path: str | Path) -> Path:
    """Where a fused export's single-scale graph is: ``model.onnx`` -> ``model.scale1.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.name.removesuffix('.onnx')}.scale1.onnx")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (B, K) logits, in float32."""
    z = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class OnnxPrediction:
    """What ``OnnxModel.predict`` returns.

    Attributes:
        probs: (B, K) float32 class probabilities.
        zoomed: (B,) bool, which images ran the zoomed scales.
        boxes: (B, 4) float32 scale 1's proposal where the fused graph ran on every image, else None.
    """

    probs: np.ndarray
    zoomed: np.ndarray
    boxes: np.ndarray | None


def _session(path: Path, providers: list[str]) -> Any:
    """An onnxruntime session of ``path``.

    Raises:
        CheckpointError: a file onnxruntime cannot load (truncated, damaged, not ONNX).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a QDQ graph's fusion notes are not the user's concern
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable ONNX file (truncated or damaged?): {reason}") from e


def check_providers(providers: list[str] | None) -> list[str]:
    """The execution providers to use (default: the CPU's), each checked to be installed.

    Raises:
        UsageError: a provider this onnxruntime does not have, naming it and those it has.
    """
    import onnxruntime as ort

    have = ort.get_available_providers()
    wanted = list(providers or ["CPUExecutionProvider"])
    missing = [p for p in wanted if p not in have]
    if missing:
        raise UsageError(f"--providers {missing[0]} is not installed in this onnxruntime (it has: {', '.join(have)})")
    return wanted


class OnnxModel:
    """An exported ramstrans model in onnxruntime (see the module doc).

    Args:
        path: the .onnx file (single-scale or fused).
        providers: onnxruntime execution providers, in order of preference (default: CPU).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not an ONNX file ramstrans wrote, or a fused export whose single-scale graph is damaged.
        UsageError: a provider that is not installed.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"model {path} does not exist")
        self.providers = check_providers(providers)
        register_read(self.path)
        self.main = _session(self.path, self.providers)
        self.info = read_onnx_record(self.main, self.path)
        self.record = self.info.fields  # the whole record as read (provenance, calibration, outputs)
        self.class_names = self.info.class_names
        self.preprocess = self.info.preprocess
        self.num_scales = self.info.num_scales
        self.zoom_threshold = self.info.zoom_threshold
        self.temperature = self.info.temperature  # fitted by eval --calibrate; 1: none
        self.config = self.info.config
        self._scale1: Any = self.main if self.num_scales == 1 else None
        if self._scale1 is None:  # a fused file: its companion is read too, so no output may replace it
            register_read(self._companion())

    def scale1(self) -> Any:
        """The single-scale graph's session (a fused export's companion file, opened on first use).

        Raises:
            UsageError: a fused file without its single-scale graph beside it.
        """
        if self._scale1 is None:
            companion = self._companion()
            if not companion.is_file():
                raise UsageError(
                    f"{self.path} is a fused graph without its single-scale graph {companion.name} beside it: "
                    "--scales 1 and auto need both files that export wrote"
                )
            scale1 = _session(companion, self.providers)
            info = read_onnx_record(scale1, companion)
            if info.graph != "single" or info.class_names != self.class_names or info.preprocess != self.preprocess:
                raise CheckpointError(
                    f"{companion} is not the single-scale graph of {self.path} (its record's graph, classes or "
                    "preprocessing differ): export both files again"
                )
            self._scale1 = scale1
        return self._scale1

    def _companion(self) -> Path:
        """A fused file's single-scale graph: the file its record names, beside it."""
        return self.path.with_name(self.info.scale1_graph or scale1_path(self.path).name)

    def check_scales(self, scales: int | str, zoom_on: str = "maxprob") -> None:
        """Refuse what the file cannot run: more or fewer fused scales than exported, auto on a single graph, the
        gate's confidence without a gate.

        Raises:
            UsageError: naming the file and what it holds.
        """
        check_zoom_on(zoom_on)
        if scales == "auto" and self.num_scales == 1:
            raise UsageError(
                f"--scales auto needs a fused export (ramstrans export --format onnx --scales 2); {self.path} is "
                "single-scale"
            )
        if scales == "auto" and zoom_on == "gate" and self.zoom_threshold is None:
            raise UsageError(
                f"--zoom-on gate needs an export of a checkpoint with a fitted zoom gate; {self.path} has none"
            )
        if scales != "auto" and int(scales) not in (1, self.num_scales):
            raise UsageError(f"{self.path} fuses {self.num_scales} scale(s); it runs --scales 1 or {self.num_scales}")

    def predict(
        self, images: np.ndarray, scales: int | str = 1, zoom_threshold: float = 0.5, zoom_on: str = "maxprob"
    ) -> OnnxPrediction:
        """Class probabilities of a batch, like ``RAMSTrans.predict`` (call ``check_scales`` first).

        Args:
            images: (B, 3, H, W) float32 preprocessed images.
            scales: 1, the exported number of scales (fused), or "auto".
            zoom_threshold: "auto": zoom the images whose scale-1 confidence is below it.
            zoom_on: "maxprob", "margin" or "gate".
        """
        images = np.ascontiguousarray(images, dtype=np.float32)
        crop = self.preprocess.crop
        if images.ndim != 4 or images.shape[1:] != (3, crop, crop):
            raise UsageError(
                f"{self.path} takes {crop} x {crop} images ((B, 3, {crop}, {crop}), its record's preprocess.crop), "
                f"got an array of shape {images.shape}"
            )
        B = images.shape[0]
        if scales != "auto" and int(scales) > 1:
            probs, boxes = self.main.run(["probs", "boxes"], {"images": images})
            return OnnxPrediction(probs, np.ones(B, dtype=bool), boxes)
        first = self.scale1().run(None, {"images": images})
        names = [o.name for o in self.scale1().get_outputs()]
        probs = softmax(first[names.index("logits")] / self.temperature)
        if scales != "auto":
            return OnnxPrediction(probs, np.zeros(B, dtype=bool), None)
        confidence = first[names.index("zoom_confidence")] if zoom_on == "gate" else _confidence(probs, zoom_on)
        zoomed = confidence < zoom_threshold
        if zoomed.any():
            probs = probs.copy()
            probs[zoomed] = self.main.run(["probs"], {"images": images[zoomed]})[0]
        return OnnxPrediction(probs, zoomed, None)

    # ---- ``deploy.predict.ArrayModel``: what the predict loop runs -----------------------------------------------
    @property
    def gate_threshold(self) -> float | None:
        """The threshold chosen when the zoom gate was fitted, or None without a gate."""
        return self.zoom_threshold

    draws = "is an ONNX file (its graph gives no maps to draw)"  # why --visualize cannot draw its panels

    def drawer(self, folder: Path) -> Any:
        """Refused: an ONNX graph gives no maps to draw (``draws`` says so before any file is read)."""
        raise UsageError(f"--visualize needs a RAMS-Trans model; {self.path} {self.draws}")

    def prepare(self, path: Path) -> np.ndarray:
        """One image file's (3, crop, crop) float32 input, preprocessed as the file's record says.

        Raises:
            ImageReadError: the file cannot be decoded.
        """
        return self.preprocess(read_image(path))

    def predict_batch(
        self, images: list[np.ndarray], scales: int | str, threshold: float, zoom_on: str, mirror: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, K) float32 probabilities and (B,) bool zoomed flags of prepared images (``mirror``: of their
        horizontal mirrors)."""
        batch = np.stack(images)
        out = self.predict(np.ascontiguousarray(batch[..., ::-1]) if mirror else batch, scales, threshold, zoom_on)
        return out.probs, out.zoomed


def open_onnx(request: EvalRequest) -> OnnxModel:
    """The reader of an ONNX file without torch (``ramstrans.registry.SOURCES``): the file in onnxruntime on
    ``request.providers``.

    Raises:
        UsageError: ``--weights`` or ``--device`` given (an ONNX file holds one set of weights and runs on the
            providers given).
    """
    if request.weights != "auto" or request.device not in ("auto", "cpu"):
        raise UsageError(
            "--weights and --device apply to a checkpoint; an ONNX file holds one set of weights and runs on the "
            "--providers given"
        )
    return OnnxModel(request.source, list(request.providers) or None)


def _confidence(probs: np.ndarray, zoom_on: str) -> np.ndarray:
    """(B,) the top probability, or ("margin") top-1 minus top-2."""
    top = -np.sort(-probs, axis=-1)
    return top[:, 0] - top[:, 1] if zoom_on == "margin" and probs.shape[1] > 1 else top[:, 0]
