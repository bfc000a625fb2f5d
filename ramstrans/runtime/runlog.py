"""A run's records: ``metrics.jsonl`` (one record per line, its kind in a ``kind`` field), ``metrics_<kind>.csv`` (one
table per kind), and optionally TensorBoard events (``tensorboard/``). Only the writing process (rank 0) keeps one.

Kinds: ``start`` (one per start or resume), ``train`` (every ``train.log_every`` steps: lr, mean loss terms, images/s),
``mix`` (every mixed batch: kind and mean λ per scale), ``eval`` (a split evaluated: ``split``, ``weights`` raw or ema,
the metrics; ``final`` on the run's reported result).
"""

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from ramstrans.errors import UsageError
from ramstrans.runtime.files import write_text_atomic

__all__ = ["MetricsLog", "read_records", "setup_console_logging"]

_NOT_SCALARS = {"step", "time", "kind"}


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (none if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class MetricsLog:
    """Appends records to ``metrics.jsonl``, the CSV of their kind and (optionally) TensorBoard.

    Args:
        out_dir: the run folder.
        tensorboard: also write TensorBoard events under ``out_dir/tensorboard``.
        resume_step: when resuming in the same folder, the checkpoint's step: records after it (written by the
            interrupted run past its last checkpoint) are dropped, so every step appears once.

    Raises:
        UsageError: ``tensorboard`` is on but the tensorboard package is not installed.
    """

    def __init__(self, out_dir: Path, tensorboard: bool = False, resume_step: int | None = None) -> None:
        self.dir = Path(out_dir)
        self.jsonl = self.dir / "metrics.jsonl"
        self._headers: dict[str, list[str]] = {}  # CSV file name -> its columns (read once)
        if resume_step is not None:
            self._truncate(resume_step)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise UsageError(
                    "train.tensorboard needs the tensorboard package: pip install 'ramstrans[tensorboard]'"
                ) from e
            self.writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step)

    def _truncate(self, step: int) -> None:
        kept = [r for r in read_records(self.jsonl) if r.get("step", 0) <= step]
        for old in self.dir.glob("metrics_*.csv"):
            old.unlink()
        write_text_atomic(self.jsonl, "".join(json.dumps(r) + "\n" for r in kept))
        for r in kept:
            self._csv(r)

    def _csv(self, record: dict[str, Any]) -> None:
        path = self.dir / f"metrics_{record['kind']}.csv"
        header = self._headers.get(path.name)
        if header is None and path.is_file():  # a resumed run's table: keep its columns
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
        new = header is None
        header = self._headers[path.name] = header or list(record)
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in record.items()})

    def write(self, kind: str, record: dict[str, Any]) -> None:
        """Append one record of ``kind``."""
        record = {"kind": kind, **record}
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._csv(record)
        if self.writer is not None and "step" in record:
            tag = {"eval": f"{record.get('split')}_{record.get('weights', 'raw')}"}.get(kind, kind)
            for k, v in record.items():
                if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(f"{tag}/{k}", v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a line is written (it may be redirected after set-up)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it; the property decides
        pass


def setup_console_logging(level: int = logging.INFO) -> None:
    """Send the ``ramstrans`` logger's lines (progress off a terminal, warnings) to stderr with a time stamp."""
    log = logging.getLogger("ramstrans")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)
