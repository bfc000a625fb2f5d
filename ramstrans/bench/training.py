"""``ramstrans bench ema`` and ``ramstrans bench accum``: sanity runs of the EMA and of gradient accumulation on the
demo, on the validation split only (20% of train, never test)."""

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ramstrans.bench.demo import mean_spread, run_or_reuse
from ramstrans.checkpoint import load_checkpoint
from ramstrans.errors import UsageError
from ramstrans.runtime.files import write_text_atomic
from ramstrans.runtime.runlog import read_records

__all__ = ["bench_ema", "bench_accum"]


def bench_ema(
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    config: str = "synthetic_cpu",
    decay: float = 0.99,
    out_dir: str = "runs/bench_ema",
    overrides: Sequence[str] = (),
) -> dict[str, object]:
    """Validation top-1 of the raw and the EMA weights of the same runs (both are evaluated at the end of every run).

    Args:
        seeds: training seeds.
        config: config name or file.
        decay: ``train.ema_decay``.
        out_dir: one sub-folder per run (finished runs with the same settings are reused).
        overrides: extra ``section.key=value`` settings.
    """
    per_weights: dict[str, list] = {"raw": [], "ema": []}
    for seed in seeds:
        sets = [f"train.seed={seed}", f"train.ema_decay={decay}", "data.val_fraction=0.2", *overrides]
        run_dir = run_or_reuse(config, sets, Path(out_dir), f"seed{seed}")
        last = max(r["step"] for r in read_records(run_dir / "metrics.jsonl") if r["kind"] == "train")
        for r in read_records(run_dir / "metrics.jsonl"):
            if r["kind"] == "eval" and r["split"] == "val" and r["step"] == last:
                per_weights[r["weights"]].append(r["top1"])
    result = {
        "config": config,
        "split": "val",
        "seeds": list(seeds),
        "ema_decay": decay,
        "overrides": list(overrides),
        **{f"val_top1_{k}": mean_spread(v) for k, v in per_weights.items()},
        "ema_minus_raw": mean_spread([e - r for e, r in zip(per_weights["ema"], per_weights["raw"])]),
    }
    write_text_atomic(Path(out_dir, "result.json"), json.dumps(result, indent=1))
    return result


def bench_accum(
    seed: int = 0,
    config: str = "synthetic_cpu",
    accum: int = 2,
    out_dir: str = "runs/bench_accum",
    overrides: Sequence[str] = (),
) -> dict[str, object]:
    """The same run with the configured batch in one piece and as ``accum`` accumulated batches: the largest weight
    difference after training (float rounding only, if accumulation equals the large batch) and both validation top-1.

    Args:
        seed: training seed.
        config: config name or file (its ``train.batch_size`` must divide by ``accum``).
        accum: accumulated batches.
        out_dir: one sub-folder per run (finished runs with the same settings are reused).
        overrides: extra ``section.key=value`` settings.
    """
    from ramstrans.config import load_config

    batch = load_config(config, overrides).train.batch_size
    if batch % accum:
        raise UsageError(f"train.batch_size {batch} does not divide by {accum} accumulated batches")
    base = [f"train.seed={seed}", "data.val_fraction=0.2", *overrides]
    runs = {
        "one_batch": run_or_reuse(config, base, Path(out_dir), f"batch{batch}"),
        "accumulated": run_or_reuse(
            config,
            base + [f"train.batch_size={batch // accum}", f"train.grad_accum={accum}"],
            Path(out_dir),
            f"batch{batch // accum}x{accum}",
        ),
    }
    weights = {k: load_checkpoint(v / "checkpoint.pth")["model"] for k, v in runs.items()}
    diff = max(
        (weights["one_batch"][k].double() - weights["accumulated"][k].double()).abs().max().item()
        for k in weights["one_batch"]
        if weights["one_batch"][k].is_floating_point()
    )
    scale = max(v.double().abs().max().item() for v in weights["one_batch"].values() if v.is_floating_point())
    result = {
        "config": config,
        "split": "val",
        "seed": seed,
        "batch": batch,
        "accum": accum,
        "overrides": list(overrides),
        "max_abs_weight_difference": diff,
        "max_abs_weight": scale,
        "torch": torch.__version__,
        **{f"val_top1_{k}": json.loads((v / "summary.json").read_text())["final_val"]["top1"] for k, v in runs.items()},
    }
    write_text_atomic(Path(out_dir, "result.json"), json.dumps(result, indent=1))
    return result
