"""``ramstrans export --format timm``: timm's own ``save_for_hf`` (``config.json`` + ``model.safetensors``):
``timm.create_model("local-dir:PATH", pretrained=True)`` gives the single-scale model with its class names
(``label_names``) and test transform (``input_size``, ``crop_pct`` giving our resize, ``interpolation``, ``mean``,
``std``). Beside them ``ramstrans.json`` (the model type, zoom settings, saliency and test-time head) and, with more
than one scale and a class token, ``zoom_cls_tokens.safetensors``: what ramstrans needs to rebuild the model from the
folder (``inference.load.model_from_export``). A classifier (a teacher) is written the same way. A student with a
distillation token is written as timm's distilled ViT (architecture ``deit_*_distilled_*`` with the student's own
arguments), whose timm forward is the mean of the two heads. A timm folder does not carry the zoom gate.
"""

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any, cast

from safetensors.torch import save_file

from ramstrans.config import Config
from ramstrans.errors import UsageError
from ramstrans.export.base import PAPER_IDS, checked_out, preprocess_of, provenance, transform_info
from ramstrans.inference.load import EXPORT_INFO, ZOOM_TOKENS, load_model
from ramstrans.models import Model, RAMSTrans, ViTBackbone
from ramstrans.runtime.files import full_disk_error, is_full_disk, write_text_atomic

__all__ = ["export_timm", "TARGET"]


def _crop_pct(crop: int, resize: int) -> float:
    """timm's crop_pct for which ``floor(crop / crop_pct)``, the side its test transform resizes to, is ``resize``."""
    pct = crop / resize
    while math.floor(crop / pct) < resize:  # float rounding may land just below
        pct = math.nextafter(pct, 0.0)
    return pct


def export_timm(checkpoint: str, out: str, scales: int = 1, weights: str = "auto", overwrite: bool = False) -> Path:
    """Write a checkpoint's model as a timm folder (see the module doc).

    Args:
        checkpoint: ramstrans checkpoint.
        out: the folder to write (new or empty, or replaced whole with ``overwrite``).
        scales: 1, or the number of scales ramstrans should rebuild from the folder (timm always sees scale 1).
        weights: "auto" (EMA weights when the checkpoint has them), "raw" or "ema".
        overwrite: replace ``out`` if it holds files.

    Returns:
        The folder.
    """
    loaded = load_model(checkpoint, weights, gate=False)
    ckpt, cfg = loaded.checkpoint_dict("ramstrans export"), loaded.run_config("ramstrans export")
    model, names = loaded.torch_model("ramstrans export"), loaded.class_names
    folder = checked_out(out, scales, model, checkpoint, overwrite)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {out} is a file; a timm export is a folder")
    if cfg.model.attn_window or cfg.model.ffn != "mlp":
        raise UsageError(
            f"checkpoint {checkpoint} uses model.attn_window / model.ffn, which timm's own ViT does not "
            "have (a timm folder would load another function): export it with --format onnx"
        )
    if cfg.model.scale_sizes or cfg.model.zoom_source != "input":
        raise UsageError(
            f"checkpoint {checkpoint} runs its scales at their own sizes or zooms from a larger source "
            "(model.scale_sizes / model.zoom_source), which a timm folder cannot record (timm sees one model at one "
            "input size): export it with --format onnx, whose graph does the downsample and the crop"
        )
    staging = folder.with_name(f".{folder.name}.tmp")  # written whole, then renamed
    if staging.exists():  # left by a killed export: start empty
        shutil.rmtree(staging)
    info = {
        "format": "ramstrans-export",
        "model_type": cfg.model.type,
        "num_scales": scales,
        "class_names": names,
        "test_transform": transform_info(cfg),
        "preprocess": preprocess_of(cfg, model).to_meta(),
        "provenance": provenance(loaded, checkpoint),
        "source_checkpoint": str(checkpoint),
        "step": int(ckpt["step"]),
        "weights": loaded.weights,
    }
    try:
        _write_timm_folder(staging, model, cfg, info)
    except Exception as e:
        shutil.rmtree(staging, ignore_errors=True)
        if is_full_disk(e):
            raise full_disk_error(folder) from e
        raise
    if folder.exists():
        shutil.rmtree(folder)  # empty, or the user's --overwrite
    staging.rename(folder)
    return folder


def _write_timm_folder(staging: Path, model: Model, cfg: Config, info: dict[str, object]) -> None:
    """timm's ``save_for_hf`` files, the zoom tokens of ``info["num_scales"]`` scales and ``ramstrans.json``."""
    from timm.models import save_for_hf

    data_config = {
        "input_size": (model.backbone.in_chans, *model.backbone.img_size),
        "crop_pct": _crop_pct(cfg.model.img_size, cfg.data.resize),
        "crop_mode": "center",
        "interpolation": "bilinear",
        "mean": model.backbone.mean,
        "std": model.backbone.std,
    }
    model_config: dict[str, object] = {"label_names": info["class_names"], "pretrained_cfg": _origin(info)}
    bb = model.backbone
    if isinstance(bb, ViTBackbone) and bb.has_dist_token:  # timm rebuilds it as its distilled ViT
        model_config["pretrained_cfg"] = {**_origin(info), "architecture": _distilled_architecture(bb.patch_size)}
    save_for_hf(
        model.backbone.timm_model,
        str(staging),
        model_config=model_config,
        safe_serialization=True,
        data_config=data_config,
    )
    if isinstance(model, RAMSTrans):  # the settings the reader builds the zoom with (the rollout's: the config's)
        info.update(alpha=model.alpha, residual=cfg.model.residual, rollout_rows=cfg.model.rollout_rows)
        info.update(eval_head=model.eval_head, saliency=model.backbone.saliency)
    info["temperature"] = float(model.temperature)  # a fitted one (eval --calibrate), applied when loaded back
    scales = cast(int, info["num_scales"])
    # checked_out allows more than one scale only to RAMS-Trans; without a class token the scales share every weight
    if scales > 1 and isinstance(bb, ViTBackbone) and bb.has_class_token:
        save_file(
            {
                **{str(i): t.detach().contiguous() for i, t in enumerate(bb.zoom_cls_tokens[: scales - 1])},
                **{f"dist{i}": t.detach().contiguous() for i, t in enumerate(bb.zoom_dist_tokens[: scales - 1])},
            },
            str(staging / ZOOM_TOKENS),
        )
    write_text_atomic(staging / EXPORT_INFO, json.dumps(info, indent=1))


def _origin(info: dict[str, object]) -> dict[str, object]:
    """The ``pretrained_cfg`` fields that say where these weights come from: they replace those the backbone
    inherited from timm's pretrained tag (e.g. ``augreg_in21k_ft_in1k`` and its licence), which the fine-tuning
    replaced; the full record is ``ramstrans.json``'s ``provenance``."""
    origin = cast(dict, info["provenance"])
    return {
        "tag": f"ramstrans_{origin['dataset']}",
        "license": "unspecified: set by whoever trained it (the training data's and initial weights' terms apply)",
        "description": f"RAMS-Trans fine-tuned by {origin['exported_by']} on {origin['dataset']} from "
        f"{origin['initial_weights']} ({origin['backbone']}), step {origin['step']}, {origin['weights']} weights",
        "origin_url": None,
        "paper_ids": PAPER_IDS,
        "notes": None,
    }


def _distilled_architecture(patch_size: tuple[int, int]) -> str:
    """A timm distilled-ViT entry point of this patch size (the student's own arguments are stored beside it)."""
    import timm

    names = timm.list_models(f"deit_*_distilled_patch{patch_size[0]}_*")
    if not names:
        raise UsageError(f"timm has no distilled ViT with {patch_size[0]}-pixel patches to export this student as")
    return names[0]


class TimmTarget:
    """``ramstrans export --format timm`` (its entry in ``ramstrans.registry.EXPORT_TARGETS``): no options of its own;
    ``inference.load.load_export_folder`` reads what it writes."""

    def add_arguments(self, group: Any) -> None:
        """None: a timm folder holds float32 weights."""

    def write(
        self, source: str, out: str, scales: int, weights: str, overwrite: bool, options: argparse.Namespace
    ) -> Path:
        """``export_timm``."""
        return export_timm(source, out, scales, weights, overwrite=overwrite)

    def wrote(self, path: Path, scales: int, options: argparse.Namespace) -> str:
        """What was written, for the closing sentence."""
        said = (
            f"a timm folder to {path}: timm.create_model('local-dir:{path}', pretrained=True) loads the single-scale "
            "model"
        )
        return said + (f"; ramstrans predict {path} runs {scales} scales" if scales > 1 else "")


TARGET = TimmTarget()
