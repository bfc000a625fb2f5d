"""Glance and focus through the command line: a run trained with each scale at its own size and the zoom cropped
from a larger source evaluates, draws, exports to ONNX (the source's preprocessing in the record, the downsample and
the crop in the graph) and predicts the same rows from the ONNX file as from the checkpoint."""

import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch

from ramstrans.cli import main
from tests.conftest import TINY_TRAIN, eval_summary, sets

GLANCE = [*TINY_TRAIN, "model.scale_sizes=[32,64]", "model.zoom_source=source", "data.source_size=128"]


@pytest.fixture(scope="module")
def glance_run(tmp_path_factory):
    """The tiny run trained as glance (32 px) and focus (64 px) from a 128-px source, attention sharpened (real
    boxes), exported fused in fp32, fp16 and int8."""
    out = tmp_path_factory.mktemp("glance")
    assert main(["train", "--no-progress", "--output-dir", str(out / "run")] + sets(*GLANCE)) == 0
    ckpt = torch.load(out / "run" / "checkpoint.pth", weights_only=True)
    for k, v in ckpt["model"].items():
        if k.endswith("attn.qkv.weight"):
            v[: 2 * 32].mul_(8.0)
    torch.save(ckpt, out / "checkpoint.pth")
    files = {}
    for precision in ("fp32", "fp16", "int8"):
        files[precision] = out / f"model_{precision}.onnx"
        args = ["export", "--checkpoint", str(out / "checkpoint.pth"), "--format", "onnx", "--scales", "2", "--out"]
        args += [str(files[precision]), "--precision", precision, "--calibration-images", "8"]
        assert main(args) == 0
    return out, files


def test_the_record_states_the_source_preprocessing(glance_run):
    from ramstrans.deploy.session import OnnxModel

    _, files = glance_run
    record = OnnxModel(files["fp32"]).record
    assert record["preprocess"]["crop"] == 128 and record["preprocess"]["resize"] == 144  # 72 * 128 / 64
    config = OnnxModel(files["fp32"]).config
    assert config["model"]["scale_sizes"] == [32, 64] and config["data"]["source_size"] == 128


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_predict_on_the_onnx_file_and_on_the_checkpoint_agree_row_by_row(
    glance_run, synthetic_root, tmp_path, precision
):
    root, files = glance_run
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, src in enumerate(sorted((synthetic_root / "images").rglob("*.jpg"))[:6]):
        shutil.copy(src, imgs / f"{i}.jpg")
    rows = {}
    for name, model in (("ckpt", root / "checkpoint.pth"), ("onnx", files[precision])):
        out = tmp_path / f"{name}.csv"
        assert main(["predict", str(model), str(imgs), "--scales", "2", "--out", str(out), "--no-progress"]) == 0
        rows[name] = list(csv.DictReader(io.StringIO(out.read_text())))
    tol = {"fp32": 1e-5, "fp16": 2e-3, "int8": 0.1}[precision]
    assert len(rows["ckpt"]) == 6
    for a, b in zip(rows["ckpt"], rows["onnx"]):
        assert a["path"] == b["path"] and a["status"] == b["status"] == "ok"
        assert float(a["prob_1"]) == pytest.approx(float(b["prob_1"]), abs=tol)
        if precision != "int8":
            assert a["class_1"] == b["class_1"]


def test_eval_and_visualize_run_with_boxes_in_source_pixels(glance_run, capsys, tmp_path):
    root, _ = glance_run
    ckpt = str(root / "checkpoint.pth")
    assert main(["eval", "--checkpoint", ckpt, "--scales", "2", "--output", str(tmp_path / "ev")]) == 0
    summary = eval_summary(capsys)
    assert summary["passes_per_image"] == 2.0 and 0.0 <= summary["loc_miou"] <= 1.0
    assert main(["visualize", "--checkpoint", ckpt, "--num", "2", "--output", str(tmp_path / "vis")]) == 0
    assert len(list((tmp_path / "vis").glob("0*.png"))) == 2
    from ramstrans.inference.load import load_model

    model = load_model(ckpt).zoom_model("the test")
    prop = model.propose(torch.randn(2, 3, 128, 128))
    assert float(prop.boxes.max()) <= 128.0 and float(prop.boxes.min()) >= 0.0
    assert set((prop.boxes % 64).flatten().tolist()) == {0.0}  # 16-px cells of the 32-px glance, times 4


def test_a_client_that_feeds_another_size_gets_one_sentence(glance_run):
    from ramstrans.deploy.session import OnnxModel
    from ramstrans.errors import UsageError

    onnx = OnnxModel(glance_run[1]["fp32"])
    with pytest.raises(UsageError, match="takes 128 x 128 images"):
        onnx.predict(np.zeros((1, 3, 64, 64), np.float32), 2)


def test_the_timm_folder_refuses_a_glance_model_in_one_sentence(glance_run, capsys):
    root, _ = glance_run
    assert main(["export", "--checkpoint", str(root / "checkpoint.pth"), "--format", "timm", "--out", "timm_out"]) == 2
    assert "model.scale_sizes" in capsys.readouterr().err


def test_transmix_the_zoom_gate_and_a_teacher_work_with_the_source_zoom(glance_run, tmp_path):
    """TransMix reads each scale's own grid, the zoom gate is fitted on the glance's features and serves adaptive
    zoom, and a glance-and-focus run teaches a student that sees the same source batches."""
    root, _ = glance_run
    ckpt = root / "checkpoint.pth"
    mixed = ["train", "--no-progress", "--output-dir", str(tmp_path / "mixed")]
    # a validation split, which fit-gate needs
    assert (
        main(mixed + sets(*GLANCE, "mix.enabled=true", "mix.mixup_alpha=0", "mix.prob=1", "data.val_fraction=0.5")) == 0
    )
    log = [json.loads(line) for line in (tmp_path / "mixed" / "metrics.jsonl").read_text().splitlines()]
    assert any("lam_scale2" in rec for rec in log)
    # the tiny run's zoom never changes its answer, and a gate needs both kinds of image: the zoom's own class token
    # is replaced by noise so that scale 2 disagrees on some images
    state = torch.load(ckpt, weights_only=True)
    token = next(k for k in state["model"] if k.endswith("zoom_cls_tokens.0"))
    state["model"][token] = torch.randn(state["model"][token].shape, generator=torch.Generator().manual_seed(0)) * 4
    torch.save(state, tmp_path / "disagrees.pth")
    gated = tmp_path / "gated.pth"
    gate_args = ["fit-gate", "--checkpoint", str(tmp_path / "disagrees.pth"), "--split", "train", "--workers", "0"]
    assert main([*gate_args, "--out", str(gated)]) == 0
    out = tmp_path / "auto.csv"
    student = ["train", "--no-progress", "--output-dir", str(tmp_path / "student")]
    assert main(student + sets(*GLANCE, "distill.enabled=true", f"distill.teacher={ckpt}")) == 0
    assert json.loads((tmp_path / "student" / "summary.json").read_text())["test"]["images"] == 9
    assert (
        main(["eval", "--checkpoint", str(gated), "--scales", "auto", "--zoom-on", "gate", "--output", str(out)]) == 0
    )


def test_a_source_run_trains_on_uint8_batches(tmp_path, monkeypatch):
    """The source batch travels from the loader as uint8 and the step normalises it (a quarter of float32's bytes)."""
    from ramstrans.training.steps import BatchStep

    seen, real = [], BatchStep.inputs

    def inputs(self, batch):
        seen.append(batch["image"].dtype)
        x, y = real(self, batch)
        assert x.dtype == torch.float32 and x.shape[-1] == 128  # normalised, at the source size
        return x, y

    monkeypatch.setattr(BatchStep, "inputs", inputs)
    assert main(["train", "--no-progress", "--output-dir", str(tmp_path / "r")] + sets(*GLANCE)) == 0
    assert seen and set(seen) == {torch.uint8}
