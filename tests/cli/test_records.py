"""Nothing read is trusted unchecked (issue 40): an ONNX file's record, a temperature file, a zoom gate and an export
folder's ``ramstrans.json`` edited by hand, numbers out of range, and outputs that would replace a file the command
reads on its own. Each case is exit 2 and one sentence naming the file and the field (or the option), never a
traceback, and nothing written."""

import json
import math
import os
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from conftest import TINY_TRAIN, sets

from ramstrans.cli import main
from ramstrans.models import ZoomGate

pytestmark = pytest.mark.slow  # end to end through the CLI


def _one_sentence(capsys) -> str:
    """The command's error: one line (after any progress log), without a traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("ramstrans: error:")]
    assert len(errors) == 1 and err.endswith(errors[0]), err
    return errors[0]


def _image(synthetic_root: Path) -> Path:
    return sorted((synthetic_root / "images").rglob("*.jpg"))[0]


def _edited(src: Path, dst: Path, record=None, meta=None) -> Path:
    """A copy of the ONNX file ``src`` whose 'ramstrans' record (``record(dict)`` edits it in place) and other
    metadata entries (``meta``: key -> new string) were edited by hand."""
    proto = onnx.load(str(src))
    props = {p.key: p for p in proto.metadata_props}
    if record is not None:
        rec = json.loads(props["ramstrans"].value)
        record(rec)
        props["ramstrans"].value = json.dumps(rec)
    for key, value in (meta or {}).items():
        props[key].value = value
    onnx.save(proto, str(dst))
    return dst


def _set(path: str, value):
    """An edit of a record: the dotted ``path`` set to ``value``."""

    def edit(rec):
        *parents, last = path.split(".")
        for key in parents:
            rec = rec[key]
        rec[last] = value

    return edit


def _predict(onnx_file: Path, synthetic_root: Path, tmp_path: Path, *extra: str) -> int:
    return main(["predict", str(onnx_file), str(_image(synthetic_root)), "--out", str(tmp_path / "rows.csv"), *extra])


@pytest.mark.parametrize(
    "record,meta,fragment",
    [
        (_set("preprocess.crop", -64), None, "field 'preprocess.crop' must be a whole number ≥ 1, got -64"),
        (_set("temperature", "warm"), None, "field 'temperature' must be a number > 0, got 'warm'"),
        (_set("temperature", -1), None, "field 'temperature' must be a number > 0, got -1"),
        (_set("num_scales", "two"), None, "field 'num_scales' must be a whole number"),
        (_set("preprocess.mean", [0.5, 0.5, 0.5, 0.5]), None, "field 'preprocess.mean' must be a list of 1 or 3"),
        (_set("preprocess.std", [0.0, 0.5, 0.5]), None, "field 'preprocess.std.0' must be a number > 0, got 0.0"),
        (None, {"config": "{not json"}, "metadata field 'config' is not JSON"),
        (None, {"class_names": json.dumps(["a", "b"])}, "gives 3 logits but its metadata field 'class_names' names 2"),
    ],
    ids=["crop", "temperature_text", "temperature_negative", "num_scales", "mean4", "std0", "config", "names"],
)
def test_a_hand_edited_onnx_record_is_one_sentence_naming_the_field(
    exported, synthetic_root, tmp_path, capsys, record, meta, fragment
):
    _, files = exported
    bad = _edited(files["scale1"], tmp_path / "m.onnx", record, meta)
    assert _predict(bad, synthetic_root, tmp_path) == 2
    err = _one_sentence(capsys)
    assert str(bad) in err and fragment in err
    assert not (tmp_path / "rows.csv").exists()
    assert main(["eval", "--checkpoint", str(bad), "--output", str(tmp_path / "e")]) == 2  # eval reads it the same
    assert fragment in _one_sentence(capsys) and not (tmp_path / "e").exists()


def test_another_graph_with_a_copied_record_is_refused(exported, synthetic_root, tmp_path, capsys):
    _, files = exported
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["input"], ["output"])],
        "other",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["B", 3, 64, 64])],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["B", 3, 64, 64])],
    )
    other = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    other.ir_version = 9
    other.metadata_props.extend(onnx.load(str(files["scale1"])).metadata_props)
    onnx.save(other, str(tmp_path / "other.onnx"))
    assert _predict(tmp_path / "other.onnx", synthetic_root, tmp_path) == 2
    err = _one_sentence(capsys)
    assert "does not take what its record describes: one float32 input 'images', found input" in err


def test_predict_never_replaces_the_companion_graph_it_reads(exported, synthetic_root, tmp_path, capsys):
    _, files = exported
    shutil.copy(files["fp32"], tmp_path / "fp32.onnx")
    shutil.copy(files["scale1"], tmp_path / "fp32.scale1.onnx")
    os.link(tmp_path / "fp32.scale1.onnx", tmp_path / "hard.onnx")
    (tmp_path / "soft.onnx").symlink_to(tmp_path / "fp32.scale1.onnx")
    before = (tmp_path / "fp32.scale1.onnx").read_bytes()
    for out in ("fp32.scale1.onnx", "hard.onnx", "soft.onnx"):
        args = ["predict", str(tmp_path / "fp32.onnx"), str(_image(synthetic_root)), "--scales", "auto"]
        assert main(args + ["--out", str(tmp_path / out), "--overwrite"]) == 2
        assert "is one of the command's inputs" in _one_sentence(capsys)
    assert (tmp_path / "fp32.scale1.onnx").read_bytes() == before


def test_a_timm_folder_and_the_data_set_are_protected_too(trained, synthetic_root, tmp_path, capsys):
    folder = tmp_path / "timm"
    assert main(["export", "--checkpoint", str(trained / "checkpoint.pth"), "--out", str(folder)]) == 0
    capsys.readouterr()
    before = (folder / "config.json").read_bytes()
    args = ["predict", str(folder), str(_image(synthetic_root)), "--out", str(folder / "config.json"), "--overwrite"]
    assert main(args) == 2
    assert "whose files the command reads" in _one_sentence(capsys)
    assert (folder / "config.json").read_bytes() == before
    from ramstrans.config import config_from_dict
    from ramstrans.data import load_index

    ckpt = torch.load(trained / "checkpoint.pth", weights_only=True)
    victim = sorted(load_index(config_from_dict(ckpt["config"]).data).root.rglob("*.jpg"))[0]
    image = victim.read_bytes()
    args = ["export", "--checkpoint", str(trained / "checkpoint.pth"), "--format", "onnx", "--precision", "int8"]
    assert main(args + ["--calibration-images", "4", "--out", str(victim), "--overwrite"]) == 2  # int8 reads it
    assert "whose files the command reads" in _one_sentence(capsys)
    assert victim.read_bytes() == image


def _gated(trained: Path, tmp_path: Path, edit) -> Path:
    """The tiny run's checkpoint with a zoom gate of the right size for it, then ``edit(state, record)``."""
    ckpt = torch.load(trained / "checkpoint.pth", weights_only=True)
    gate = ZoomGate(32 + 3 + 3)  # TINY_TRAIN: 32 features, 3 classes
    gate.threshold.fill_(0.5)
    record = {"state": gate.state_dict(), "split": "val", "images": 9, "l2": 0.1, "threshold": 0.5, "temperature": 1.0}
    edit(record["state"], record)
    ckpt["zoom_gate"] = record
    torch.save(ckpt, tmp_path / "gated.pth")
    return tmp_path / "gated.pth"


def _nan_weights(state, record):
    state["linear.weight"][0, 0] = float("nan")


def _other_classes(state, record):
    other = ZoomGate(32 + 5 + 3).state_dict()
    state.clear()
    state.update(other)


def _nan_threshold(state, record):
    state["threshold"].fill_(float("nan"))


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (_nan_weights, "zoom gate field 'zoom_gate.state.linear.weight' holds NaN"),
        (_other_classes, "zoom gate reads 40 inputs, not the 38 of this model"),
        (_nan_threshold, "zoom gate field 'zoom_gate.state.threshold' holds NaN"),
    ],
    ids=["nan_weights", "other_classes", "nan_threshold"],
)
def test_a_damaged_or_foreign_zoom_gate_is_refused_naming_the_checkpoint(trained, tmp_path, capsys, edit, fragment):
    ckpt = _gated(trained, tmp_path, edit)
    args = ["eval", "--checkpoint", str(ckpt), "--scales", "auto", "--zoom-on", "gate", "--output", str(tmp_path / "e")]
    assert main(args) == 2
    err = _one_sentence(capsys)
    assert f"checkpoint {ckpt}" in err and fragment in err and "--zoom-threshold" not in err
    assert not (tmp_path / "e").exists()


def _temperature_beside(ckpt: Path, record: dict) -> Path:
    path = ckpt.with_name(ckpt.name + ".temperature.json")
    path.write_text(json.dumps(record))
    return path


def test_a_temperature_fitted_on_other_weights_is_refused(trained, tmp_path, capsys):
    from ramstrans.checkpoint import weights_hash

    ckpt = torch.load(trained / "checkpoint.pth", weights_only=True)
    weights = "ema" if isinstance(ckpt.get("model_ema"), dict) else "raw"
    state = ckpt["model_ema" if weights == "ema" else "model"]
    fitted_on = weights_hash(state)
    for v in state.values():  # another model of the same step: its weights differ
        if v.is_floating_point():
            v.add_(0.01)
    torch.save(ckpt, tmp_path / "other.pth")
    record = {"temperature": 148.0, "step": ckpt["step"], "weights": weights, "weights_hash": fitted_on}
    _temperature_beside(tmp_path / "other.pth", record)
    assert main(["eval", "--checkpoint", str(tmp_path / "other.pth"), "--output", str(tmp_path / "e")]) == 2
    err = _one_sentence(capsys)
    assert "other.pth.temperature.json was fitted on other weights" in err and fitted_on in err
    # on the weights it was fitted on, it applies
    shutil.copy(trained / "checkpoint.pth", tmp_path / "same.pth")
    _temperature_beside(tmp_path / "same.pth", record)
    from ramstrans.inference.load import load_model

    assert load_model(tmp_path / "same.pth").model.temperature == 148.0


@pytest.mark.parametrize(
    "record,fragment",
    [
        ({"temperature": "warm", "step": 3, "weights": "raw"}, "field 'temperature' must be a number > 0"),
        ({"temperature": float("nan"), "step": 3, "weights": "raw"}, "field 'temperature' must be a number > 0"),
        ({"temperature": 1.5, "step": -3, "weights": "raw"}, "field 'step' must be a whole number ≥ 0"),
        ({"temperature": 1.5, "step": 3, "weights": "both"}, "field 'weights' must be one of raw, ema"),
    ],
)
def test_a_hand_edited_temperature_file_names_the_field(trained, tmp_path, capsys, record, fragment):
    shutil.copy(trained / "checkpoint.pth", tmp_path / "c.pth")
    path = _temperature_beside(tmp_path / "c.pth", record)
    assert main(["eval", "--checkpoint", str(tmp_path / "c.pth"), "--output", str(tmp_path / "e")]) == 2
    err = _one_sentence(capsys)
    assert str(path) in err and fragment in err


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("temperature", "warm", "field 'temperature' must be a number > 0"),
        ("num_scales", 0, "field 'num_scales' must be a whole number ≥ 1"),
        ("class_names", "abc", "field 'class_names' must be a non-empty list of strings"),
    ],
)
def test_a_hand_edited_export_folder_record_names_the_field(
    trained, synthetic_root, tmp_path, capsys, key, value, fragment
):
    folder = tmp_path / "timm"
    assert main(["export", "--checkpoint", str(trained / "checkpoint.pth"), "--out", str(folder)]) == 0
    info = json.loads((folder / "ramstrans.json").read_text())
    info[key] = value
    (folder / "ramstrans.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert _predict(folder, synthetic_root, tmp_path) == 2
    err = _one_sentence(capsys)
    assert "ramstrans.json" in err and fragment in err


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (
            ["eval", "--checkpoint", "{ckpt}", "--many-shot", "-1"],
            "eval --many-shot must be a whole number ≥ 0, got -1",
        ),
        (
            ["bench", "gpu", "--device", "cpu", "--tiny", "--budget-s", "nan"],
            "bench gpu --budget-s must be a number > 0",
        ),
        (["bench", "longtail", "--seeds", ""], "bench longtail --seeds must be comma-separated whole numbers"),
        (["bench", "longtail", "--ratios", "0"], "bench longtail --ratios must be comma-separated positive numbers"),
        (["bench", "demo", "--seeds", "0,x"], "bench demo --seeds must be"),
        (
            ["predict", "{ckpt}", "{img}", "--zoom-threshold", "nan"],
            "predict --zoom-threshold must be a number in [0, 1]",
        ),
        (["train", "--output-dir", "{tmp}/r", *sets(*TINY_TRAIN, "data.val_fraction=0.99")], "data.val_fraction"),
    ],
    ids=["many_shot", "budget_nan", "seeds_empty", "ratios_zero", "seeds_text", "threshold_nan", "val_fraction"],
)
def test_numbers_are_checked_in_one_place(trained, synthetic_root, tmp_path, capsys, argv, fragment):
    fmt = dict(ckpt=trained / "checkpoint.pth", img=_image(synthetic_root), tmp=tmp_path)
    args = [str(fmt[a[1:-1]]) if a[1:-1] in fmt else a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(args) == 2
    err = _one_sentence(capsys)
    assert fragment in err and "bench zoom" not in err


def test_calibration_images_above_the_split_are_said(trained, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    args = ["export", "--checkpoint", str(trained / "checkpoint.pth"), "--format", "onnx", "--out", str(out)]
    assert main(args + ["--precision", "int8", "--calibration-images", "1000"]) == 0
    err = capsys.readouterr().err
    assert "--calibration-images 1000 is more than the 18 images" in err and "calibrated on all 18" in err
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["ramstrans"])["calibration"]["images"] == 18


def test_a_full_temp_folder_during_int8_calibration_names_it(trained, tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", full)
    out = tmp_path / "m.onnx"
    args = ["export", "--checkpoint", str(trained / "checkpoint.pth"), "--format", "onnx", "--out", str(out)]
    assert main(args + ["--precision", "int8", "--calibration-images", "4"]) == 2
    err = _one_sentence(capsys)
    assert f"no space left on device: {tempfile.gettempdir()}" in err and "TMPDIR" in err
    assert not out.exists()


def test_no_nan_is_written_as_a_score(exported, synthetic_root, tmp_path, capsys):
    """The std-0 record of the issue wrote NaN scores as rows: now refused before any row (above); a clean file's rows
    are finite probabilities."""
    _, files = exported
    assert _predict(files["scale1"], synthetic_root, tmp_path, "--format", "json") == 0
    row = json.loads((tmp_path / "rows.csv").read_text().splitlines()[0])
    assert len(row["top"]) == 3 and all(math.isfinite(p["prob"]) for p in row["top"])


def test_a_folder_that_cannot_be_written_names_the_output(trained, tmp_path, capsys, monkeypatch):
    """Not the temp name beside it (``.m.onnx.x1y2.tmp``): the file the user asked for."""
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(Path(kwargs.get("dir", ".")) / ".m.onnx.x1y2.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(trained / "checkpoint.pth"), "--format", "onnx", "--out", str(out)]) == 2
    err = _one_sentence(capsys)
    assert f"cannot write {out} (Permission denied)" in err and ".tmp" not in err


def test_an_output_never_replaces_the_temperature_file_it_reads(trained, tmp_path, capsys):
    from ramstrans.inference.temperature import fitted_weights_hash

    ckpt = torch.load(trained / "checkpoint.pth", weights_only=True)
    weights = "ema" if isinstance(ckpt.get("model_ema"), dict) else "raw"
    shutil.copy(trained / "checkpoint.pth", tmp_path / "c.pth")
    record = {
        "temperature": 1.5,
        "step": ckpt["step"],
        "weights": weights,
        "weights_hash": fitted_weights_hash(ckpt, weights),
    }
    path = _temperature_beside(tmp_path / "c.pth", record)
    before = path.read_bytes()
    args = ["export", "--checkpoint", str(tmp_path / "c.pth"), "--format", "onnx", "--out", str(path), "--overwrite"]
    assert main(args) == 2
    assert f"is one of the command's inputs ({path})" in _one_sentence(capsys)
    assert path.read_bytes() == before


def test_a_hand_edited_bench_record_names_the_field(tmp_path, capsys):
    """bench glance --split test reads the thresholds its validation screen chose: checked like any record."""
    (tmp_path / "b" / "hires").mkdir(parents=True)
    (tmp_path / "b" / "hires" / "val_result.json").write_text(json.dumps({"rows": {"gf_48_64": {"threshold": "x"}}}))
    args = ["bench", "glance", "--split", "test", "--seeds", "0", "--rows", "gf_48_64", "--out", str(tmp_path / "b")]
    assert main(args) == 2
    assert "val_result.json field 'rows.gf_48_64.threshold' must be a number in [0, 1], got 'x'" in _one_sentence(
        capsys
    )


def test_eval_never_writes_into_the_data_set_it_reads(trained, tmp_path, capsys):
    from ramstrans.config import config_from_dict
    from ramstrans.data import load_index

    ckpt = torch.load(trained / "checkpoint.pth", weights_only=True)
    root = load_index(config_from_dict(ckpt["config"]).data).root
    listing = sorted(p.name for p in root.iterdir())
    args = ["eval", "--checkpoint", str(trained / "checkpoint.pth"), "--report", "--overwrite", "--output", str(root)]
    assert main(args) == 2
    assert "whose files the command reads: choose a folder of its own" in _one_sentence(capsys)
    assert sorted(p.name for p in root.iterdir()) == listing
