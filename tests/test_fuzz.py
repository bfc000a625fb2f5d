"""Property-based tests (Hypothesis) of everything the toolkit reads back: an ONNX file's metadata record, a temperature
file, a zoom gate, a config document and ``--set`` values. Each generated input either loads into a checked record
(finite numbers in range, no NaN anywhere) or fails with the toolkit's one typed error (``UsageError`` and its
subclasses) and its sentence: never another exception. Example counts are small, so the suite keeps its time."""

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ramstrans.config import Config, load_config
from ramstrans.deploy.records import OnnxRecord, read_onnx_record, read_temperature_record
from ramstrans.errors import CheckpointError, UsageError
from ramstrans.models import ZoomGate

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: a 400-digit count is finite, and must not overflow a float check
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
CLASSES = ["a", "b", "c"]


def _valid_record() -> dict:
    return {
        "preprocess": {"resize": 72, "crop": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "graph": "single",
        "num_scales": 1,
        "precision": "fp32",
        "temperature": 1.0,
        "provenance": {"step": 3},
    }


class _Session:
    """What ``read_onnx_record`` asks of an onnxruntime session: metadata and the graph's inputs and outputs (a 64-px
    single-scale graph of 3 classes)."""

    def __init__(self, meta: dict[str, str]) -> None:
        self.meta = meta

    def get_modelmeta(self):
        return SimpleNamespace(custom_metadata_map=self.meta)

    def get_inputs(self):
        return [SimpleNamespace(name="images", type="tensor(float)", shape=["batch", 3, 64, 64])]

    def get_outputs(self):
        return [SimpleNamespace(name="logits", shape=["batch", 3])]


def _finite_record(r: OnnxRecord) -> None:
    """A loaded record: every number finite and in range, as many names as logits."""
    p = r.preprocess
    assert p.crop >= 1 and p.resize >= p.crop and len(p.mean) == len(p.std) == 3
    assert all(math.isfinite(v) for v in (*p.mean, *p.std)) and min(p.std) > 0
    assert math.isfinite(r.temperature) and r.temperature > 0 and r.num_scales == 1
    assert r.zoom_threshold is None or 0 <= r.zoom_threshold <= 1
    assert r.class_names == CLASSES


@FUZZ
@given(
    path=st.sampled_from(
        sorted(_valid_record())
        + ["preprocess.crop", "preprocess.resize", "preprocess.mean", "preprocess.std", "provenance.step"]
    ),
    value=JSON,
)
def test_an_onnx_record_with_any_field_replaced_loads_checked_or_is_refused(path, value):
    record = _valid_record()
    node, *rest = path.split(".")
    if rest:
        record[node][rest[0]] = value
    else:
        record[node] = value
    meta = {"ramstrans": json.dumps(record), "class_names": json.dumps(CLASSES)}
    try:
        _finite_record(read_onnx_record(_Session(meta), Path("m.onnx")))
    except CheckpointError as e:
        assert str(e).startswith("m.onnx") and "\n" not in str(e)


@FUZZ
@given(
    record=st.text(max_size=30) | JSON.map(json.dumps),
    names=st.text(max_size=20) | JSON.map(json.dumps),
    threshold=st.text(max_size=6),
    config=st.text(max_size=20) | JSON.map(json.dumps),
)
def test_any_metadata_strings_load_checked_or_are_refused(record, names, threshold, config):
    meta = {"ramstrans": record, "class_names": names, "zoom_threshold": threshold, "config": config}
    try:
        r = read_onnx_record(_Session(meta), Path("m.onnx"))
    except CheckpointError as e:
        assert "m.onnx" in str(e)
        return
    assert r.zoom_threshold is not None and 0 <= r.zoom_threshold <= 1 and math.isfinite(r.temperature)


@FUZZ
@given(
    doc=st.dictionaries(st.sampled_from(["temperature", "step", "weights", "weights_hash", "x"]), JSON, max_size=5)
    | JSON
)
def test_a_temperature_file_loads_checked_or_is_refused(tmp_path, doc):
    path = tmp_path / "c.pth.temperature.json"
    path.write_text(json.dumps(doc))
    try:
        r = read_temperature_record(path)
    except CheckpointError as e:
        assert str(path) in str(e)
        return
    assert math.isfinite(r.temperature) and r.temperature > 0 and r.step >= 0 and r.weights in ("raw", "ema")


def _tensor(shape, fill):
    return torch.full(shape, fill, dtype=torch.float64).float() if shape is not None else "not a tensor"


@FUZZ
@given(
    size=st.sampled_from([38, 40, 5]),
    fills=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=5, max_size=5),
    broken=st.sampled_from([None, "mean", "std", "threshold", "linear.weight", "linear.bias"]),
)
def test_a_zoom_gate_loads_checked_or_is_refused(size, fills, broken):
    shapes = {"mean": (size,), "std": (size,), "threshold": (), "linear.weight": (1, size), "linear.bias": (1,)}
    state = {k: _tensor(None if k == broken else s, f) for (k, s), f in zip(shapes.items(), fills)}
    try:
        gate = ZoomGate.from_record({"state": state}, 32, 3, "checkpoint c.pth")
    except CheckpointError as e:
        assert "checkpoint c.pth" in str(e)
        return
    assert all(torch.isfinite(t).all() for t in gate.state_dict().values())
    assert 0 <= float(gate.threshold) <= 1 and bool((gate.std > 0).all())


def _fields(cls) -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type):
            out += [f"{f.name}.{sub}" for sub in _fields(f.type)]
        else:
            out.append(f.name)
    return out


KEYS = [f"{s.name}.{k}" for s in dataclasses.fields(Config) for k in _fields(s.type)]


def _no_nan(node) -> None:
    """Every float of a loaded config is finite."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _no_nan(value)
        elif isinstance(value, float):
            assert math.isfinite(value), f.name
        elif isinstance(value, (list, tuple)):
            assert all(math.isfinite(v) for v in value if isinstance(v, float)), f.name


@FUZZ
@given(
    key=st.sampled_from(KEYS) | st.text(max_size=12),
    value=SCALARS.map(lambda v: yaml.safe_dump(v).strip().removesuffix("...").strip()) | st.text(max_size=12),
)
def test_any_set_value_loads_checked_or_is_refused(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except UsageError as e:
        assert "\n" not in str(e).strip()
        return
    _no_nan(cfg)


@FUZZ
@given(
    doc=st.dictionaries(
        st.sampled_from([k.split(".")[0] for k in KEYS] + ["base", "x"]),
        st.dictionaries(st.sampled_from([k.split(".", 1)[1] for k in KEYS] + ["x"]), JSON, max_size=3) | JSON,
        max_size=3,
    )
    | JSON
)
def test_any_config_document_loads_checked_or_is_refused(tmp_path, doc):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        cfg = load_config(str(path))
    except (UsageError, FileNotFoundError) as e:  # a base naming a config that does not exist
        assert "\n" not in str(e).strip()
        return
    _no_nan(cfg)


@pytest.mark.parametrize("key", ["train.lr", "loss.label_smoothing", "model.alpha", "data.val_fraction"])
def test_a_nan_setting_is_refused(key):
    with pytest.raises(UsageError, match=key.split(".")[1]):
        load_config(None, [f"{key}=.nan"])


def test_a_fused_record_of_one_scale_is_refused_even_where_the_value_equals_the_default():
    record = {**_valid_record(), "graph": "fused", "num_scales": 1}
    meta = {"ramstrans": json.dumps(record), "class_names": json.dumps(CLASSES)}
    with pytest.raises(CheckpointError, match="field 'num_scales' must be a whole number ≥ 2, got 1"):
        read_onnx_record(_Session(meta), Path("m.onnx"))


def test_a_gate_with_another_key_is_refused():
    state = ZoomGate(38).state_dict()
    state["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="must hold exactly the tensors"):
        ZoomGate.from_record({"state": state}, 32, 3, "checkpoint c.pth")


def test_an_export_record_drops_its_null_fields(tmp_path):
    from ramstrans.deploy.records import read_export_info

    (tmp_path / "ramstrans.json").write_text(
        json.dumps({"temperature": None, "num_scales": None, "model_type": "rams"})
    )
    assert read_export_info(tmp_path / "ramstrans.json") == {"model_type": "rams"}
