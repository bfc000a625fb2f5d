"""albumentations pipelines: shortest side -> ``resize``, random (train) or center (test) crop of ``crop``, flip,
normalise.

Sizes, mean and std are passed in (they come from the config and the backbone), never looked up here. Boxes ride
along (pascal_voc xyxy, clipped), so localization can be scored in the network's input pixels.
"""

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from ramstrans.deploy.preprocess import Preprocess
from ramstrans.errors import UsageError

__all__ = ["Transform", "RecordTransform"]

Box = tuple[float, float, float, float]


# Fixed, deterministic distribution shifts of test images (to measure generalisation to unseen domains, e.g. of the
# feature-wise transformation): a hue rotation, a Gaussian blur, halved contrast.
SHIFTS = {
    "colour": lambda: A.HueSaturationValue(
        hue_shift_limit=(25, 25), sat_shift_limit=(0, 0), val_shift_limit=(0, 0), p=1.0
    ),
    "blur": lambda: A.GaussianBlur(blur_limit=(5, 5), sigma_limit=(1.5, 1.5), p=1.0),
    "contrast": lambda: A.RandomBrightnessContrast(brightness_limit=(0, 0), contrast_limit=(-0.5, -0.5), p=1.0),
}


class Transform:
    """A seeded albumentations pipeline: ``transform(image, box, seed) -> ((3, crop, crop) tensor, box or None)``.

    Args:
        train: random crop + flip when True, center crop otherwise.
        crop: side of the network input.
        resize: shortest side before cropping (>= crop).
        mean: per-channel mean in [0, 1].
        std: per-channel std in [0, 1].
        hflip: random horizontal flip in training.
        shift: names of ``SHIFTS`` applied (in this order) after the crop: a shifted test set.
        uint8: deliver the crop as a (3, crop, crop) uint8 tensor, not normalised (a quarter of float32's bytes; the
            training step normalises it on the device: ``training.steps.BatchStep``).
    """

    def __init__(
        self,
        *,
        train: bool,
        crop: int,
        resize: int,
        mean: Sequence[float],
        std: Sequence[float],
        hflip: bool = True,
        shift: Sequence[str] = (),
        uint8: bool = False,
    ) -> None:
        if resize < crop:
            raise UsageError(f"data.resize ({resize}) must be at least the crop size model.img_size ({crop})")
        unknown = [n for n in shift if n not in SHIFTS]
        if unknown:
            raise UsageError(f"unknown shift '{unknown[0]}' (known: {', '.join(SHIFTS)})")
        ops = [A.SmallestMaxSize(max_size=resize, interpolation=cv2.INTER_LINEAR)]
        if train:
            ops.append(A.RandomCrop(height=crop, width=crop))
            if hflip:
                ops.append(A.HorizontalFlip(p=0.5))
        else:
            ops.append(A.CenterCrop(height=crop, width=crop))
        ops += [SHIFTS[n]() for n in shift]
        if not uint8:
            ops.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
        ops.append(ToTensorV2())
        self.pipeline = A.Compose(
            ops, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["bbox_ids"], clip=True, min_area=1.0)
        )
        self.train, self.crop, self.resize = train, crop, resize
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: np.ndarray, box: Box | None, seed: int) -> tuple[torch.Tensor, Box | None]:
        self.pipeline.set_random_seed(seed)  # augmentation = f(seed): exact resume, independent of workers
        out = self.pipeline(
            image=image, bboxes=np.array([box] if box else [], np.float32).reshape(-1, 4), bbox_ids=[0] if box else []
        )
        boxes = out["bboxes"]
        if not len(boxes):
            return out["image"], None
        x0, y0, x1, y1 = (float(v) for v in boxes[0])
        return out["image"], (x0, y0, x1, y1)


class RecordTransform:
    """The test transform an export's record spells out, done by ``deploy.preprocess.Preprocess`` (the code
    ``predict`` and a client run) behind ``Transform``'s interface, so that ``eval`` of an ONNX file scores what a
    deployed client sees; a box follows the same resize and crop (clipped; None under 1 pixel of area).

    Args:
        preprocess: the record's preprocessing.
        shift: names of ``SHIFTS`` applied (in this order) to the crop before it is normalised.
    """

    train = False

    def __init__(self, preprocess: Preprocess, shift: Sequence[str] = ()) -> None:
        unknown = [n for n in shift if n not in SHIFTS]
        if unknown:
            raise UsageError(f"unknown shift '{unknown[0]}' (known: {', '.join(SHIFTS)})")
        self.preprocess = preprocess
        self.crop, self.resize, self.mean, self.std = (
            preprocess.crop,
            preprocess.resize,
            preprocess.mean,
            preprocess.std,
        )
        self.shifts = A.Compose([SHIFTS[n]() for n in shift]) if shift else None

    def __call__(self, image: np.ndarray, box: Box | None, seed: int) -> tuple[torch.Tensor, Box | None]:
        window = self.preprocess.cropped(image)
        if self.shifts is not None:
            self.shifts.set_random_seed(seed)
            window = self.shifts(image=window)["image"]
        return torch.from_numpy(self.preprocess.normalise(window)), self._box(box, *image.shape[:2])

    def _box(self, box: Box | None, height: int, width: int) -> Box | None:
        """A pascal_voc box of the image in the crop's pixels, as albumentations maps it (clipped, min area 1)."""
        if box is None:
            return None
        (h, w), (top, left) = self.preprocess.geometry(height, width)
        sx, sy, c = w / width, h / height, float(self.crop)
        x0, x1 = (min(max(v * sx - left, 0.0), c) for v in (box[0], box[2]))
        y0, y1 = (min(max(v * sy - top, 0.0), c) for v in (box[1], box[3]))
        return (x0, y0, x1, y1) if (x1 - x0) * (y1 - y0) >= 1.0 else None
