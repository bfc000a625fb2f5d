"""The test-time preprocessing of a trained model, spelled out so that a client without ramstrans reproduces it from an
export's metadata alone, and ``preprocess``, which does it with OpenCV and numpy (equal to the albumentations
``Transform(train=False)`` that evaluation uses, to float32 rounding: tested).

The steps: decode with OpenCV (``deploy.images.read_image``: EXIF orientation applied, 8-bit RGB); scale so that the
shortest side is ``resize`` (the other side ``round(side * resize / shortest)``, Python's round half to even, at least
1; no resize when the shortest side already is ``resize``) with ``cv2.INTER_LINEAR`` (bilinear, half-pixel centres, no
antialiasing); a centred ``crop`` x ``crop`` window (offset ``(side - crop) // 2``); RGB float32 ``pixel / 255``, minus
``mean``, divided by ``std``, per channel; channels first.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from ramstrans.fields import Fields

__all__ = ["Preprocess", "BOXES_FORMAT"]

# what the fused graph's ``boxes`` output holds
BOXES_FORMAT = (
    "(B, 4) float32 x0, y0, x1, y1 of scale 1's proposal in pixels of the model input (the crop), x1 and y1 exclusive, "
    "on scale 1's patch grid (scaled by crop / scale 1's size where scale 1 sees a downsample of the crop); the whole "
    "input (0, 0, crop, crop) where the attention mask is empty"
)
_STEPS = {  # the words a client reads; the numbers are the fields
    "decode": "OpenCV cv2.imdecode(bytes, cv2.IMREAD_COLOR): 8-bit, EXIF orientation applied, alpha dropped, "
    "grey repeated to 3 channels",
    "channels": "RGB (OpenCV decodes BGR: reversed)",
    "resize": "shortest side to `resize`, the other to round(side * resize / shortest) with Python's round (half to "
    "even), at least 1; skipped when the shortest side already is `resize`",
    "interpolation": "bilinear: cv2.resize(..., interpolation=cv2.INTER_LINEAR), half-pixel centres, no antialiasing",
    "crop": "centred `crop` x `crop` window, top-left corner ((height - crop) // 2, (width - crop) // 2)",
    "normalise": "float32 pixel / 255, then (value - mean[c]) / std[c] per RGB channel",
    "layout": "NCHW float32, input name `images`",
}


@dataclass(frozen=True)
class Preprocess:
    """The test transform of a trained model.

    Attributes:
        resize: the shortest side before cropping (>= crop).
        crop: side of the square network input.
        mean: per-RGB-channel mean in [0, 1].
        std: per-RGB-channel std in [0, 1].
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, resize: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> "Preprocess":
        m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        return cls(int(resize), int(crop), (m[0], m[1], m[2]), (s[0], s[1], s[2]))

    def to_meta(self) -> dict[str, Any]:
        """The fields and the steps in words, for an export's metadata."""
        return {**asdict(self), "steps": dict(_STEPS), "boxes": BOXES_FORMAT}

    @classmethod
    def from_fields(cls, f: Fields) -> "Preprocess":
        """From ``to_meta``'s dict, every field checked: crop and resize whole numbers ≥ 1 (resize ≥ crop), mean and
        std one value (every channel) or three, finite, std > 0.

        Raises:
            CheckpointError (``f``'s error): naming the file and the field.
        """
        crop = f.number("crop", low=1, integer=True)
        resize = f.number("resize", low=crop, integer=True)
        mean, std = f.numbers("mean", (1, 3)), f.numbers("std", (1, 3), above=0)
        return cls.of(resize, crop, mean * (3 // len(mean)), std * (3 // len(std)))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (3, crop, crop) float32 network input."""
        return self.normalise(self.cropped(image))

    def geometry(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The resized (height, width) of an image of this size and the crop's top-left corner (top, left)."""
        scale = self.resize / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return size, ((size[0] - self.crop) // 2, (size[1] - self.crop) // 2)

    def cropped(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> the (crop, crop, 3) uint8 window: resized, then centre-cropped."""
        (h, w), (top, left) = self.geometry(*image.shape[:2])
        if (h, w) != image.shape[:2]:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        return image[top : top + self.crop, left : left + self.crop]

    def normalise(self, window: np.ndarray) -> np.ndarray:
        """(crop, crop, 3) uint8 RGB -> (3, crop, crop) float32: pixel / 255, minus mean, over std, channels first."""
        x = window.astype(np.float32) / np.float32(255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))
