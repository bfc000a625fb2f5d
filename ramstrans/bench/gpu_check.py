"""``ramstrans bench gpu --train-check``: a short training check on the device, pass / fail per item.

The demo config scaled to ViT-B/16 at 448 px (random weights, 200 classes' head on the synthetic birds' 10, AMP on
CUDA) trains 50 steps with a checkpoint at step 25, is resumed from its checkpoint and extended to 60 steps, and is
evaluated with adaptive zoom; ``--tiny`` runs the same items with the test suite's 2-block ViT at 64 px for a few steps.
Each item records pass / fail and what it saw, into a temporary run folder (removed after).
"""

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ramstrans.registry import EvalRequest

__all__ = ["train_check"]

FULL_SETS = [
    "model.backbone=vit_base_patch16_224",
    "model.img_size=448",
    "model.pretrained=null",
    "model.backbone_kwargs={}",
    "data.resize=512",
    "train.batch_size=16",
    "train.eval_batch_size=32",
    "train.warmup_steps=5",
    "train.amp=true",
]
TINY_SETS = [
    "model.backbone=vit_tiny_patch16_224",
    "model.img_size=64",
    "model.pretrained=null",
    "model.backbone_kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
    "data.resize=72",
    "data.synthetic.num_classes=3",
    "data.synthetic.train_per_class=6",
    "data.synthetic.test_per_class=3",
    "data.synthetic.image_size=80",
    "train.batch_size=4",
    "train.eval_batch_size=8",
    "train.warmup_steps=1",
]


def train_check(device: torch.device, tiny: bool = False) -> dict[str, Any]:
    """Train, checkpoint, resume and extend, evaluate adaptive; returns {"items": {name: {"pass", ...}}, "pass"}."""
    from ramstrans.inference.evaluate import run_eval
    from ramstrans.training.run import resolve_training, run_training

    steps, more = (4, 6) if tiny else (50, 60)
    items: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ramstrans-gpu-check-") as tmp:
        run = Path(tmp) / "run"
        sets = [
            *(TINY_SETS if tiny else FULL_SETS),
            f"train.device={device.type}",
            f"train.steps={steps}",
            f"train.ckpt_every={steps // 2}",
            "data.num_workers=0" if tiny else "data.num_workers=4",
            f"train.output_dir={run}",
        ]
        started = time.perf_counter()
        cfg, _ = resolve_training("synthetic_cpu", sets, None)
        run_training(cfg, show_progress=False)
        items["train"] = {
            "pass": (run / "checkpoint.pth").is_file(),
            "steps": steps,
            "seconds": round(time.perf_counter() - started, 1),
        }
        cfg, ckpt = resolve_training(None, [f"train.steps={more}"], str(run / "checkpoint.pth"))
        run_training(cfg, resume=ckpt, show_progress=False)
        step = int(torch.load(run / "checkpoint.pth", weights_only=False, map_location="cpu")["step"])
        items["resume_and_extend"] = {"pass": step == more, "final_step": step}
        final = str(run / "checkpoint.pth")
        request = EvalRequest(final, device=device.type, num_workers=0)
        r: dict[str, Any] = run_eval(request, scales="auto", show_progress=False)
        top1 = float(r["top1"])
        items["eval_adaptive"] = {
            "pass": math.isfinite(top1) and r["images"] > 0,
            "top1": top1,
            "passes_per_image": r["passes_per_image"],
        }
    return {"items": items, "pass": all(item["pass"] for item in items.values())}
