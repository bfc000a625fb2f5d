"""``ramstrans bench transmix``: the per-step cost of TransMix."""

from collections.abc import Callable
from typing import Any, cast

import torch

from ramstrans.bench.timing import interleaved
from ramstrans.losses import MultiScaleLoss
from ramstrans.models import RAMSTrans, create_model
from ramstrans.training.mixing import Mixer

__all__ = ["bench_transmix"]


def bench_transmix(
    backbone: str = "vit_base_patch16_224",
    img_size: int = 448,
    batch: int = 2,
    repeats: int = 5,
    device: str = "cpu",
    depth: int = 0,
) -> dict[str, object]:
    """Per-step cost of TransMix (mixing, λ at every scale, soft targets) against a two-scale step without mixing
    (goal <= 1%). CutMix is forced so that the attention path is always the one measured."""
    dev = torch.device(device)
    kw: dict[str, Any] = {"depth": depth} if depth else {}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    model = cast(RAMSTrans, create_model(backbone, 200, img_size=img_size, num_scales=2, **kw)).to(dev).train()
    bb = model.backbone
    mixer = Mixer(num_classes=200, image_size=bb.img_size, grid_size=bb.grid_size, mixup_alpha=0.0)
    criterion = MultiScaleLoss()
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    y = torch.randint(0, 200, (batch,), device=dev)
    with torch.no_grad(), amp:
        out = model.forward_multiscale(x)

    def step(mix: bool) -> Callable[[], None]:
        def run() -> None:
            with amp:
                if mix:
                    xm, targets_for = mixer(x, y, 0)
                    o = model.forward_multiscale(xm)
                    targets = targets_for(o)[0]
                else:
                    o, targets = model.forward_multiscale(x), y
                loss = sum(criterion(xm if mix else x, o, targets).values())
            loss.backward()
            model.zero_grad(set_to_none=True)

        return run

    def mixing_only() -> object:
        xm, targets_for = mixer(x, y, 0)
        return targets_for(out)

    t = interleaved(
        {"step_plain": step(False), "step_transmix": step(True), "transmix_work": mixing_only}, repeats, dev
    )
    return {
        "setting": f"{backbone}{f' depth {depth}' if depth else ''} @ {img_size}, batch {batch}, {device}, "
        f"median of {repeats}",
        "seconds": {k: round(v, 6) for k, v in t.items()},
        "transmix_work_over_step": t["transmix_work"] / t["step_plain"],
        "step_ratio": t["step_transmix"] / t["step_plain"],
    }
