"""Each shift of ``eval --shift`` alone (colour, blur, contrast), on the validation split, for the feature-wise
transformation runs of ``ramstrans bench options`` (off = base, fixed, learned); single scale. The combined shift the
bench scores leaves every variant at chance, so this separates the three.

Usage: python tools/options_shifts.py runs/bench_options benchmarks/options/val_150steps_shifts.json
"""

import json
import sys
from pathlib import Path

from ramstrans.bench.demo import mean_spread
from ramstrans.inference.evaluate import run_eval
from ramstrans.registry import EvalRequest
from ramstrans.runtime.files import write_text_atomic

VARIANTS, SHIFTS = ("base", "fwt_fixed", "fwt_learned"), (None, "colour", "blur", "contrast")


def main(runs: str, out: str) -> None:
    result = {"split": "val", "scales": 1, "runs": runs}
    for name in VARIANTS:
        folders = sorted(Path(runs).glob(f"{name}_seed*"))
        scores = {
            str(s): [
                run_eval(
                    EvalRequest(str(f / "checkpoint.pth"), split="val", num_workers=0, shift=() if s is None else (s,)),
                    scales=1,
                    show_progress=False,
                )["top1"]
                for f in folders
            ]
            for s in SHIFTS
        }
        result[name] = {"folders": [str(f) for f in folders], **{k: mean_spread(v) for k, v in scores.items()}}
    write_text_atomic(out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
