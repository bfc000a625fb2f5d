"""``ramstrans bench longtail``: the long-tail remedies on a long-tailed demo, over seeds.

The demo (``synthetic_cpu``: the pretrained ViT fine-tuned with RAMS-Trans, 450 steps) on the synthetic birds with an
exponentially long-tailed training split (``data.synthetic.imbalance`` r: class 0 keeps its 150 training images, the
last class 150 / r), the test split balanced (50 per class). Methods, each at the demo's settings otherwise:
``uniform`` (the demo), ``class_balanced`` and ``sqrt`` (``data.sampler``), ``logit_adjust`` (``loss.logit_adjust``
τ = 1). Nothing is tuned: every method runs at its one setting, so the test split selects nothing.

Per ratio, method and seed: test top-1 (single scale and fused), mean per-class accuracy, and many / medium / few-shot
accuracy (classes with > 100, 20-100, < 20 training images); per method the paired differences from ``uniform`` on the
same seed. Goal: a remedy that raises few-shot accuracy beyond the seeds' spread without lowering top-1 by more than
1 point. Resumable: each run's folder is named after its resolved config.
"""

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from ramstrans.bench.demo import cached_scores, mean_spread, resolved, run_or_reuse
from ramstrans.runtime.files import write_text_atomic

__all__ = ["bench_longtail", "METHODS"]

METHODS: dict[str, list[str]] = {
    "uniform": [],
    "class_balanced": ["data.sampler=class_balanced"],
    "sqrt": ["data.sampler=sqrt"],
    "logit_adjust": ["loss.logit_adjust=1.0"],
}
KEYS = ("top1", "fused_top1", "mean_class_acc", "many", "medium", "few")


def _score(single: dict, fused: dict) -> dict[str, float | None]:
    """Test top-1 (single and fused), mean per-class and shot-group accuracy from the two evaluations."""
    shots = single["shots"]
    return {
        "top1": float(single["top1"]),
        "fused_top1": float(fused["top1"]),
        "mean_class_acc": float(single["mean_class_acc"]),
        **{group: shots[group]["accuracy"] for group in ("many", "medium", "few")},
    }


def _summary(rows: list[dict[str, float | None]], base: list[dict[str, float | None]]) -> dict[str, object]:
    """Per metric mean ± half-range over seeds, and the paired difference from ``base`` (the same seeds)."""
    out: dict[str, object] = {}
    for k in KEYS:
        values = [r[k] for r in rows]
        if any(v is None for v in values):
            continue
        out[k] = mean_spread([float(v) for v in values])  # type: ignore[arg-type]
        out[f"{k}_minus_uniform"] = mean_spread([float(r[k]) - float(b[k]) for r, b in zip(rows, base)])  # type: ignore[arg-type]
    return out


def bench_longtail(
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    ratios: Sequence[float] = (10.0, 50.0),
    methods: Sequence[str] = tuple(METHODS),
    config: str = "synthetic_cpu",
    out_dir: str = "runs/bench_longtail",
    overrides: Sequence[str] = (),
) -> dict[str, object]:
    """Train (or reuse) every (ratio, method, seed) run, score it on the balanced test split, and write
    ``result.json`` (per-seed values, mean ± half-range, paired differences from uniform, resolved configs).

    Args:
        seeds: training seeds.
        ratios: imbalance ratios r.
        methods: of ``METHODS``; "uniform" is always run (the paired differences need it).
        config: the demo config.
        out_dir: one folder per run, and ``result.json``.
        overrides: extra ``section.key=value`` settings for every run.
    """
    import timm
    import torch

    from ramstrans.errors import UsageError

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"bench longtail: unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
    chosen = ["uniform", *[m for m in methods if m != "uniform"]]
    started = time.time()
    per: dict[str, dict[str, list[dict[str, float | None]]]] = {}
    configs: dict[str, dict] = {}
    for ratio in ratios:
        key = f"r{ratio:g}"
        per[key] = {}
        for method in chosen:
            per[key][method] = []
            for seed in seeds:
                sets = [f"data.synthetic.imbalance={ratio}", f"train.seed={seed}", *METHODS[method], *overrides]
                run_dir = run_or_reuse(config, sets, Path(out_dir), f"{key}_{method}_seed{seed}")
                configs[str(run_dir)] = resolved(config, sets, run_dir)
                per[key][method].append({"seed": seed, **cached_scores(run_dir, "longtail_eval.json", "test", _score)})
    result: dict[str, object] = {
        "command": "ramstrans bench longtail --ratios "
        + ",".join(f"{r:g}" for r in ratios)
        + " --seeds "
        + ",".join(map(str, seeds)),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "versions": f"torch {torch.__version__}, timm {timm.__version__}",
        "config": config,
        "split": "test (balanced; nothing selected on it)",
        "seeds": list(seeds),
        "ratios": list(ratios),
        "overrides": list(overrides),
        "per_seed": per,
        "summary": {
            key: {m: _summary(rows, per[key]["uniform"]) for m, rows in by_method.items()}
            for key, by_method in per.items()
        },
        "seconds": round(time.time() - started, 1),
        "resolved_configs": configs,
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out_dir, "result.json"), json.dumps(result, indent=1))
    return result
