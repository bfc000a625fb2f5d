"""``ramstrans export``: the test-time (single-scale) model of a checkpoint as a plain timm state dict, to deploy."""
import json
from pathlib import Path
from typing import Dict, Optional

from safetensors.torch import save_file

from .checkpoint import load_checkpoint, model_from_checkpoint
from .files import atomic_write, write_text_atomic

__all__ = ["export_single_scale"]


def export_single_scale(checkpoint: str, out: str, extra: Optional[Dict[str, object]] = None,
                        weights: str = "auto") -> Path:
    """Write the test-time model of a checkpoint as a plain timm state dict (``.safetensors``) with a JSON sidecar
    (architecture, timm kwargs, class names, normalisation and the test transform: resize of the shortest side,
    center crop, bilinear interpolation): what deployment needs, nothing of training.

    Args:
        checkpoint: ramstrans checkpoint.
        out: the ``.safetensors`` file to write (the sidecar gets the same name with ``.json``).
        extra: more fields for the sidecar.
        weights: "auto" (EMA weights when the checkpoint has them), "raw" or "ema".

    Returns:
        The written ``.safetensors`` path.
    """
    path = Path(out)
    if path.suffix != ".safetensors":
        raise ValueError(f"export target {out} must end in .safetensors")
    ckpt = load_checkpoint(checkpoint)
    model, cfg, names = model_from_checkpoint(ckpt, weights=weights, origin=f"checkpoint {checkpoint}")
    meta = {"architecture": cfg.model.backbone, "timm_kwargs": dict(cfg.model.backbone_kwargs),
            "img_size": cfg.model.img_size, "num_classes": len(names), "mean": list(model.backbone.mean),
            "std": list(model.backbone.std),
            "test_transform": {"resize_shortest_side": cfg.data.resize, "center_crop": cfg.model.img_size,
                               "interpolation": "bilinear"},
            "class_names": names, "source_checkpoint": str(checkpoint), "step": int(ckpt["step"]),
            "weights": "ema" if weights != "raw" and isinstance(ckpt.get("model_ema"), dict) else "raw",
            **(extra or {})}
    state = {k: v.contiguous() for k, v in model.backbone.vit.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
    write_text_atomic(path.with_suffix(".json"), json.dumps(meta, indent=1))
    return path
