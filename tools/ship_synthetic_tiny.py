#!/usr/bin/env python
"""Ship a pretext-pretrained checkpoint as `pretrained: synthetic-tiny`, with its accuracy on a fixed pretext batch.

python tools/ship_synthetic_tiny.py runs/pretrain_synthetic/checkpoint.pth "<command>" <minutes>
"""

import json
import sys

import torch
from safetensors.torch import save_file

from ramstrans.checkpoint import load_checkpoint
from ramstrans.data import Transform, eval_loader
from ramstrans.data.synthetic.pretext import PretextDataset
from ramstrans.inference.evaluate import evaluate
from ramstrans.models.build import model_from_checkpoint

CHECK = {"seed": 424242, "num_images": 512, "image_size": 160, "resize": 144}  # the batch tests regenerate
OUT = "ramstrans/weights/synthetic-tiny"  # .safetensors (a timm state dict) and .json, read by load_pretrained

if __name__ == "__main__":
    ckpt, command, minutes = sys.argv[1], sys.argv[2], float(sys.argv[3])
    state = load_checkpoint(ckpt)
    model, cfg, names = model_from_checkpoint(state)
    model.eval()
    t = Transform(
        train=False, crop=cfg.model.img_size, resize=CHECK["resize"], mean=model.backbone.mean, std=model.backbone.std
    )
    ds = PretextDataset(CHECK["image_size"], CHECK["seed"], t, length=CHECK["num_images"])
    res, _ = evaluate(model, eval_loader(ds, 128), device=torch.device("cpu"), num_classes=len(names))
    check = {**CHECK, "top1": res["top1"], "loc_miou": res["loc_miou"]}
    save_file({k: v.contiguous() for k, v in model.backbone.vit.state_dict().items()}, f"{OUT}.safetensors")
    meta = {
        "architecture": cfg.model.backbone,
        "timm_kwargs": dict(cfg.model.backbone_kwargs),
        "img_size": cfg.model.img_size,
        "num_classes": len(names),
        "mean": list(model.backbone.mean),
        "std": list(model.backbone.std),
        "class_names": names,
        "source_checkpoint": ckpt,
        "step": int(state["step"]),
        "pretext_check": check,
        "command": command,
        "images_seen": int(state["step"]) * cfg.train.batch_size,
        "minutes": minutes,
    }
    with open(f"{OUT}.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    print(OUT, check)
