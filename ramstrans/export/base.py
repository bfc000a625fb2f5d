"""What every export target shares: the output check and the test transform it records."""

from pathlib import Path
from typing import Any

from ramstrans.config import Config
from ramstrans.errors import UsageError
from ramstrans.models import Model
from ramstrans.runtime.files import check_output

__all__ = ["checked_out", "transform_info"]


def checked_out(out: str, scales: int, model: Model, checkpoint: str, overwrite: bool) -> Path:
    """The output path of an export of ``scales`` scales: never the checkpoint, replaced only with ``overwrite``."""
    if not 1 <= scales <= model.num_scales:
        raise UsageError(f"the model has {model.num_scales} scale(s); cannot export {scales}")
    return check_output(out, [checkpoint], overwrite, "--out")


def transform_info(cfg: Config) -> dict[str, Any]:
    """The test transform an export records: {"resize": shortest side, "crop": side, "interpolation": "bilinear"}."""
    return {"resize": cfg.data.resize, "crop": cfg.model.img_size, "interpolation": "bilinear"}
