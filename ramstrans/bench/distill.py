"""``ramstrans bench distill``: does the CNN teacher help the demo student? Equal budgets, the same init, over seeds.

Per seed: the teacher (``teacher_synthetic_cpu``) trained alone; then the student (``distill_synthetic_cpu``: the
demo's two-scale RAMS-Trans with a distillation token per scale) from the same initialisation and for the same steps
without a teacher (both heads learn the labels), with soft and with hard distillation. Every student is scored with
each head (mean, cls, dist) on scale 1 alone and on the two scales fused: "with and without the zoomed scale" at test
time. Differences are paired by seed. Resumable (``run_or_reuse``).
"""

import json
from collections.abc import Sequence
from pathlib import Path

from ramstrans.bench.demo import cached_scores, mean_spread, resolved, run_or_reuse
from ramstrans.runtime.files import write_text_atomic

__all__ = ["bench_distill", "VARIANTS"]

VARIANTS = ("none", "soft", "hard")
HEADS = ("mean", "cls", "dist")


def _score(single: dict, fused: dict) -> dict[str, float]:
    """Top-1 of every head, single scale and fused, and the proposal's mIoU, from the two evaluations."""
    out = {f"{tag}_{h}": float(res[f"top1_{h}"]) for tag, res in (("single", single), ("fused", fused)) for h in HEADS}
    return out | ({"loc_miou": float(single["loc_miou"])} if "loc_miou" in single else {})


def bench_distill(
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    split: str = "val",
    out_dir: str = "runs/bench_distill",
    teacher_config: str = "teacher_synthetic_cpu",
    student_config: str = "distill_synthetic_cpu",
    overrides: Sequence[str] = (),
) -> dict[str, object]:
    """The distillation table (see the module doc); ``split="val"`` holds out 20% of the training images and scores
    on them, ``"test"`` scores on the test split.

    Args:
        seeds: training seeds (teacher and students).
        split: "val" or "test".
        out_dir: one sub-folder per run.
        teacher_config: the teacher's config.
        student_config: the student's config (its distill section is set per variant).
        overrides: extra settings for every run (teacher and students).
    """
    base = [*overrides] + (["data.val_fraction=0.2"] if split == "val" else [])
    teachers: list[dict[str, float]] = []
    scores: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    folders: dict[str, list[str]] = {"teacher": [], **{v: [] for v in VARIANTS}}
    configs: dict[str, dict] = {}
    for seed in seeds:
        t_sets = [*base, f"train.seed={seed}"]
        t_dir = run_or_reuse(teacher_config, t_sets, Path(out_dir) / split, f"teacher_seed{seed}")
        summary = json.loads((t_dir / "summary.json").read_text())
        teachers.append(summary["final_val"] if split == "val" else summary["test"])
        folders["teacher"].append(str(t_dir))
        configs[str(t_dir)] = resolved(teacher_config, t_sets, t_dir)
        for variant in VARIANTS:
            sets = [*base, f"train.seed={seed}"] + (
                ["distill.enabled=false"]
                if variant == "none"
                else ["distill.enabled=true", f"distill.teacher={t_dir}", f"distill.type={variant}"]
            )
            run_dir = run_or_reuse(student_config, sets, Path(out_dir) / split, f"student_{variant}_seed{seed}")
            scores[variant].append(cached_scores(run_dir, f"distill_eval_{split}.json", split, _score))
            folders[variant].append(str(run_dir))
            configs[str(run_dir)] = resolved(student_config, sets, run_dir)
    result: dict[str, object] = {
        "split": split,
        "seeds": list(seeds),
        "overrides": list(overrides),
        "teacher": {k: mean_spread([t[k] for t in teachers]) for k in ("top1", "mean_class_acc")},
        "resolved_configs": configs,
        "run_folders": folders,
    }
    for variant, rows in scores.items():
        result[variant] = {k: mean_spread([r[k] for r in rows]) for k in rows[0]}
    for variant in ("soft", "hard"):
        result[f"{variant}_minus_none"] = {
            k: mean_spread([d[k] - n[k] for d, n in zip(scores[variant], scores["none"])])
            for k in scores["none"][0]
            if k != "loc_miou"
        }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out_dir, f"{split}_result.json"), json.dumps(result, indent=1))
    return result
