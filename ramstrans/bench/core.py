"""``ramstrans bench core``: the model's speed against timm's, with the same weights.

Measured:
- single-scale forward / timm forward (goal <= 1.03);
- DPPM (rollout + threshold + components + boxes + zoom) / single-scale forward (goal <= 0.05, ViT-B/16 at 448);
- two-scale train step (forward_multiscale + loss + backward) / two fused timm train steps (goal <= 1.15);
- the two attention-capture designs: hooks recomputing softmax(QK^T) beside fused SDPA (ours) against unfused
  attention with the probabilities kept, by time and by bytes saved for backward.
"""

import platform
from collections.abc import Callable
from typing import Any, cast

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ramstrans.bench.timing import interleaved, saved_bytes
from ramstrans.models import (
    RAMSTrans,
    attention_rollout,
    component_boxes,
    create_model,
    crop_and_zoom,
    largest_component,
    threshold_rollout,
)
from ramstrans.models.backbones.vit import ViTBackbone

__all__ = ["bench_core"]


def bench_core(
    backbone: str = "vit_base_patch16_224",
    img_size: int = 448,
    batch: int = 2,
    repeats: int = 5,
    device: str = "cpu",
    depth: int = 0,
) -> dict[str, object]:
    """Run the core benchmark and return its numbers (also printed by the CLI).

    Args:
        backbone: timm model name.
        img_size: input size.
        batch: images per step.
        repeats: timed repeats per measurement (medians reported).
        device: "cpu" or "cuda".
        depth: override the backbone depth (0 keeps the model's own).
    """
    dev = torch.device(device)
    kw = {"depth": depth} if depth else {}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    model, ref, unfused, kept = _models(backbone, img_size, kw, dev)
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    y = torch.randint(0, 200, (batch,), device=dev)
    infer = _time_inference(model, ref, x, amp, repeats, dev)
    model.train(), ref.train(), unfused.train()
    train, mem_hooks, mem_unfused = _time_training(model, ref, unfused, kept, x, y, amp, repeats, dev)
    return {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""),
        "versions": f"torch {torch.__version__}, timm {timm.__version__}",
        "setting": f"{backbone}{f' depth {depth}' if depth else ''} @ {img_size}, batch {batch}, {device}"
        + (" bf16" if dev.type == "cuda" else " fp32")
        + f", median of {repeats}",
        "seconds": {k: round(v, 5) for k, v in {**infer, **train}.items()},
        "forward_ratio": infer["ours_forward"] / infer["timm_forward"],
        "dppm_over_forward": infer["dppm"] / infer["ours_forward"],
        "capture_overhead": infer["capture_forward"] / infer["ours_forward"] - 1,
        "train_ratio": train["ours_2scale_step"] / train["timm_2_steps"],
        "capture_step_hooks_over_unfused": train["capture_hooks_step"] / train["capture_unfused_step"],
        "saved_for_backward_MiB": {"hooks": mem_hooks / 2**20, "unfused": mem_unfused / 2**20},
    }


def _models(
    backbone: str, img_size: int, kw: dict[str, Any], dev: torch.device
) -> tuple[RAMSTrans, nn.Module, nn.Module, list[torch.Tensor]]:
    """The RAMS-Trans model, timm's model with the same weights, and an unfused timm copy whose blocks keep their
    attention probabilities in the returned list (design (b))."""
    model = cast(RAMSTrans, create_model(backbone, 200, img_size=img_size, num_scales=2, **kw)).to(dev)
    ref = timm.create_model(backbone, img_size=img_size, num_classes=200, **kw).to(dev)
    weights = cast(ViTBackbone, model.backbone).vit.state_dict()
    ref.load_state_dict(weights)
    unfused = timm.create_model(backbone, img_size=img_size, num_classes=200, **kw).to(dev)
    unfused.load_state_dict(weights)
    kept: list[torch.Tensor] = []
    for blk in cast(Any, unfused).blocks:  # design (b): unfused attention, probabilities taken at attn_drop's input
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda m, a, o: kept.append(a[0].detach().mean(1)))
    return model, ref, unfused, kept


def _time_inference(
    model: RAMSTrans, ref: nn.Module, x: torch.Tensor, amp: Any, repeats: int, dev: torch.device
) -> dict[str, float]:
    """Median seconds of our forward, timm's, the capturing forward and the proposal (DPPM), in eval mode."""
    bb = cast(ViTBackbone, model.backbone)
    H, W = bb.img_size
    with torch.no_grad(), amp:
        model.eval(), ref.eval()
        attns = bb.forward_features(x, capture="all").attentions

        def dppm() -> torch.Tensor:
            g = attention_rollout(attns, bb.grid_size, bb.residual, bb.rollout_rows)
            boxes = component_boxes(largest_component(threshold_rollout(g, model.alpha)), bb.patch_size, (H, W))
            return crop_and_zoom(x, boxes, (H, W))

        return interleaved(
            {
                "ours_forward": lambda: model(x),
                "timm_forward": lambda: ref(x),
                "capture_forward": lambda: bb.forward_features(x, capture="all"),
                "dppm": dppm,
            },
            repeats,
            dev,
        )


def _time_training(
    model: RAMSTrans,
    ref: nn.Module,
    unfused: nn.Module,
    kept: list[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    amp: Any,
    repeats: int,
    dev: torch.device,
) -> tuple[dict[str, float], int, int]:
    """Median seconds of the train steps (ours at two scales, timm's twice, the two capture designs), and the bytes
    the two capture designs save for backward."""
    bb = cast(ViTBackbone, model.backbone)

    def ours_step() -> None:
        with amp:
            out = model.forward_multiscale(x)
            loss = torch.stack([F.cross_entropy(lg.float(), y) for lg in out.logits]).sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    def timm_two_steps() -> None:
        for _ in range(2):
            with amp:
                loss = F.cross_entropy(ref(x).float(), y)
            loss.backward()
            ref.zero_grad(set_to_none=True)

    def capture_step(net: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            with amp:
                loss = net().float().logsumexp(-1).sum()
            loss.backward()
            kept.clear()

        return step

    ours_capture = lambda: bb.forward_head(bb.forward_features(x, capture="all").tokens)  # noqa: E731
    train = interleaved(
        {
            "ours_2scale_step": ours_step,
            "timm_2_steps": timm_two_steps,
            "capture_hooks_step": capture_step(ours_capture),
            "capture_unfused_step": capture_step(lambda: unfused(x)),
        },
        repeats,
        dev,
    )
    with amp:
        mem_hooks = saved_bytes(ours_capture)
        mem_unfused = saved_bytes(lambda: unfused(x))
        kept.clear()
    return train, mem_hooks, mem_unfused
