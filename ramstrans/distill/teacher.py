"""The frozen teacher of knowledge distillation: a trained ramstrans model (a classifier such as a CNN, or a RAMS-Trans
ViT: its single scale, or the fusion of its zoomed scales) loaded from a checkpoint, a run folder or an exported timm
folder.

The teacher is always in eval mode, has no trainable parameters, draws no random numbers (so a resumed run continues
exactly), is never wrapped in DDP (the criterion holds it, not the trained module), and sees exactly the student's
pixels, renormalised from the student's mean / std to its own. It gives the loss log-probabilities: those of its single
pass, or the log of its fused prediction (the mean of its scales' softmax, exactly what ``eval --scales N`` scores).
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramstrans.errors import ConfigError, UsageError
from ramstrans.inference.load import load_model
from ramstrans.models import Model, Prediction, RAMSTrans, ZoomCriterion, fused_log_probs

__all__ = ["Teacher", "TeacherSource", "load_teacher", "file_sha256"]


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Teacher(nn.Module):
    """A frozen classifier that takes the student's normalised images.

    Args:
        model: the teacher (RAMSTrans or Classifier): (B, C, H, W) its own normalisation -> (B, K) logits.
        student_mean: the student's per-channel input mean (the batches arrive normalised with it).
        student_std: the student's per-channel input std.
        scales: how many of a RAMS-Trans teacher's scales to fuse (1: its single pass; a classifier has 1).

    With the teacher's own mean m_t, std s_t: x_t = (x · s_s + m_s − m_t) / s_t, computed as x · a + b.
    """

    scale: Tensor  # (1, C, 1, 1) buffers of the renormalisation
    shift: Tensor

    def __init__(
        self, *, model: Model, student_mean: Sequence[float], student_std: Sequence[float], scales: int = 1
    ) -> None:
        super().__init__()
        if not 1 <= scales <= model.num_scales:
            raise UsageError(f"the teacher has {model.num_scales} scale(s); cannot fuse {scales}")
        self.scales = int(scales)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        s_mean, s_std = (torch.tensor(v, dtype=torch.float64) for v in (student_mean, student_std))
        t_mean, t_std = (torch.tensor(v, dtype=torch.float64) for v in (model.backbone.mean, model.backbone.std))
        if s_mean.numel() != t_mean.numel():
            raise UsageError(f"the teacher takes {t_mean.numel()} input channels, the student {s_mean.numel()}")
        self.register_buffer("scale", (s_std / t_std).float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((s_mean - t_mean) / t_std).float().view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "Teacher":
        """The wrapper follows ``mode``; the teacher itself stays in eval mode (BatchNorm statistics never move)."""
        super().train(mode)
        self.model.eval()
        return self

    num_scales = 1  # what evaluation sees: one prediction (``predict``), fused inside when ``scales`` > 1
    zoom_passes = 0

    @property
    def passes_per_image(self) -> int:
        """Backbone passes the teacher runs per image it sees."""
        return self.scales

    @torch.no_grad()
    def predict(
        self,
        x: Tensor,
        scales: int | str = 1,
        zoom_threshold: float = 0.5,
        zoom_on: ZoomCriterion = "maxprob",
        boxes: bool = True,
    ) -> Prediction:
        """The teacher's own ``Prediction`` on the student's images (to report its accuracy): its ``self.scales``
        fused, whatever ``scales`` the caller asks for (the teacher is one fixed predictor)."""
        return self.model.predict(self.normalize_input(x), self.scales, boxes=False)

    def normalize_input(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images in the student's normalisation -> the same pixels in the teacher's."""
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images in the student's normalisation -> (B, K) float32 teacher log-probabilities (no
        gradient): of the single pass, or the log of the mean of ``scales`` scales' softmax."""
        x = self.normalize_input(x)
        if self.scales == 1:
            return F.log_softmax(self.model(x).float(), dim=-1)
        assert isinstance(self.model, RAMSTrans)  # more than one scale: a RAMS-Trans teacher
        return fused_log_probs(self.model.head_logits(self.model.forward_multiscale(x, self.scales)))


@dataclass
class TeacherSource:
    """Who the teacher is: what the checkpoint records and a resume checks."""

    path: str
    name: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "name": self.name, "sha256": self.sha256}


def _read(source: str) -> tuple[Model, list[str], int, Path, str]:
    """(model, class names, input side, weights file, architecture) of a checkpoint, run folder or export folder."""
    if not Path(source).expanduser().exists():
        raise FileNotFoundError(f"distill.teacher {source} does not exist")
    loaded = load_model(source, gate=False)
    model = loaded.torch_model(f"distill.teacher {source}")
    arch = loaded.config.model.backbone if loaded.config is not None else model.backbone.name
    return model, loaded.class_names, loaded.transform.crop, loaded.file, arch


def load_teacher(
    source: str,
    class_names: Sequence[str],
    img_size: int,
    student_mean: Sequence[float],
    student_std: Sequence[float],
    scales: int = 0,
) -> tuple[Teacher, TeacherSource]:
    """The teacher of ``distill.teacher``, checked against the student's classes and input size.

    Args:
        source: a checkpoint, run folder or exported timm folder.
        class_names: the student's classes.
        img_size: the side of the student's batches (``Config.pipeline_size``: model.img_size, or data.source_size).
        student_mean: the student's input mean.
        student_std: the student's input std.
        scales: ``distill.teacher_scales``: how many of the teacher's scales to fuse (0: all it has).

    Raises:
        FileNotFoundError: the teacher does not exist.
        CheckpointError: not a checkpoint, run folder or export the toolkit can read.
        ConfigError: trained on other classes, at another input size than the student's, or with fewer scales than
            ``scales``.
    """
    model, names, side, weights, arch = _read(source)
    if scales > model.num_scales:
        raise ConfigError(
            f"distill.teacher_scales is {scales} but the teacher {source} has {model.num_scales} scale(s)"
        )
    if list(names) != list(class_names):
        raise ConfigError(
            f"distill.teacher {source} was trained on other classes ({len(names)}: "
            f"{', '.join(names[:3])}, ...) than the data set ({len(class_names)}: "
            f"{', '.join(list(class_names)[:3])}, ...)"
        )
    if side != img_size:
        raise ConfigError(
            f"distill.teacher {source} takes {side}-pixel images but the student's batches are {img_size} pixels "
            "(model.img_size, or data.source_size with model.zoom_source source): the teacher must see the "
            "student's pixels"
        )
    teacher = Teacher(
        model=model, student_mean=student_mean, student_std=student_std, scales=scales or model.num_scales
    )
    return teacher, TeacherSource(path=str(weights), name=arch, sha256=file_sha256(weights))
