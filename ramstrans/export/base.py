"""What every export target shares: the output check, the test transform and preprocessing it records, and where the
weights came from."""

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ramstrans import __version__
from ramstrans.config import Config
from ramstrans.deploy.preprocess import Preprocess
from ramstrans.errors import UsageError
from ramstrans.inference.load import LoadedModel
from ramstrans.models import Model
from ramstrans.runtime.files import check_output

__all__ = ["checked_out", "transform_info", "preprocess_of", "provenance", "config_record", "PAPER_IDS"]

PAPER_IDS = ["arXiv:2107.08192"]  # RAMS-Trans


def checked_out(out: str, scales: int, model: Model, checkpoint: str, overwrite: bool) -> Path:
    """The output path of an export of ``scales`` scales: never the checkpoint, replaced only with ``overwrite``."""
    if not 1 <= scales <= model.num_scales:
        raise UsageError(f"the model has {model.num_scales} scale(s); cannot export {scales}")
    return check_output(out, [checkpoint], overwrite, "--out")


def transform_info(cfg: Config) -> dict[str, Any]:
    """The test transform an export records: {"resize": shortest side, "crop": side, "interpolation": "bilinear"}
    (kept for readers of earlier exports; ``preprocess_of`` spells every step out)."""
    crop, resize = cfg.pipeline_size
    return {"resize": resize, "crop": crop, "interpolation": "bilinear"}


def preprocess_of(cfg: Config, model: Model) -> Preprocess:
    """The test-time preprocessing of a checkpoint's model (its config's sizes, its backbone's normalisation)."""
    crop, resize = cfg.pipeline_size
    return Preprocess.of(resize, crop, model.backbone.mean, model.backbone.std)


def provenance(loaded: LoadedModel, checkpoint: str) -> dict[str, Any]:
    """Where an export's weights came from: the checkpoint, its step and weights, the data set it was trained on and
    the initial weights it started from (not those of timm's pretrained tag, which the fine-tuning replaced)."""
    cfg, ckpt = loaded.config, loaded.checkpoint
    assert cfg is not None and ckpt is not None  # a checkpoint, not an export folder
    return {
        "exported_by": f"ramstrans {__version__}",
        "checkpoint": Path(checkpoint).name,
        "step": int(ckpt["step"]),
        "weights": loaded.weights,
        "dataset": cfg.data.dataset,
        "backbone": cfg.model.backbone,
        "initial_weights": cfg.model.pretrained or "random",
        "train_seed": cfg.train.seed,
    }


def config_record(cfg: Config) -> dict[str, Any]:
    """The resolved config as a plain dict (what ``config_from_dict`` reads back)."""
    return asdict(cfg)
