"""The test-time modes every predictor runs (a checkpoint in torch, an export in onnxruntime), parsed and checked once:
``--scales``, ``--zoom-threshold``, ``--zoom-on``, ``--tta`` and predict's row options."""

from ramstrans.errors import UsageError

__all__ = [
    "ZOOM_CRITERIA",
    "TTA_CHOICES",
    "FORMATS",
    "parse_scales",
    "check_threshold",
    "resolve_threshold",
    "check_zoom_on",
    "check_tta",
    "check_options",
]

ZOOM_CRITERIA = ("maxprob", "margin", "gate")  # adaptive zoom's confidence: top probability, top-2 margin, the gate
TTA_CHOICES = ("none", "flip")
FORMATS = ("csv", "json")  # predict's rows: CSV, or JSON lines


def parse_scales(value: str | int, num_scales: int | None = None) -> int | str:
    """``--scales`` as given (a number of scales, or "auto"), checked against ``num_scales`` when given.

    Raises:
        UsageError: not a number nor "auto", or a number of scales the model does not have.
    """
    if str(value) == "auto":
        return "auto"
    try:
        scales = int(value)
    except ValueError as e:
        raise UsageError(f"--scales must be a number of scales or auto, got '{value}'") from e
    if num_scales is not None and not 1 <= scales <= num_scales:
        raise UsageError(f"the model has {num_scales} scale(s); cannot run {scales}")
    return scales


def check_threshold(threshold: float) -> float:
    """``--zoom-threshold``, which must lie in [0, 1].

    Raises:
        UsageError: outside [0, 1] (or NaN).
    """
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--zoom-threshold must be in [0, 1], got {threshold}")
    return threshold


def _one_of(value: str, choices: tuple[str, ...], flag: str) -> str:
    """``value`` if it is one of ``choices``.

    Raises:
        UsageError: another value, naming ``flag`` and the choices.
    """
    if value not in choices:
        raise UsageError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_zoom_on(zoom_on: str) -> str:
    """``--zoom-on``, one of ``ZOOM_CRITERIA`` (else a UsageError)."""
    return _one_of(zoom_on, ZOOM_CRITERIA, "--zoom-on")


def check_tta(tta: str) -> str:
    """``--tta``, one of ``TTA_CHOICES`` (else a UsageError)."""
    return _one_of(tta, TTA_CHOICES, "--tta")


def resolve_threshold(gate_threshold: float | None, zoom_on: str, threshold: float | None) -> float:
    """``--zoom-threshold`` as given, or by default the threshold chosen when the model's zoom gate was fitted
    (``gate_threshold``, with ``--zoom-on gate``) or 0.5; checked to lie in [0, 1].

    Raises:
        UsageError: ``--zoom-on gate`` for a model without a fitted gate, or a threshold outside [0, 1].
    """
    if check_zoom_on(zoom_on) == "gate" and gate_threshold is None:
        raise UsageError(
            "--zoom-on gate needs a checkpoint with a fitted zoom gate: ramstrans fit-gate --checkpoint ... writes one"
        )
    if threshold is None:
        threshold = gate_threshold if gate_threshold is not None and zoom_on == "gate" else 0.5
    return check_threshold(threshold)


def check_options(topk: int, fmt: str, batch_size: int, zoom_threshold: float | None, tta: str = "none") -> None:
    """Refuse impossible predict options before anything is read (a typo fails at once, before a model loads).

    Raises:
        UsageError: naming the option.
    """
    check_tta(tta)
    if topk < 1 or fmt not in FORMATS or batch_size < 1:
        raise UsageError(
            f"--topk and --batch-size must be at least 1 and --format csv or json (got {topk}, {batch_size}, {fmt})"
        )
    if zoom_threshold is not None:
        check_threshold(zoom_threshold)
