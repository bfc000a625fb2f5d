"""``ramstrans bench options``: the distilled transformer's options on the demo data, each against the demo's
RAMS-Trans at an equal budget from the same initialisation, over seeds (validation split; resumable).

Per seed: the demo RAMS-Trans (``synthetic_cpu``) and the same with one option on: sliding-window attention r = 1, 2,
3; the conv feed-forward with the prefix tokens through the MLP or bypassing it; the feature-wise transformation fixed
or learned; embedding dropout 0.3. Then the assembled source system (``seed_system_synthetic_cpu``) and the distilled
student alone (``distill_synthetic_cpu``, soft), both taught by the ``bench distill`` teacher of the seed and trained
with the same overrides as the rest. Every run is
scored on the validation split, plain and shifted (colour + blur + contrast), single scale and fused, with the
proposal's mIoU and the training time per step; the cost of one training step (median time, the process's peak
resident memory and the rise the steps caused) is probed once per variant in a fresh process.
"""

import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from ramstrans.bench.demo import cached_scores, mean_spread, resolved, run_or_reuse
from ramstrans.runtime.files import write_text_atomic

__all__ = ["bench_options", "VARIANTS"]

_DEMO_KWARGS = "{embed_dim: 128, depth: 6, num_heads: 4"
VARIANTS: dict[str, list[str]] = {
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


def _score(single: dict, fused: dict, shifted: dict) -> dict[str, float]:
    """Validation top-1 single scale, fused and under the shift, and the proposal's mIoU."""
    return {
        "single": float(single["top1"]),
        "fused": float(fused["top1"]),
        "shifted_single": float(shifted["top1"]),
        "loc_miou": float(single.get("loc_miou", float("nan"))),
    }


def _scores(run_dir: Path) -> dict[str, float]:
    """``_score`` of a run (cached in its folder) and its seconds per training step."""
    train = json.loads((run_dir / "summary.json").read_text())["train"]
    scores = cached_scores(run_dir, "options_eval.json", "val", _score, shift=SHIFT)
    return scores | {"s_per_step": train["seconds"] / max(train["steps"], 1)}


def _vm_mib(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process in MiB (unlike ``ru_maxrss``, the peak restarts at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _probe(config: str, sets: Sequence[str], steps: int, queue: Any) -> None:
    """In a fresh process: the median seconds of a training step at the config's batch size (the learning-to-learn
    step where ``fwt: learned``; no teacher), the peak resident memory, and how far the steps raised it."""
    import torch

    from ramstrans.config import load_config
    from ramstrans.models import MultiScaleForward, build_model
    from ramstrans.training.build import build_criterion
    from ramstrans.training.l2l import FwtLearner

    cfg = load_config(config, [*sets, "model.pretrained=null", "distill.enabled=false"])
    model = build_model(cfg.model, cfg.data.synthetic.num_classes).train()
    criterion, module = build_criterion(cfg.loss, cfg.model.num_scales), MultiScaleForward(model)
    learner = (
        FwtLearner(layers=cast(Any, model.backbone).fwt, optimizer=torch.optim.SGD(model.parameters(), lr=cfg.train.lr))
        if cfg.model.fwt == "learned"
        else None
    )
    x = torch.randn(cfg.train.batch_size, 3, cfg.model.img_size, cfg.model.img_size)
    y = torch.arange(cfg.train.batch_size) % cfg.data.synthetic.num_classes
    times, before = [], _vm_mib("VmRSS")
    for key in range(steps):
        t = time.perf_counter()
        if learner is None:
            sum(criterion(x, module(x), y).values()).backward()
        else:
            learner(module, criterion, x, y, key, 1.0)
        times.append(time.perf_counter() - t)
    peak = _vm_mib("VmHWM")
    queue.put({"step_s": statistics.median(times[1:]), "peak_rss_mib": peak, "step_rise_mib": peak - before})


def _cost(config: str, sets: Sequence[str], steps: int = 6) -> dict[str, float]:
    """``_probe``'s step time and memory, measured in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_probe, args=(config, list(sets), steps, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def _run(
    config: str, sets: list[str], folder: Path, variant: str, seed: int, record: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """Train (or reuse) one run, note its folder and resolved config under ``record[...][variant]``, and score it."""
    run = run_or_reuse(config, sets, folder, f"{variant}_seed{seed}")
    record["run_folders"].setdefault(variant, []).append(str(run))
    record["resolved_configs"][str(run)] = resolved(config, sets, run)
    return _scores(run)


def bench_options(
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    out_dir: str = "runs/bench_options",
    teacher_dir: str = "runs/bench_distill",
    overrides: Sequence[str] = (),
) -> dict[str, object]:
    """The options table (see the module doc).

    Args:
        seeds: training seeds.
        out_dir: one sub-folder per run, and ``val_result.json``.
        teacher_dir: the teachers of ``bench distill --split val`` (same seeds; trained there if missing).
        overrides: settings for every student run (not the teachers), e.g. a shorter ``train.steps``.
    """
    seed_base = ["data.val_fraction=0.2"]
    rows: dict[str, list[dict[str, float]]] = {}
    record: dict[str, dict[str, Any]] = {"run_folders": {}, "resolved_configs": {}}
    for seed in seeds:
        seed_sets = [*seed_base, f"train.seed={seed}"]
        for name, sets in VARIANTS.items():
            rows.setdefault(name, []).append(
                _run("synthetic_cpu", [*seed_sets, *overrides, *sets], Path(out_dir), name, seed, record)
            )
        teacher = run_or_reuse("teacher_synthetic_cpu", seed_sets, Path(teacher_dir) / "val", f"teacher_seed{seed}")
        taught = [*seed_sets, *overrides, "distill.enabled=true", f"distill.teacher={teacher}"]
        for name, config, extra in (
            ("distilled", "distill_synthetic_cpu", ["distill.type=soft"]),
            ("assembled", "seed_system_synthetic_cpu", []),
        ):
            rows.setdefault(name, []).append(_run(config, [*taught, *extra], Path(out_dir), name, seed, record))
    result: dict[str, object] = {
        "split": "val",
        "seeds": list(seeds),
        "overrides": list(overrides),
        "shift": list(SHIFT),
        "variants": VARIANTS,
        **record,
    }
    for name, res in rows.items():
        result[name] = {k: mean_spread([r[k] for r in res]) for k in res[0]}
    for name, ref in [*((n, "base") for n in rows if n != "base"), ("assembled", "distilled")]:
        result[f"{name}_minus_{ref}"] = {
            k: mean_spread([r[k] - b[k] for r, b in zip(rows[name], rows[ref])])
            for k in ("single", "fused", "shifted_single", "loc_miou", "s_per_step")
        }
    cost = {name: _cost("synthetic_cpu", [*overrides, *sets]) for name, sets in VARIANTS.items()}
    result["cost"] = {**cost, "assembled": _cost("seed_system_synthetic_cpu", list(overrides))}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out_dir, "val_result.json"), json.dumps(result, indent=1))
    return result
