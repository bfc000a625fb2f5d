"""The rows ``ramstrans predict`` writes, whatever ran the model: one per path, its top-k classes and probabilities
(and, with ``--scales auto``, whether it was zoomed) or why it could not be read; CSV or JSON lines, on standard output
or into a file written whole."""

import csv
import io
import json
import sys

import numpy as np

from ramstrans.errors import UsageError
from ramstrans.runtime.files import write_text_atomic

__all__ = ["check_options", "rows_of", "format_rows", "emit"]


def check_options(topk: int, fmt: str, batch_size: int, zoom_threshold: float | None, tta: str = "none") -> None:
    """Refuse impossible options before anything is read (a typo fails at once, before a model loads)."""
    if tta not in ("none", "flip"):
        raise UsageError(f"--tta must be none or flip, got {tta!r}")
    if topk < 1 or fmt not in ("csv", "json") or batch_size < 1:
        raise UsageError(
            f"--topk and --batch-size must be at least 1 and --format csv or json (got {topk}, {batch_size}, {fmt})"
        )
    if zoom_threshold is not None and not 0.0 <= zoom_threshold <= 1.0:
        raise UsageError(f"--zoom-threshold must be in [0, 1], got {zoom_threshold}")


def rows_of(probs: np.ndarray, zoomed: np.ndarray, names: list[str], topk: int, adaptive: bool) -> list[dict]:
    """One row per image: its top-k (class, probability), most probable first (ties: the lower class index), and
    whether it was zoomed."""
    k = np.argsort(-probs, axis=-1, kind="stable")[:, : min(topk, len(names))]
    p = np.take_along_axis(probs, k, axis=-1)
    return [
        {
            "status": "ok",
            "top": [(names[j], float(q)) for q, j in zip(pr.tolist(), kr.tolist())],
            **({"zoomed": bool(z)} if adaptive else {}),
        }
        for pr, kr, z in zip(p, k, zoomed.tolist())
    ]


def format_rows(rows: list[dict], fmt: str, topk: int, adaptive: bool) -> str:
    """The rows (each with its ``path``) as CSV or JSON lines."""
    if fmt == "json":
        return "".join(
            json.dumps(
                {
                    "path": r["path"],
                    **(
                        {"top": [{"class": c, "prob": q} for c, q in r["top"]]}
                        if r["status"] == "ok"
                        else {"error": r["error"]}
                    ),
                    **({"zoomed": r["zoomed"]} if "zoomed" in r else {}),
                }
            )
            + "\n"
            for r in rows
        )
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["path", "status", "error"]
        + [f"{kind}_{i}" for i in range(1, topk + 1) for kind in ("class", "prob")]
        + (["zoomed"] if adaptive else [])
    )
    for r in rows:
        top = [v for c, q in r.get("top", []) for v in (c, f"{q:.6f}")]
        w.writerow(
            [r["path"], r["status"], r.get("error", "")]
            + top
            + [""] * (2 * topk - len(top))
            + ([r.get("zoomed", "")] if adaptive else [])
        )
    return buf.getvalue()


def emit(text: str, out: str | None) -> None:
    """The rows into ``out`` (written whole), or on standard output."""
    if out:
        write_text_atomic(out, text)
    else:
        sys.stdout.write(text)
