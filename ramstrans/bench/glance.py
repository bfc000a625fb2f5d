"""``ramstrans bench glance``: glance and focus, each scale at its own size and the zoom cropped from the source, as
top-1 against GMACs per image, over seeds.

Rows (the demo's recipe otherwise; ``ROWS``): the plain ViT at the full input size, RAMS-Trans today (the zoom crops the
input), the zoom from the source at today's sizes, and glance-and-focus pairs ``gf_<glance>_<focus>`` (zoom from the
source). Each RAMS-Trans row is scored single / fused / adaptive (the threshold chosen on validation). Variants
(``VARIANTS``): today's demo set, and ``hires``: the birds rendered at 320 px with parts of size 0.3 (the demo's:
0.65), so that at the 128-px input the distinguishing parts are a pixel or two.

``--split val`` screens the rows on validation (20% of train; seed 0 unless told) and chooses each row's adaptive
threshold; ``--split test`` reports the rows asked for over the seeds with those thresholds. Runs are reused by a hash
of their resolved config (``bench.demo.run_or_reuse``), so an interrupted bench resumes.
"""

import json
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from ramstrans.bench.demo import mean_spread, resolved, run_or_reuse
from ramstrans.deploy.records import read_json_file
from ramstrans.errors import CheckpointError, UsageError
from ramstrans.fields import Fields
from ramstrans.registry import EvalRequest
from ramstrans.runtime.files import write_text_atomic

__all__ = ["bench_glance", "VARIANTS", "row_overrides", "DEFAULT_ROWS"]

VARIANTS: dict[str, list[str]] = {"demo": [], "hires": ["data.synthetic.image_size=320", "data.synthetic.detail=0.3"]}
DEFAULT_ROWS = ("vit", "rams_input", "rams_source", "gf_64_128", "gf_64_96", "gf_80_96", "gf_96_96", "gf_64_64")
SOURCE_SIZE = 256  # twice the demo's 128-px input


def row_overrides(row: str) -> list[str]:
    """The config overrides of a row name: vit, rams_input, rams_source or gf_<glance>_<focus>.

    Raises:
        UsageError: another name.
    """
    source = ["model.zoom_source=source", f"data.source_size={SOURCE_SIZE}"]
    if row == "vit":
        return ["model.num_scales=1", "loss.scale_weights=[1.0]"]
    if row == "rams_input":
        return []
    if row == "rams_source":
        return source
    parts = row.split("_")
    if len(parts) == 3 and parts[0] == "gf" and parts[1].isdigit() and parts[2].isdigit():
        return [*source, f"model.scale_sizes=[{parts[1]},{parts[2]}]"]
    raise UsageError(f"unknown row '{row}': vit, rams_input, rams_source or gf_<glance>_<focus> (e.g. gf_64_128)")


def _costs(config: str, sets: Sequence[str]) -> dict[str, float]:
    """GMACs per image of a row's model (``flops.model_costs``), random weights."""
    import torch

    from ramstrans.bench.flops import model_costs
    from ramstrans.config import load_config
    from ramstrans.models import build_model

    cfg = load_config(config, sets)
    with torch.random.fork_rng(devices=[]):
        model = build_model(replace(cfg.model, pretrained=None), 10, source_size=cfg.data.source_size).eval()
    return model_costs(model)


def _score_val(run_dir: Path, scales: int) -> dict[str, Any]:
    """Validation: single top-1 of a one-scale row; the sweep (single, fused, chosen threshold) of a zoom row."""
    from ramstrans.inference.sweep import run_zoom_sweep

    if scales == 1:
        return {"single": json.loads((run_dir / "summary.json").read_text())["final_val"]["top1"]}
    sweep = run_zoom_sweep(EvalRequest(str(run_dir / "checkpoint.pth"), split="val", num_workers=0))
    chosen: dict[str, Any] = cast(dict, sweep["chosen"]) or {"threshold": 1.01, "zoomed_share": 1.0}
    return {
        "single": sweep["single_scale_top1"],
        "fused": sweep["full_fusion_top1"],
        "adaptive": chosen["top1"] if "top1" in chosen else sweep["full_fusion_top1"],
        "threshold": chosen["threshold"],
        "zoomed_share": chosen["zoomed_share"],
    }


def _score_test(run_dir: Path, scales: int, threshold: float | None) -> dict[str, Any]:
    """Test: single top-1 (the run's own evaluation), and for a zoom row fused and adaptive at ``threshold``."""
    from ramstrans.inference.evaluate import run_eval

    single = json.loads((run_dir / "summary.json").read_text())["test"]["top1"]
    if scales == 1:
        return {"single": single}
    request = EvalRequest(str(run_dir / "checkpoint.pth"), split="test", num_workers=0)
    fused = run_eval(request, scales=2, show_progress=False, overwrite=True)
    adaptive = run_eval(request, scales="auto", zoom_threshold=threshold, show_progress=False, overwrite=True)
    return {
        "single": single,
        "fused": fused["top1"],
        "adaptive": adaptive["top1"],
        "threshold": threshold,
        "zoomed_share": adaptive["zoomed_share"],
        "loc_miou": fused.get("loc_miou"),
    }


def bench_glance(
    rows: Sequence[str] = DEFAULT_ROWS,
    variant: str = "hires",
    split: str = "val",
    seeds: Sequence[int] = (0,),
    config: str = "synthetic_cpu",
    out_dir: str = "runs/bench_glance",
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Train (or reuse) and score every row on ``split`` over ``seeds`` (see the module doc); the result, with every
    run's resolved config and per-seed values, is written to ``out_dir/<variant>_<split>_result.json``.

    Raises:
        UsageError: an unknown variant or row, or ``split="test"`` before ``split="val"`` chose the thresholds.
    """
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant '{variant}' (known: {', '.join(VARIANTS)})")
    if split not in ("val", "test"):
        raise UsageError(f"--split must be val or test, got '{split}'")
    chosen = _val_thresholds(out_dir, variant) if split == "test" else {}
    folder = Path(out_dir) / variant / split
    result: dict[str, Any] = {"variant": variant, "split": split, "seeds": list(seeds), "config": config, "rows": {}}
    result["rows"] = _earlier_rows(folder.parent / f"{split}_result.json", result)
    for row in rows:
        sets = [*VARIANTS[variant], *row_overrides(row), *overrides]
        scales = 1 if row == "vit" else 2
        if scales == 2 and split == "test" and row not in chosen:
            raise UsageError(f"no adaptive threshold for row {row}: run bench glance --split val with it first")
        per_seed, configs = [], {}
        for seed in seeds:
            run_sets = [*sets, f"train.seed={seed}", *(["data.val_fraction=0.2"] if split == "val" else [])]
            run_dir = run_or_reuse(config, run_sets, folder, f"{row}_seed{seed}")
            configs[str(run_dir)] = resolved(config, run_sets, run_dir)
            score = _score_val(run_dir, scales) if split == "val" else _score_test(run_dir, scales, chosen.get(row))
            per_seed.append({"seed": seed, **score})
        result["rows"][row] = _summary(per_seed, _costs(config, sets), configs)
        write_text_atomic(folder.parent / f"{split}_result.json", json.dumps(result, indent=1))
    if split == "test":
        result["paired"] = _paired(result["rows"])
        write_text_atomic(folder.parent / f"{split}_result.json", json.dumps(result, indent=1))
    return result


def _summary(per_seed: list[dict[str, Any]], gmacs: dict[str, float], configs: dict) -> dict[str, Any]:
    """A row: per mode the mean ± half-range top-1 over the seeds, GMACs per image (adaptive: the capture pass plus
    the mean zoomed share of the zoom), the per-seed values and the resolved configs."""
    out: dict[str, Any] = {"per_seed": per_seed, "gmacs": gmacs, "resolved_configs": configs}
    for mode in ("single", "fused", "adaptive"):
        if mode in per_seed[0]:
            out[mode] = mean_spread([float(s[mode]) for s in per_seed])
    if "zoomed_share" in per_seed[0]:
        share = statistics.mean(float(s["zoomed_share"]) for s in per_seed)
        out["zoomed_share"] = share
        out["gmacs"] = {**gmacs, "adaptive": gmacs["capture"] + share * gmacs["zoom"]}
        out["threshold"] = per_seed[0]["threshold"]
    return out


def _paired(rows: dict[str, Any]) -> dict[str, Any]:
    """Per-seed paired differences of every row's modes against the plain ViT's single pass and, for zoom rows,
    their fused top-1 against RAMS-Trans today's fused (G2)."""
    out: dict[str, Any] = {}
    base = rows.get("vit")
    today = rows.get("rams_input")
    for name, row in rows.items():
        for mode in ("single", "fused", "adaptive"):
            if base is not None and mode in row and name != "vit":
                diffs = [a - b for a, b in zip(row[mode]["values"], base["single"]["values"])]
                out[f"{name}_{mode}_minus_vit"] = mean_spread(diffs)
        if today is not None and "fused" in row and name != "rams_input":
            diffs = [a - b for a, b in zip(row["fused"]["values"], today["fused"]["values"])]
            out[f"{name}_fused_minus_rams_input_fused"] = mean_spread(diffs)
    return out


def _earlier_rows(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """The rows of an earlier invocation with the same variant, split, seeds and config, so that rows benched one at a
    time add up to one result (empty otherwise)."""
    if not path.is_file():
        return {}
    earlier = Fields(read_json_file(path), str(path), CheckpointError)
    same = all(earlier.get(key, None) == result[key] for key in ("variant", "split", "seeds", "config"))
    return dict(earlier.sub("rows").data) if same else {}


def _val_thresholds(out_dir: str, variant: str) -> dict[str, float]:
    """Each zoom row's adaptive threshold, chosen by ``bench glance --split val`` (empty when it has not run)."""
    path = Path(out_dir) / variant / "val_result.json"
    if not path.is_file():
        return {}
    rows = Fields(read_json_file(path), str(path), CheckpointError).sub("rows")
    return {
        name: float(rows.sub(name).number("threshold", low=0, high=1))
        for name in rows.data
        if rows.sub(name).has("threshold")
    }
