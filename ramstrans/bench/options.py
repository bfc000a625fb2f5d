"""``ramstrans bench options``: the distilled transformer's options on the demo data, each against the demo's
RAMS-Trans at an equal budget from the same initialisation, over seeds (validation split; resumable).

Per seed: the demo RAMS-Trans (``synthetic_cpu``) and the same with one option on: sliding-window attention r = 1, 2,
3; the conv feed-forward with the prefix tokens through the MLP or bypassing it; the feature-wise transformation fixed
or learned; embedding dropout 0.3. Then the assembled source system (``seed_system_synthetic_cpu``) and the distilled
student alone (``distill_synthetic_cpu``, soft), both taught by the ``bench distill`` teacher of the seed. Every run is
scored on the validation split, plain and shifted (colour + blur + contrast), single scale and fused, with the
proposal's mIoU and the training time per step; the cost of one training step (median time and the process's peak
resident memory) is probed once per variant in a fresh process.
"""
import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path
from typing import Dict, List, Sequence

from .demo import mean_spread, run_or_reuse

__all__ = ["bench_options", "VARIANTS"]

_DEMO_KWARGS = "{embed_dim: 128, depth: 6, num_heads: 4"
VARIANTS: Dict[str, List[str]] = {
    "base": [],
    "window1": ["model.attn_window=1"],
    "window2": ["model.attn_window=2"],
    "window3": ["model.attn_window=3"],
    "conv_mlp": ["model.ffn=conv", "model.ffn_prefix=mlp"],
    "conv_bypass": ["model.ffn=conv", "model.ffn_prefix=bypass"],
    "fwt_fixed": ["model.fwt=fixed"],
    "fwt_learned": ["model.fwt=learned"],
    "embed_drop": [f"model.backbone_kwargs={_DEMO_KWARGS}, pos_drop_rate: 0.3}}"],
}
SHIFT = ("colour", "blur", "contrast")


def _scores(run_dir: Path) -> Dict[str, float]:
    from ..evaluate import run_eval
    ckpt = str(run_dir / "checkpoint.pth")
    kw = dict(split="val", num_workers=0, show_progress=False)
    single, fused = run_eval(ckpt, scales=1, **kw), run_eval(ckpt, scales=2, **kw)
    shifted = run_eval(ckpt, scales=1, shift=SHIFT, **kw)
    train = json.loads((run_dir / "summary.json").read_text())["train"]
    return {"single": single["top1"], "fused": fused["top1"], "shifted_single": shifted["top1"],
            "loc_miou": single.get("loc_miou", float("nan")), "s_per_step": train["seconds"] / max(train["steps"], 1)}


def _probe(config: str, sets: Sequence[str], steps: int, queue) -> None:
    """In a fresh process: median seconds of a training step at the config's batch size, and the peak RSS."""
    import torch

    from ..config import load_config
    from ..losses import build_criterion
    from ..models import MultiScaleForward, build_model
    cfg = load_config(config, [*sets, "model.pretrained=null", "distill.enabled=false"])
    model = build_model(cfg.model, cfg.data.synthetic.num_classes).train()
    criterion, module = build_criterion(cfg.loss, cfg.model.num_scales), MultiScaleForward(model)
    x = torch.randn(cfg.train.batch_size, 3, cfg.model.img_size, cfg.model.img_size)
    y = torch.arange(cfg.train.batch_size) % cfg.data.synthetic.num_classes
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        sum(criterion(x, module(x), y).values()).backward()
        times.append(time.perf_counter() - t)
    queue.put({"step_s": statistics.median(times[1:]), "peak_rss_mib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024})


def _cost(config: str, sets: Sequence[str], steps: int = 6) -> Dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_probe, args=(config, list(sets), steps, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def bench_options(seeds: Sequence[int] = (0, 1, 2, 3, 4), out_dir: str = "runs/bench_options",
                  teacher_dir: str = "runs/bench_distill") -> Dict[str, object]:
    """The options table (see the module doc). The teachers come from ``bench distill --split val`` (same seeds,
    its ``out_dir``: ``teacher_dir``), trained there if missing.
    """
    base_sets = ["data.val_fraction=0.2"]
    rows: Dict[str, List[Dict[str, float]]] = {}
    for seed in seeds:
        seed_sets = [*base_sets, f"train.seed={seed}"]
        for name, sets in VARIANTS.items():
            run = run_or_reuse("synthetic_cpu", [*seed_sets, *sets], Path(out_dir), f"{name}_seed{seed}")
            rows.setdefault(name, []).append(_scores(run))
        teacher = run_or_reuse("teacher_synthetic_cpu", seed_sets, Path(teacher_dir) / "val", f"teacher_seed{seed}")
        taught = [*seed_sets, "distill.enabled=true", f"distill.teacher={teacher}"]
        for name, config, extra in (("distilled", "distill_synthetic_cpu", ["distill.type=soft"]),
                                    ("assembled", "seed_system_synthetic_cpu", [])):
            folder = Path(teacher_dir) / "val" if name == "distilled" else Path(out_dir)
            run = run_or_reuse(config, [*taught, *extra], folder,
                               f"student_soft_seed{seed}" if name == "distilled" else f"{name}_seed{seed}")
            rows.setdefault(name, []).append(_scores(run))
    result: Dict[str, object] = {"split": "val", "seeds": list(seeds), "shift": list(SHIFT), "variants": VARIANTS}
    for name, res in rows.items():
        result[name] = {k: mean_spread([r[k] for r in res]) for k in res[0]}
        if name != "base":
            result[f"{name}_minus_base"] = {k: mean_spread([r[k] - b[k] for r, b in zip(res, rows["base"])])
                                            for k in ("single", "fused", "shifted_single", "loc_miou")}
    result["cost"] = {name: _cost("synthetic_cpu", sets) for name, sets in VARIANTS.items()}
    result["cost"]["assembled"] = _cost("seed_system_synthetic_cpu", [])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(out_dir, "val_result.json").write_text(json.dumps(result, indent=1))
    return result
