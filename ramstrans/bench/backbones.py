"""``ramstrans bench backbones``: RAMS-Trans on three backbone families on the demo, measured on validation.

Rows, trained with equal steps (the demo's 450) on the demo's training images less a stratified 20% validation split,
and scored on that split:
- ``vit``: the demo itself (``synthetic-tiny``, the ViT pretrained on the pretext stream), rollout saliency: the
  reference;
- ``vit_reg4``: the same ViT with 4 register tokens and DINOv2-reg's ``no_embed_class``, initialised from the same
  ``synthetic-tiny`` weights lifted into that layout (the registers are new, from timm's initialisation), rollout
  saliency;
- ``resnet``: the demo teacher's narrow ResNet-10 (``resnet10t``, 1.3 M parameters like the ViT) from random
  initialisation with the teacher's recipe (lr 0.002; the demo's pretrained weights exist only for the ViT), activation
  saliency (SCDA's: its last stage ends in a ReLU, so Σ|f| is SCDA's own sum).

A ConvNeXt (``convnext_atto`` at dims 24-48-96-192) from random initialisation stayed at chance in 450 steps at lr
0.0005 and 0.002 (one seed each, by hand), so the CNN row is the ResNet. Per row and seed: single-scale and fused
top-1, and the localization of scale 1's proposal against the object boxes (mIoU). What the rows can show: whether the
zoom works (fused against single) on each family under equal steps; what they cannot: which family is better when each
starts from weights pretrained at scale, as users start.
"""

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from ramstrans.bench.demo import cached_scores, mean_spread, resolved, run_or_reuse
from ramstrans.runtime.files import write_text_atomic

__all__ = ["bench_backbones", "ROWS"]

ROWS: dict[str, list[str]] = {
    "vit": [],
    "vit_reg4": ["model.backbone_kwargs={embed_dim: 128, depth: 6, num_heads: 4, reg_tokens: 4, no_embed_class: true}"],
    "resnet": [
        "model.backbone=resnet10t",
        "model.backbone_kwargs={channels: [32, 64, 128, 256]}",
        "model.saliency=activation",
        "model.pretrained=null",
        "train.lr=0.002",
    ],
}


def _score(single: dict, fused: dict) -> dict[str, float]:
    """Validation top-1 single and fused, and scale 1's proposal mIoU, from the two evaluations."""
    return {
        "single": float(single["top1"]),
        "fused": float(fused["top1"]),
        "fused_minus_single": float(fused["top1"]) - float(single["top1"]),
        "miou": float(single["loc_miou"]),
        "iou50": float(single["loc_iou50"]),
    }


def bench_backbones(
    seeds: Sequence[int] = (0, 1, 2),
    config: str = "synthetic_cpu",
    out_dir: str = "runs/bench_backbones",
    overrides: Sequence[str] = (),
    rows: Sequence[str] = tuple(ROWS),
) -> dict[str, object]:
    """Train (or reuse) every row's runs and score them on validation; resumable, each run in a folder named after
    its resolved config.

    Args:
        seeds: training seeds.
        config: the demo config the rows differ from.
        out_dir: one sub-folder per run, and ``result.json``.
        overrides: extra ``section.key=value`` settings for every row.
        rows: which of ``ROWS`` to run.

    Returns:
        Per row and metric the mean ± half-range over seeds with the per-seed values, the paired differences
        against the plain ViT, the resolved configs and the run folders.
    """
    import timm
    import torch

    per_row: dict[str, list[dict[str, float]]] = {}
    configs: dict[str, dict] = {}
    started = time.time()
    for name in rows:
        per_row[name] = []
        for seed in seeds:
            sets = ["data.val_fraction=0.2", f"train.seed={seed}", *ROWS[name], *overrides]
            run_dir = run_or_reuse(config, sets, Path(out_dir), f"{name}_seed{seed}")
            configs[str(run_dir)] = resolved(config, sets, run_dir)
            per_row[name].append({"seed": seed, **cached_scores(run_dir, "backbone_eval.json", "val", _score)})
    metrics = ("single", "fused", "fused_minus_single", "miou", "iou50")
    result: dict[str, object] = {
        "command": "ramstrans bench backbones --seeds " + ",".join(map(str, seeds)),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "versions": f"torch {torch.__version__}, timm {timm.__version__}",
        "config": config,
        "split": "val",
        "seeds": list(seeds),
        "overrides": list(overrides),
        "rows": {n: {k: mean_spread([r[k] for r in per_row[n]]) for k in metrics} for n in per_row},
        "minus_vit": {
            n: {k: mean_spread([r[k] - v[k] for r, v in zip(per_row[n], per_row["vit"])]) for k in metrics}
            for n in per_row
            if n != "vit" and "vit" in per_row
        },
        "seconds": round(time.time() - started, 1),
        "resolved_configs": configs,
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out_dir, "result.json"), json.dumps(result, indent=1))
    return result
