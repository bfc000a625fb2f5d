"""``ramstrans bench demo``: the demo's accuracy claim, plain ViT against RAMS-Trans over seeds."""
import hashlib
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Sequence

__all__ = ["bench_demo", "run_or_reuse", "mean_spread"]


def mean_spread(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.mean(values), "spread": (max(values) - min(values)) / 2, "values": values}


def _run_key(cfg) -> str:
    """A short hash of a resolved config without its run folder: runs are reused only under the same settings."""
    settings = asdict(cfg)
    settings["train"].pop("output_dir")
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def run_or_reuse(config: str, sets: Sequence[str], folder: Path, name: str) -> Path:
    """The run folder ``folder/<name>_<config hash>`` after training it, unless it already finished (its summary.json);
    an interrupted run resumes from its newest checkpoint."""
    from ..checkpoint import find_checkpoint
    from ..config import load_config
    from ..train import resolve_training, run_training
    run_dir = Path(folder) / f"{name}_{_run_key(load_config(config, sets))}"
    if not (run_dir / "summary.json").is_file():
        sets = [*sets, f"train.output_dir={run_dir}"]
        cfg, ckpt = resolve_training(config, sets, "auto" if find_checkpoint("auto", run_dir) else None)
        run_training(cfg, resume=ckpt, show_progress=False)
    return run_dir


def bench_demo(seeds: Sequence[int] = (0, 1, 2), config: str = "synthetic_cpu", split: str = "test",
               out_dir: str = "runs/bench_demo", overrides: Sequence[str] = ()) -> Dict[str, object]:
    """The demo's claim, measured: the plain ViT (num_scales=1) against RAMS-Trans (num_scales=2) at equal steps from
    the same init, over several seeds; single-scale top-1 and the proposals' localization.

    Resumable: every run's folder is named after a hash of its resolved config, so a finished run (its summary.json)
    is reused only under the same settings, and an interrupted one resumes from its newest checkpoint. With
    ``split="val"`` a stratified 20% of the training images is held out and the final models are scored on it, never on
    test (for tuning).

    Args:
        seeds: training seeds.
        config: config name or file.
        split: "test" (report) or "val" (tuning).
        out_dir: one sub-folder per run.
        overrides: extra ``section.key=value`` settings for both models.
    """
    runs: Dict[str, List[Dict[str, float]]] = {"vit": [], "rams": []}
    folders: Dict[str, List[str]] = {"vit": [], "rams": []}
    for seed in seeds:
        for name, scales, weights in (("vit", 1, "[1.0]"), ("rams", 2, None)):
            sets = [f"model.num_scales={scales}", f"train.seed={seed}", *overrides]
            sets += [f"loss.scale_weights={weights}"] if weights else []
            sets += ["data.val_fraction=0.2"] if split == "val" else []
            run_dir = run_or_reuse(config, sets, Path(out_dir) / split, f"{name}_seed{seed}")
            summary = json.loads((run_dir / "summary.json").read_text())
            runs[name].append(summary["final_val"] if split == "val" else summary["test"])
            folders[name].append(str(run_dir))
    result: Dict[str, object] = {"config": config, "split": split, "seeds": list(seeds), "overrides": list(overrides),
                                 "run_folders": folders}
    for name, res in runs.items():
        result[name] = {k: mean_spread([r[k] for r in res]) for k in ("top1", "loc_miou", "loc_iou50")}
    gain = [r["top1"] - v["top1"] for r, v in zip(runs["rams"], runs["vit"])]
    result["rams_minus_vit_top1"] = mean_spread(gain)
    Path(out_dir, f"{split}_result.json").write_text(json.dumps(result, indent=1))
    return result
