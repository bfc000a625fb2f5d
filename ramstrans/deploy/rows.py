"""The rows ``ramstrans predict`` writes, whatever ran the model: one per path, its top-k classes and probabilities
(and, with ``--scales auto``, whether it was zoomed) or why it could not be read; CSV or JSON lines, written as they are
made, on standard output (flushed per batch) or into a file that appears whole (a temp name renamed at the end)."""

import contextlib
import csv
import json
import sys
from types import TracebackType
from typing import Any, TextIO

import numpy as np

from ramstrans.runtime.files import atomic_open

__all__ = ["rows_of", "RowWriter"]


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


class RowWriter:
    """Writes rows (each with its ``path``) as they are made: CSV with its header first, or JSON lines.

    Args:
        fmt: "csv" or "json".
        topk: classes per row (the CSV's columns).
        adaptive: rows say whether the image was zoomed.
        out: the file to write (a temp name beside it, renamed when the writer closes without error); None: standard
            output.
    """

    def __init__(self, fmt: str, topk: int, adaptive: bool, out: str | None = None) -> None:
        self.fmt, self.topk, self.adaptive, self.out = fmt, topk, adaptive, out
        self._stack = contextlib.ExitStack()
        self._file: TextIO = sys.stdout
        self._csv: Any = None

    def __enter__(self) -> "RowWriter":
        if self.out:
            self._file = self._stack.enter_context(atomic_open(self.out))
        if self.fmt == "csv":
            self._csv = csv.writer(self._file)
            self._csv.writerow(
                ["path", "status", "error"]
                + [f"{kind}_{i}" for i in range(1, self.topk + 1) for kind in ("class", "prob")]
                + (["zoomed"] if self.adaptive else [])
            )
        return self

    def write(self, rows: list[dict]) -> None:
        """Write ``rows`` and flush them."""
        for r in rows:
            if self._csv is not None:
                top = [v for c, q in r.get("top", []) for v in (c, f"{q:.6f}")]
                self._csv.writerow(
                    [r["path"], r["status"], r.get("error", "")]
                    + top
                    + [""] * (2 * self.topk - len(top))
                    + ([r.get("zoomed", "")] if self.adaptive else [])
                )
            else:
                self._file.write(json.dumps(_json_row(r)) + "\n")
        self._file.flush()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stack.__exit__(kind, error, trace)


def _json_row(r: dict) -> dict:
    """A row as its JSON line holds it: the path, its top-k or the error, and whether it was zoomed."""
    what = {"top": [{"class": c, "prob": q} for c, q in r["top"]]} if r["status"] == "ok" else {"error": r["error"]}
    return {"path": r["path"], **what, **({"zoomed": r["zoomed"]} if "zoomed" in r else {})}
