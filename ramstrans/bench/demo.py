"""``ramstrans bench demo``: the demo's accuracy claim, plain ViT against RAMS-Trans over seeds."""
import hashlib
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Sequence

__all__ = ["bench_demo"]


def _mean_spread(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.mean(values), "spread": (max(values) - min(values)) / 2, "values": values}


def _run_key(cfg) -> str:
    """A short hash of a resolved config without its run folder: runs are reused only under the same settings."""
    settings = asdict(cfg)
    settings["train"].pop("output_dir")
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


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
    from ..checkpoint import find_checkpoint
    from ..config import load_config
    from ..train import resolve_training, run_training
    runs: Dict[str, List[Dict[str, float]]] = {"vit": [], "rams": []}
    folders: Dict[str, List[str]] = {"vit": [], "rams": []}
    for seed in seeds:
        for name, scales, weights in (("vit", 1, "[1.0]"), ("rams", 2, None)):
            sets = [f"model.num_scales={scales}", f"train.seed={seed}", *overrides]
            sets += [f"loss.scale_weights={weights}"] if weights else []
            sets += ["data.val_fraction=0.2"] if split == "val" else []
            run_dir = Path(out_dir) / split / f"{name}_seed{seed}_{_run_key(load_config(config, sets))}"
            sets.append(f"train.output_dir={run_dir}")
            if not (run_dir / "summary.json").is_file():
                resume = "auto" if find_checkpoint("auto", run_dir) else None
                cfg, ckpt = resolve_training(config, sets, resume)
                run_training(cfg, resume=ckpt, show_progress=False)
            summary = json.loads((run_dir / "summary.json").read_text())
            runs[name].append(summary["final_val"] if split == "val" else summary["test"])
            folders[name].append(str(run_dir))
    result: Dict[str, object] = {"config": config, "split": split, "seeds": list(seeds), "overrides": list(overrides),
                                 "run_folders": folders}
    for name, res in runs.items():
        result[name] = {k: _mean_spread([r[k] for r in res]) for k in ("top1", "loc_miou", "loc_iou50")}
    gain = [r["top1"] - v["top1"] for r, v in zip(runs["rams"], runs["vit"])]
    result["rams_minus_vit_top1"] = _mean_spread(gain)
    Path(out_dir, f"{split}_result.json").write_text(json.dumps(result, indent=1))
    return result
