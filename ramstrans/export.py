"""``ramstrans export``: a trained model as a timm folder or an ONNX file, and the way back from an exported folder.

- ``timm``: timm's own ``save_for_hf`` (``config.json`` + ``model.safetensors``): ``timm.create_model("local-dir:PATH",
  pretrained=True)`` gives the single-scale model with its class names (``label_names``) and test transform
  (``input_size``, ``crop_pct`` giving our resize, ``interpolation``, ``mean``, ``std``). Beside them ``ramstrans.json``
  (the model type, zoom settings and test-time head) and, with more than one scale, ``zoom_cls_tokens.safetensors``:
  what ramstrans needs to rebuild the model from the folder (``model_from_export``). A classifier (a teacher) is
  written the same way. A student with a distillation token is written as timm's distilled ViT (architecture
  ``deit_*_distilled_*`` with the student's own arguments), whose timm forward is the mean of the two heads.
- ``onnx``: the single-scale model (``images`` -> ``logits``), or the fused multi-scale model (``images`` ->
  ``logits`` (B, S, K) per scale, ``probs`` (B, K) their mean softmax, ``boxes`` (B, 4) scale 1's proposal, and for a
  checkpoint with a fitted zoom gate ``zoom_confidence`` (B,), zoomed where below the metadata's ``zoom_threshold``),
  proposal included; the batch dimension is dynamic. A timm folder does not carry the zoom gate.
"""

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .checkpoint import load_checkpoint, model_from_checkpoint, weights_used
from .config import Config
from .errors import CheckpointError
from .files import atomic_write, check_output, full_disk_error, is_full_disk, write_text_atomic
from .models import Classifier, Model, NetBackbone, RAMSTrans

__all__ = ["export_timm", "export_onnx", "write_onnx", "model_from_export", "TestTransform", "EXPORT_INFO"]

EXPORT_INFO = "ramstrans.json"
ZOOM_TOKENS = "zoom_cls_tokens.safetensors"
TestTransform = dict[str, object]  # {"resize": shortest side, "crop": side, "interpolation": "bilinear"}


def _crop_pct(crop: int, resize: int) -> float:
    """timm's crop_pct for which ``floor(crop / crop_pct)``, the side its test transform resizes to, is ``resize``."""
    pct = crop / resize
    while math.floor(crop / pct) < resize:  # float rounding may land just below
        pct = math.nextafter(pct, 0.0)
    return pct


def _checked_out(out: str, scales: int, model: Model, checkpoint: str, overwrite: bool) -> Path:
    if not 1 <= scales <= model.num_scales:
        raise ValueError(f"the model has {model.num_scales} scale(s); cannot export {scales}")
    return check_output(out, [checkpoint], overwrite, "--out")


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
    ckpt = load_checkpoint(checkpoint)
    model, cfg, names = model_from_checkpoint(ckpt, weights=weights, origin=f"checkpoint {checkpoint}")
    folder = _checked_out(out, scales, model, checkpoint, overwrite)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {out} is a file; a timm export is a folder")
    if cfg.model.attn_window or cfg.model.ffn != "mlp":
        raise ValueError(
            f"checkpoint {checkpoint} uses model.attn_window / model.ffn, which timm's own ViT does not "
            "have (a timm folder would load another function): export it with --format onnx"
        )
    staging = folder.with_name(f".{folder.name}.tmp")  # written whole, then renamed
    if staging.exists():  # left by a killed export: start empty
        shutil.rmtree(staging)
    info = {
        "format": "ramstrans-export",
        "model_type": cfg.model.type,
        "num_scales": scales,
        "class_names": names,
        "test_transform": _transform(cfg),
        "source_checkpoint": str(checkpoint),
        "step": int(ckpt["step"]),
        "weights": weights_used(ckpt, weights),
    }
    try:
        _write_timm_folder(staging, model, cfg, info)
    except Exception as e:
        shutil.rmtree(staging, ignore_errors=True)
        if is_full_disk(e):
            raise full_disk_error(folder) from None
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
    model_config: dict[str, object] = {"label_names": info["class_names"]}
    if model.backbone.has_dist_token:  # timm rebuilds it as its distilled ViT
        model_config["pretrained_cfg"] = {"architecture": _distilled_architecture(model.backbone.patch_size)}
    save_for_hf(
        model.backbone.timm_model,
        str(staging),
        model_config=model_config,
        safe_serialization=True,
        data_config=data_config,
    )
    if isinstance(model, RAMSTrans):
        info.update(
            alpha=model.alpha, residual=model.residual, rollout_rows=model.rollout_rows, eval_head=model.eval_head
        )
    scales = int(info["num_scales"])
    if scales > 1:
        bb = model.backbone
        save_file(
            {
                **{str(i): t.detach().contiguous() for i, t in enumerate(bb.zoom_cls_tokens[: scales - 1])},
                **{f"dist{i}": t.detach().contiguous() for i, t in enumerate(bb.zoom_dist_tokens[: scales - 1])},
            },
            str(staging / ZOOM_TOKENS),
        )
    write_text_atomic(staging / EXPORT_INFO, json.dumps(info, indent=1))


def _distilled_architecture(patch_size: tuple[int, int]) -> str:
    """A timm distilled-ViT entry point of this patch size (the student's own arguments are stored beside it)."""
    import timm

    names = timm.list_models(f"deit_*_distilled_patch{patch_size[0]}_*")
    if not names:
        raise ValueError(f"timm has no distilled ViT with {patch_size[0]}-pixel patches to export this student as")
    return names[0]


def model_from_export(folder: str) -> tuple[Model, list[str], TestTransform]:
    """The model (eval mode) rebuilt from an exported timm folder, its class names and its test transform. A plain
    timm ViT folder without ``ramstrans.json`` gives the single-scale RAMSTrans; any other timm model a Classifier.

    Raises:
        CheckpointError: not a timm folder (no config.json) or one it cannot load.
    """
    import timm

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not an exported model folder (it has no config.json)")
    try:
        vit = timm.create_model(f"local-dir:{path}", pretrained=True)
    except Exception as e:  # timm's own message: missing weights, unknown architecture
        raise CheckpointError(f"timm cannot load the exported folder {path} ({type(e).__name__}: {e})") from None
    info = _read_info(path / EXPORT_INFO) if (path / EXPORT_INFO).is_file() else {}
    scales = int(info.get("num_scales", 1))
    cfg = vit.pretrained_cfg
    if info.get("model_type") == "classifier" or not isinstance(vit, VisionTransformer):
        model = Classifier(
            backbone=NetBackbone(net=vit, img_size=tuple(cfg["input_size"][1:]), in_chans=int(cfg["input_size"][0]))
        )
    else:
        model = RAMSTrans(
            backbone=vit,
            num_scales=scales,
            alpha=info.get("alpha", 1.3),
            residual=info.get("residual", 1.0),
            rollout_rows=info.get("rollout_rows", "cls"),
            eval_head=info.get("eval_head", "mean"),
        )
    if scales > 1:
        tokens = load_file(str(path / ZOOM_TOKENS))
        with torch.no_grad():
            for i, token in enumerate(model.backbone.zoom_cls_tokens):
                token.copy_(tokens[str(i)])
            for i, token in enumerate(model.backbone.zoom_dist_tokens):
                token.copy_(tokens[f"dist{i}"])
    names = list(info.get("class_names") or cfg.get("label_names") or [str(k) for k in range(vit.num_classes)])
    crop = int(cfg["input_size"][-1])
    transform = info.get("test_transform") or {
        "resize": math.floor(crop / cfg.get("crop_pct", 0.875)),
        "crop": crop,
        "interpolation": cfg.get("interpolation", "bilinear"),
    }
    return model.eval(), names, transform


def _read_info(file: Path) -> dict[str, object]:
    """An export folder's ``ramstrans.json``.

    Raises:
        CheckpointError: not a JSON object (a damaged file), naming it.
    """
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is damaged (not JSON: {str(e).splitlines()[0][:80]})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{file} is damaged (not a JSON object)")
    return info


class _Fused(nn.Module):
    """The multi-scale test-time model as one graph: per-scale logits, their mean softmax, scale 1's boxes, and with a
    fitted zoom gate scale 1's zoom confidence (1 − the gate's probability that the zoom changes the answer)."""

    def __init__(self, model: RAMSTrans, scales: int) -> None:
        super().__init__()
        self.model, self.scales = model, scales

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model.forward_multiscale(images, self.scales)
        logits = torch.stack(self.model.head_logits(out), dim=1)
        probs = logits.float().softmax(-1)
        fused = (logits, probs.mean(1), out.boxes[0])
        if self.model.zoom_gate is None:
            return fused
        return (*fused, self.model.zoom_score(out.features[0], probs[:, 0], "gate"))


def export_onnx(
    checkpoint: str, out: str, scales: int = 1, weights: str = "auto", opset: int = 18, overwrite: bool = False
) -> Path:
    """Write a checkpoint's single-scale or fused multi-scale model as ONNX (see the module doc); the class names and
    the test transform go into the file's metadata.

    Raises:
        ValueError: the onnx exporter is not installed (pip install 'ramstrans[deploy]').
    """
    ckpt = load_checkpoint(checkpoint)
    model, cfg, names = model_from_checkpoint(ckpt, weights=weights, origin=f"checkpoint {checkpoint}")
    path = _checked_out(out, scales, model, checkpoint, overwrite)
    if path.is_dir():
        raise ValueError(f"--out {out} is a folder; an ONNX export is a file such as model.onnx")
    return write_onnx(
        model, path, scales, {"class_names": json.dumps(names), "test_transform": json.dumps(_transform(cfg))}, opset
    )


def write_onnx(model: Model, path: Path, scales: int = 1, meta: dict[str, str] | None = None, opset: int = 18) -> Path:
    """Write ``model`` (single scale, or the fusion of ``scales`` scales) as an ONNX file with a dynamic batch and
    ``meta`` (plus the normalisation and the number of scales) in its metadata.

    Raises:
        ValueError: the onnx exporter is not installed (pip install 'ramstrans[deploy]').
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise ValueError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'ramstrans[deploy]'"
        ) from None
    model.eval()
    module = (model if scales == 1 else _Fused(model, scales)).eval()
    gate = scales > 1 and model.zoom_gate is not None
    outputs = ["logits"] if scales == 1 else ["logits", "probs", "boxes"] + (["zoom_confidence"] if gate else [])
    if gate:  # a client zooms where zoom_confidence < this
        meta = {**(meta or {}), "zoom_on": "gate", "zoom_threshold": str(float(model.zoom_gate.threshold))}
    example = torch.zeros(2, model.backbone.in_chans, *model.backbone.img_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        module,
        (example,),
        input_names=["images"],
        output_names=outputs,
        dynamic_shapes=({0: batch},),
        dynamo=True,
        opset_version=opset,
        verbose=False,
    )
    proto = program.model_proto
    onnx.helper.set_model_props(
        proto,
        {
            "mean": json.dumps(list(model.backbone.mean)),
            "num_scales": str(scales),
            "std": json.dumps(list(model.backbone.std)),
            **(meta or {}),
        },
    )
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    return path


def _transform(cfg: Config) -> TestTransform:
    return {"resize": cfg.data.resize, "crop": cfg.model.img_size, "interpolation": "bilinear"}
