#!/usr/bin/env python
"""Ship a pretext-pretrained checkpoint as `pretrained: synthetic-tiny`, with its accuracy on a fixed pretext batch.

python tools/ship_synthetic_tiny.py runs/pretrain_synthetic/checkpoint.pth "<command>" <minutes>
"""
import sys

import torch

from ramstrans.checkpoint import load_checkpoint, model_from_checkpoint
from ramstrans.data import Transform, eval_loader
from ramstrans.data.pretext import PretextDataset
from ramstrans.engine import evaluate
from ramstrans.export import export_single_scale

CHECK = {"seed": 424242, "num_images": 512, "image_size": 160, "resize": 144}  # the batch tests regenerate

if __name__ == "__main__":
    ckpt, command, minutes = sys.argv[1], sys.argv[2], float(sys.argv[3])
    state = load_checkpoint(ckpt)
    model, cfg, names = model_from_checkpoint(state)
    model.eval()
    t = Transform(train=False, crop=cfg.model.img_size, resize=CHECK["resize"], mean=model.backbone.mean,
                  std=model.backbone.std)
    ds = PretextDataset(CHECK["image_size"], CHECK["seed"], t, length=CHECK["num_images"])
    res, _ = evaluate(model, eval_loader(ds, 128), device=torch.device("cpu"), num_classes=len(names))
    step = int(state["step"])
    check = {**CHECK, "top1": res["top1"], "loc_miou": res["loc_miou"]}
    out = export_single_scale(ckpt, "ramstrans/weights/synthetic-tiny.safetensors", {
        "pretext_check": check, "command": command, "images_seen": step * cfg.train.batch_size,
        "minutes": minutes})
    print(out, check)
