"""Every number and record field checked in one place: a command-line number (``number``, ``whole_numbers``) and a
field of a record the toolkit reads back from its own files (``Fields``: an ONNX file's metadata, a temperature file,
an export folder's ``ramstrans.json``). Each failure is one sentence that names the option, or the file and the field,
and what was found; numbers are finite, in range, and whole where counts are meant.

Plain functions and dataclass readers, not a validation library: the checks that matter here (a field against the
graph it describes, a temperature against the weights it was fitted on) are the toolkit's own, the messages must name
the file, and ``deploy/`` (predict on an ONNX file) stays light. Imports nothing beyond the standard library.
"""

import json
import math
from collections.abc import Sequence
from typing import Any

from ramstrans.errors import UsageError, short_repr

__all__ = ["number", "whole_numbers", "Fields", "MISSING"]

MISSING: Any = object()  # a field without a default: required


def _bounds(low: float | None, high: float | None, above: float | None) -> str:
    """The range in words: "≥ 0", "> 0", "in [0, 1]", "in (0, 2]"."""
    if above is not None and high is not None:
        return f"in ({above:g}, {high:g}]"
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    if above is not None:
        return f"> {above:g}"
    if low is not None:
        return f"≥ {low:g}"
    return f"≤ {high:g}" if high is not None else "finite"


def _problem(
    value: Any, low: float | None, high: float | None, above: float | None, integer: bool
) -> tuple[str, float | int | None]:
    """What is wrong with ``value`` as a number (empty when nothing) and the number itself."""
    kind = "a whole number" if integer else "a number"
    want = f"{kind} {_bounds(low, high, above)}".strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be {want}", None
    if isinstance(value, float) and not math.isfinite(value):  # an int is finite however large
        return f"must be {want} (finite)", None
    if integer and value != int(value):
        return f"must be {want}", None
    out: float | int = int(value) if integer else float(value)
    inside = (low is None or out >= low) and (high is None or out <= high) and (above is None or out > above)
    return ("" if inside else f"must be {want}"), out


def number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    integer: bool = False,
    error: type[UsageError] = UsageError,
) -> Any:
    """``value`` checked to be a finite number (``integer``: whole) with ``low <= value <= high`` and ``value > above``
    (each bound optional); returns it as int or float.

    Raises:
        UsageError (or ``error``): one sentence naming ``name``.
    """
    problem, out = _problem(value, low, high, above, integer)
    if problem:
        raise error(f"{name} {problem}, got {short_repr(value)}")
    return out


def whole_numbers(text: str, name: str, *, low: int = 0) -> list[int]:
    """A comma-separated list of whole numbers ≥ ``low`` (``--seeds 0,1,2``), at least one.

    Raises:
        UsageError: empty, or an entry that is not such a number, naming ``name``.
    """
    parts = [p.strip() for p in text.split(",")]
    values: list[int] = []
    for part in parts:
        try:
            values.append(int(part))
        except ValueError:
            values = []
            break
    if not values or any(v < low for v in values):
        raise UsageError(f"{name} must be comma-separated whole numbers ≥ {low} (e.g. 0,1,2), got {text!r}")
    return values


class Fields:
    """Typed reads of one JSON object a file holds, each failure one sentence naming the file and the field.

    Args:
        data: the object (a ``dict``), or anything else, refused.
        where: the file and the record, as the message names them (e.g. "model.onnx's 'ramstrans' record").
        error: the error class raised (a ``UsageError``).
        prefix: the dotted path of this object inside the record ("preprocess").

    Raises:
        UsageError (or ``error``): ``data`` is not a JSON object.
    """

    def __init__(self, data: Any, where: str, error: type[UsageError] = UsageError, prefix: str = "") -> None:
        if not isinstance(data, dict):
            at = f" field '{prefix}'" if prefix else ""
            raise error(f"{where}{at} must be a JSON object, got {short_repr(data)}")
        self.data, self.where, self.error, self.prefix = data, where, error, prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, problem: str) -> UsageError:
        """The error of field ``key``: "<where> field '<key>' <problem>"."""
        return self.error(f"{self.where} field '{self._name(key)}' {problem}")

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def get(self, key: str, default: Any = MISSING) -> Any:
        """The raw value of ``key`` (``default`` when absent or null; required without one)."""
        if not self.has(key):
            if default is MISSING:
                raise self.fail(key, "is missing")
            return default
        return self.data[key]

    def number(self, key: str, default: Any = MISSING, **bounds: Any) -> Any:
        """A finite number (``number``'s bounds: low, high, above, integer)."""
        if default is not MISSING and not self.has(key):
            return default
        value = self.get(key)
        low, high, above = bounds.get("low"), bounds.get("high"), bounds.get("above")
        problem, out = _problem(value, low, high, above, bounds.get("integer", False))
        if problem:
            raise self.fail(key, f"{problem}, got {short_repr(value)}")
        return out

    def numbers(self, key: str, lengths: Sequence[int], **bounds: Any) -> list[float]:
        """A list of ``lengths`` finite numbers (e.g. (1, 3): one, or one per channel), each within ``bounds``."""
        values = self.get(key)
        if not isinstance(values, list) or len(values) not in lengths:
            counts = " or ".join(str(n) for n in lengths)
            raise self.fail(key, f"must be a list of {counts} numbers, got {short_repr(values)}")
        item = Fields(dict(enumerate(values)), self.where, self.error, self._name(key))
        return [float(item.number(i, **bounds)) for i in range(len(values))]  # type: ignore[arg-type]

    def text(self, key: str, default: Any = MISSING, choices: Sequence[str] = ()) -> Any:
        """A string (one of ``choices`` when given)."""
        if default is not MISSING and not self.has(key):
            return default
        value = self.get(key)
        if not isinstance(value, str) or (choices and value not in choices):
            want = f"one of {', '.join(choices)}" if choices else "a string"
            raise self.fail(key, f"must be {want}, got {short_repr(value)}")
        return value

    def texts(self, key: str) -> list[str]:
        """A non-empty list of strings."""
        values = self.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise self.fail(key, f"must be a non-empty list of strings, got {short_repr(values)}")
        return list(values)

    def sub(self, key: str, default: Any = MISSING) -> "Fields":
        """The nested object ``key`` as its own reader (``default`` when absent: an empty object unless required)."""
        value = self.get(key, default)
        return Fields(value, self.where, self.error, self._name(key))

    def json(self, key: str, default: Any = MISSING) -> Any:
        """A string field that holds JSON (an ONNX file's metadata values are strings), parsed."""
        if default is not MISSING and not self.has(key):
            return default
        text = self.get(key)
        if not isinstance(text, str):
            raise self.fail(key, f"must be a string of JSON, got {short_repr(text)}")
        try:
            return json.loads(text)
        except ValueError as e:
            raise self.fail(key, f"is not JSON ({str(e).splitlines()[0][:80]})") from e
