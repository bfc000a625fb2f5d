"""``ramstrans bench demo``: the demo's accuracy claim, plain ViT against RAMS-Trans over seeds."""

import hashlib
import json
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ramstrans.errors import UsageError
from ramstrans.registry import EvalRequest
from ramstrans.runtime.files import write_text_atomic

__all__ = ["bench_demo", "run_or_reuse", "mean_spread", "resolved", "cached_scores"]

logger = logging.getLogger("ramstrans")


def mean_spread(values: list[float]) -> dict[str, Any]:
    """The mean of ``values``, their half-range (the spread this project reports) and the values themselves."""
    return {"mean": statistics.mean(values), "spread": (max(values) - min(values)) / 2, "values": values}


def _run_key(cfg: Any) -> str:
    """A short hash of a resolved config's differences from the defaults, without its run folder: runs are reused
    only under the same settings, and stay reusable when a later version adds keys with defaults."""
    from ramstrans.config import Config, config_diff

    settings = {k: new for k, (_, new) in config_diff(Config(), cfg).items() if k != "train.output_dir"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def run_or_reuse(config: str, sets: Sequence[str], folder: Path, name: str) -> Path:
    """The run folder ``folder/<name>_<config hash>`` after training it, unless it already finished (its summary.json);
    an interrupted run resumes from its newest checkpoint, or restarts when it was killed before its first one (as
    ``ramstrans train --resume auto`` does)."""
    from ramstrans.config import load_config
    from ramstrans.training.run import resolve_training, run_training

    run_dir = Path(folder) / f"{name}_{_run_key(load_config(config, sets))}"
    if not (run_dir / "summary.json").is_file():
        logger.info("bench: %s: training into %s", name, run_dir)
        sets = [*sets, f"train.output_dir={run_dir}"]
        cfg, ckpt = resolve_training(config, sets, "auto")
        run_training(cfg, resume=ckpt, show_progress=False, restart=True)
    return run_dir


def resolved(config: str, sets: Sequence[str], run_dir: Path) -> dict:
    """The resolved config a bench run trained with, with its own run folder (and so its own seed) in it."""
    from ramstrans.config import load_config

    return asdict(load_config(config, [*sets, f"train.output_dir={run_dir}"]))


def cached_scores(run_dir: Path, cache: str, split: str, score: Callable[..., dict], shift: Sequence[str] = ()) -> dict:
    """``score(single=..., fused=...)`` of a two-scale run's checkpoint, given its evaluations on ``split`` at one and
    at two scales (and with a ``shift``, also ``shifted=`` its one-scale evaluation under that shift); cached in
    ``run_dir/cache`` so that a resumed bench does not evaluate a finished run again."""
    from ramstrans.inference.evaluate import run_eval

    cached = run_dir / cache
    if cached.is_file():
        return json.loads(cached.read_text())
    ckpt = str(run_dir / "checkpoint.pth")
    request = EvalRequest(ckpt, split=split, num_workers=0)
    evals = {"single": (request, 1), "fused": (request, 2)}
    if shift:
        evals["shifted"] = (replace(request, shift=tuple(shift)), 1)
    out = score(
        **{
            name: run_eval(asked, scales=scales, show_progress=False, overwrite=True)
            for name, (asked, scales) in evals.items()
        }
    )
    write_text_atomic(cached, json.dumps(out, indent=1))
    return out


def _joint_threshold(sweeps: list[dict[str, Any]], tolerance: float) -> dict[str, float]:
    """The cheapest threshold whose top-1, averaged over the runs, is within ``tolerance`` of their mean full fusion."""
    full = statistics.mean(sw["full_fusion_top1"] for sw in sweeps)
    rows = []
    for i, row in enumerate(sweeps[0]["rows"]):
        rows.append(
            {
                "threshold": row["threshold"],
                "top1": statistics.mean(sw["rows"][i]["top1"] for sw in sweeps),
                "passes_per_image": statistics.mean(sw["rows"][i]["passes_per_image"] for sw in sweeps),
            }
        )
    good = [r for r in rows if r["top1"] >= full - tolerance]
    return {**min(good, key=lambda r: (r["passes_per_image"], -r["top1"])), "full_fusion_top1": full}


def _test_modes(run_dir: Path, threshold: float | None) -> dict[str, dict[str, Any]]:
    """Fused and adaptive test evaluations of a two-scale run (written into its folder)."""
    from ramstrans.inference.evaluate import run_eval

    request = EvalRequest(str(run_dir / "checkpoint.pth"), split="test", num_workers=0)
    return {
        "fused": run_eval(request, scales=2, show_progress=False),
        "adaptive": run_eval(request, scales="auto", zoom_threshold=threshold, show_progress=False),
    }


def bench_demo(
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    config: str = "synthetic_cpu",
    split: str = "test",
    out_dir: str = "runs/bench_demo",
    overrides: Sequence[str] = (),
    zoom_threshold: float | None = None,
) -> dict[str, object]:
    """The demo's claim, measured: the plain ViT (num_scales=1) against RAMS-Trans (num_scales=2) at equal steps from
    the same init, over several seeds; single-scale top-1 and the proposals' localization, and for RAMS-Trans also the
    two-scale fusion and adaptive zoom (top-1 and backbone passes per image).

    Resumable: every run's folder is named after a hash of its resolved config, so a finished run (its summary.json)
    is reused only under the same settings, and an interrupted one resumes from its newest checkpoint. With
    ``split="val"`` a stratified 20% of the training images is held out, the final models are scored on it (never on
    test) and the adaptive-zoom threshold is chosen on it (the cheapest within 0.5 points of full fusion, averaged
    over the seeds). With ``split="test"`` the adaptive threshold is ``zoom_threshold``, or the one the validation
    result in ``out_dir`` chose.

    Args:
        seeds: training seeds.
        config: config name or file.
        split: "test" (report) or "val" (tuning).
        out_dir: one sub-folder per run.
        overrides: extra ``section.key=value`` settings for both models.
        zoom_threshold: test: the adaptive threshold (default: the one chosen by ``split="val"``).
    """
    from ramstrans.config import load_config

    load_config(config, overrides)  # a bad override is named before anything else
    if split == "test" and zoom_threshold is None:
        zoom_threshold = _val_threshold(out_dir)
    runs, folders, configs, sweeps = _train_all(seeds, config, split, out_dir, overrides, zoom_threshold)
    result: dict[str, object] = {
        "config": config,
        "split": split,
        "seeds": list(seeds),
        "overrides": list(overrides),
        "resolved_configs": configs,
        "run_folders": folders,
    }
    _aggregate(result, runs, sweeps, split, zoom_threshold)
    write_text_atomic(Path(out_dir, f"{split}_result.json"), json.dumps(result, indent=1))
    return result


def _val_threshold(out_dir: str) -> float:
    """The adaptive threshold ``bench demo --split val`` chose into ``out_dir``.

    Raises:
        UsageError: it has not run.
    """
    chosen = Path(out_dir, "val_result.json")
    if not chosen.is_file():
        raise UsageError(
            f"no zoom threshold: run bench demo --split val first (it writes {chosen}) or pass --zoom-threshold"
        )
    return json.loads(chosen.read_text())["zoom_threshold"]["threshold"]


def _train_all(
    seeds: Sequence[int], config: str, split: str, out_dir: str, overrides: Sequence[str], zoom_threshold: float | None
) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[str]], dict[str, dict], list]:
    """Per seed, the plain ViT and RAMS-Trans trained (or reused) and scored on ``split``; RAMS-Trans also swept on
    validation, or evaluated fused and adaptive on test. Returns (the scores per model, the run folders, the resolved
    configs by folder, the sweeps)."""
    from ramstrans.inference.sweep import run_zoom_sweep

    runs: dict[str, list[dict[str, float]]] = {"vit": [], "rams": [], "rams_fused": [], "rams_adaptive": []}
    folders: dict[str, list[str]] = {"vit": [], "rams": []}
    configs: dict[str, dict] = {}
    sweeps = []
    for seed in seeds:
        for name, scales, weights in (("vit", 1, "[1.0]"), ("rams", 2, None)):
            sets = [f"model.num_scales={scales}", f"train.seed={seed}", *overrides]
            sets += [f"loss.scale_weights={weights}"] if weights else []
            sets += ["data.val_fraction=0.2"] if split == "val" else []
            run_dir = run_or_reuse(config, sets, Path(out_dir) / split, f"{name}_seed{seed}")
            configs[str(run_dir)] = resolved(config, sets, run_dir)
            summary = json.loads((run_dir / "summary.json").read_text())
            runs[name].append(summary["final_val"] if split == "val" else summary["test"])
            folders[name].append(str(run_dir))
            if name == "rams" and split == "val":
                sweeps.append(run_zoom_sweep(EvalRequest(str(run_dir / "checkpoint.pth"), split="val", num_workers=0)))
            elif name == "rams":
                modes = _test_modes(run_dir, zoom_threshold)
                runs["rams_fused"].append(modes["fused"])
                runs["rams_adaptive"].append(modes["adaptive"])
    return runs, folders, configs, sweeps


def _aggregate(
    result: dict[str, object],
    runs: dict[str, list[dict[str, float]]],
    sweeps: list,
    split: str,
    zoom_threshold: float | None,
) -> None:
    """Into ``result``: per model the mean ± half-range of its scores, RAMS-Trans's gains over the ViT, and the
    adaptive threshold (on validation: the one chosen jointly over the seeds, with the sweeps)."""
    from ramstrans.inference.sweep import SWEEP_TOLERANCE

    for name, res in runs.items():
        keys = [k for k in ("top1", "loc_miou", "loc_iou50", "passes_per_image", "zoomed_share") if res and k in res[0]]
        if res:
            result[name] = {k: mean_spread([r[k] for r in res]) for k in keys}
    gain = [r["top1"] - v["top1"] for r, v in zip(runs["rams"], runs["vit"])]
    result["rams_minus_vit_top1"] = mean_spread(gain)
    if split == "val":
        result["rams_fused"] = {"top1": mean_spread([sw["full_fusion_top1"] for sw in sweeps])}
        result["zoom_threshold"] = _joint_threshold(sweeps, SWEEP_TOLERANCE)
        result["zoom_sweeps"] = [{"threshold_chosen": sw["chosen"], "rows": sw["rows"]} for sw in sweeps]
    else:
        result["zoom_threshold"] = zoom_threshold
        result["rams_fused_minus_vit_top1"] = mean_spread(
            [f["top1"] - v["top1"] for f, v in zip(runs["rams_fused"], runs["vit"])]
        )
