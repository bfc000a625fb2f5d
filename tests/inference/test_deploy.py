"""Using what was trained: adaptive zoom, the threshold sweep, predict, and exports that timm and onnxruntime load
with the same outputs."""

import csv
import io
import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN

from ramstrans.checkpoint import load_checkpoint
from ramstrans.cli import main
from ramstrans.data import read_image
from ramstrans.inference.evaluate import evaluate
from ramstrans.inference.load import eval_transform
from ramstrans.models.build import model_from_checkpoint


def _sets(*items):
    return [a for it in items for a in ("--set", it)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny two-scale run with a carved validation split; attention sharpened so proposals are real boxes."""
    out = tmp_path_factory.mktemp("run")
    assert (
        main(
            ["train", "--no-progress", "--output-dir", str(out)]
            + _sets(*TINY_TRAIN, "data.val_fraction=0.34", "train.steps=6")
        )
        == 0
    )
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    for k, v in ckpt["model"].items():
        if k.endswith("attn.qkv.weight"):
            v[: 2 * 32].mul_(8.0)
    torch.save(ckpt, out / "checkpoint.pth")
    return out


def _model(trained):
    model, cfg, names = model_from_checkpoint(load_checkpoint(trained / "checkpoint.pth"))
    return model.eval(), cfg, names


def test_adaptive_threshold_0_is_single_scale_and_above_1_is_full_fusion(trained):
    model, _, _ = _model(trained)
    x = torch.randn(5, 3, 64, 64)
    single, fused = model.predict(x, 1), model.predict(x, 2)
    assert torch.equal(model.predict(x, "auto", 0.0).probs, single.probs)
    assert torch.equal(model.predict(x, "auto", 1.01).probs, fused.probs)
    assert (fused.boxes != torch.tensor([0.0, 0.0, 64.0, 64.0])).any()  # real proposals
    mid = model.predict(x, "auto", float(single.probs.max(1).values.median()))
    zoom = single.probs.max(1).values < float(single.probs.max(1).values.median())
    assert torch.equal(mid.zoomed, zoom) and 0 < int(zoom.sum()) < 5
    assert torch.equal(mid.probs[zoom], fused.probs[zoom]) and torch.equal(mid.probs[~zoom], single.probs[~zoom])
    margin = model.predict(x, "auto", 0.3, "margin")
    top = single.probs.topk(2, 1).values
    assert torch.equal(margin.zoomed, top[:, 0] - top[:, 1] < 0.3)


def test_adaptive_eval_costs_and_shares(trained):
    model, cfg, names = _model(trained)
    batch = [
        {
            "image": torch.randn(6, 3, 64, 64),
            "label": torch.arange(6) % 3,
            "box": torch.full((6, 4), float("nan")),
            "skipped": 0,
        }
    ]
    one = evaluate(model, batch, device=torch.device("cpu"), num_classes=3, scales=1)[0]
    zero = evaluate(model, batch, device=torch.device("cpu"), num_classes=3, scales="auto", zoom_threshold=0.0)[0]
    both = evaluate(model, batch, device=torch.device("cpu"), num_classes=3, scales=2)[0]
    full = evaluate(model, batch, device=torch.device("cpu"), num_classes=3, scales="auto", zoom_threshold=1.01)[0]
    assert (zero["top1"], zero["zoomed_share"], zero["passes_per_image"]) == (one["top1"], 0.0, 1.0)
    assert (full["top1"], full["zoomed_share"], full["passes_per_image"]) == (both["top1"], 1.0, 2.0)


def test_the_zoom_sweep_is_on_validation_and_picks_the_cheapest_near_full_fusion(trained, capsys):
    argv = ["eval", "--checkpoint", str(trained / "checkpoint.pth"), "--workers", "0", "--no-progress"]
    assert main(argv + ["--split", "val", "--sweep-zoom"]) == 0
    sweep = json.loads((trained / "sweep_zoom_val_raw" / "sweep.json").read_text())
    assert (trained / "sweep_zoom_val_raw" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(argv + ["--split", "val", "--scales", "2", "--output", str(trained / "v2")]) == 0
    fused = json.loads((trained / "v2" / "summary.json").read_text())
    assert main(argv + ["--split", "val", "--output", str(trained / "v1")]) == 0
    single = json.loads((trained / "v1" / "summary.json").read_text())
    assert sweep["full_fusion_top1"] == pytest.approx(fused["top1"], abs=1e-9)
    assert sweep["single_scale_top1"] == pytest.approx(single["top1"], abs=1e-9)
    assert sweep["rows"][0]["threshold"] == 0.0 and sweep["rows"][0]["top1"] == pytest.approx(single["top1"])
    good = [r for r in sweep["rows"] if r["top1"] >= sweep["full_fusion_top1"] - 0.5]
    assert sweep["chosen"] == min(good, key=lambda r: (r["passes_per_image"], -r["top1"]))
    t = sweep["chosen"]["threshold"]
    assert (
        main(argv + ["--split", "val", "--scales", "auto", "--zoom-threshold", str(t), "--output", str(trained / "va")])
        == 0
    )
    adaptive = json.loads((trained / "va" / "summary.json").read_text())
    assert adaptive["top1"] == pytest.approx(sweep["chosen"]["top1"], abs=1e-9)
    assert adaptive["passes_per_image"] == pytest.approx(sweep["chosen"]["passes_per_image"])
    capsys.readouterr()
    assert main(argv + ["--sweep-zoom"]) == 2  # on test: refused
    assert "never on test" in capsys.readouterr().err


def test_timm_folder_round_trip(trained, tmp_path):
    import timm

    out = tmp_path / "export"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(trained / "checkpoint.pth"),
                "--format",
                "timm",
                "--out",
                str(out),
                "--scales",
                "2",
            ]
        )
        == 0
    )
    model, cfg, names = _model(trained)
    vit = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(vit(x), model(x), atol=1e-6, rtol=0)
    assert vit.pretrained_cfg["label_names"] == names
    data = timm.data.resolve_data_config(model=vit)
    assert data["input_size"] == (3, 64, 64) and data["interpolation"] == "bilinear"
    assert tuple(data["mean"]) == model.backbone.mean and tuple(data["std"]) == model.backbone.std
    assert int(np.floor(64 / data["crop_pct"])) == cfg.data.resize == 72  # timm resizes to 72, then crops 64
    from ramstrans.inference.load import model_from_export

    again, again_names, transform = model_from_export(str(out))
    assert again_names == names and transform == {"resize": 72, "crop": 64, "interpolation": "bilinear"}
    for got, want in zip(again.forward_multiscale(x).logits, model.forward_multiscale(x).logits):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    from ramstrans.errors import UsageError
    from ramstrans.inference.inputs import load_eval_inputs
    from ramstrans.registry import EvalRequest

    refusal = "evaluation needs the training config .* does not record .read as: timm folder."
    with pytest.raises(UsageError, match=refusal):
        load_eval_inputs(EvalRequest(str(out)))  # an export has no data set config to evaluate on


def test_eval_inputs_hold_the_checkpoint_and_the_split(trained):
    from ramstrans.data import load_index, split_tables
    from ramstrans.inference.inputs import load_eval_inputs
    from ramstrans.registry import EvalRequest

    ckpt = load_checkpoint(trained / "checkpoint.pth")
    inputs = load_eval_inputs(EvalRequest(str(trained), device="cpu", split="val"))  # a run folder: its newest
    assert inputs.file == trained / "checkpoint.pth" and inputs.loaded.kind == "run folder"
    model, cfg, names = _model(trained)
    assert inputs.step == ckpt["step"] == 6 and inputs.weights == "raw" and inputs.class_names == names
    assert inputs.device == torch.device("cpu") and not inputs.model.training
    tables = split_tables(cfg.data, load_index(cfg.data), cfg.train.seed)
    assert inputs.dataset.table["path"].tolist() == tables["val"]["path"].tolist()  # the run's carved split
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(inputs.model(x), model(x), atol=0, rtol=0)


def test_onnx_export_runs_in_onnxruntime_with_the_same_outputs(exported):
    import onnx
    import onnxruntime as ort

    root, files = exported
    model, _, names = _model(root)
    x = torch.randn(3, 3, 64, 64)  # another batch size than the export's example
    for graph in ("scale1", "fp32"):
        session = ort.InferenceSession(str(files[graph]), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": x.numpy()})
        meta = {p.key: p.value for p in onnx.load(str(files[graph])).metadata_props}
        assert json.loads(meta["class_names"]) == names and json.loads(meta["test_transform"])["resize"] == 72
        with torch.no_grad():
            if graph == "scale1":
                np.testing.assert_allclose(got[0], model(x).numpy(), atol=1e-4, rtol=0)
                continue
            out_ms = model.forward_multiscale(x)
        np.testing.assert_allclose(got[0], torch.stack(out_ms.logits, 1).numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[1], model.predict(x, 2).probs.numpy(), atol=1e-5, rtol=0)
        assert np.array_equal(got[2], out_ms.boxes[0].numpy())
        assert (out_ms.boxes[0] != torch.tensor([0.0, 0.0, 64.0, 64.0])).any()


def _images(folder, synthetic_root):
    """A folder with a JPEG, a PNG with alpha, a grayscale image, a nested subfolder and a corrupt file."""
    src = sorted((synthetic_root / "images").rglob("*_0_000*.jpg"))[:3]
    (folder / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(src[0], folder / "a.jpg")
    rgba = cv2.cvtColor(cv2.imread(str(src[1])), cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 128
    cv2.imwrite(str(folder / "b_alpha.png"), rgba)
    cv2.imwrite(str(folder / "sub" / "c_gray.png"), cv2.imread(str(src[2]), cv2.IMREAD_GRAYSCALE))
    shutil.copy(src[0], folder / "sub" / "deeper" / "d.jpg")
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "notes.txt").write_text("not an image and not listed")
    return ["a.jpg", "b_alpha.png", "sub/broken.jpg", "sub/c_gray.png", "sub/deeper/d.jpg"]


def test_predict_a_folder(trained, synthetic_root, tmp_path, capsys):
    names_in_order = _images(tmp_path / "imgs", synthetic_root)
    out = tmp_path / "pred.csv"
    code = main(
        [
            "predict",
            str(trained / "checkpoint.pth"),
            str(tmp_path / "imgs"),
            "--topk",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 1 and "1 of 5 paths could not be read" in capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["path"] for r in rows] == [str(tmp_path / "imgs" / n) for n in names_in_order]
    broken = rows[2]
    assert broken["status"] == "skipped" and broken["error"] == "cannot be decoded (corrupt or not an image)"
    model, cfg, names = _model(trained)
    t = eval_transform(cfg, model)
    for r in rows[:2] + rows[3:]:
        with torch.no_grad():
            p = model(t(read_image(r["path"]), None, 0)[0][None]).softmax(-1)[0]
        q, k = p.topk(2)
        assert r["status"] == "ok" and [r["class_1"], r["class_2"]] == [names[i] for i in k.tolist()]
        assert [float(r["prob_1"]), float(r["prob_2"])] == pytest.approx(q.tolist(), abs=1e-6)
    assert not list(tmp_path.glob(".pred.csv*"))  # written whole through a temp file


def test_predict_from_an_export_with_adaptive_zoom_as_json(trained, synthetic_root, tmp_path, capsys):
    names_in_order = _images(tmp_path / "imgs", synthetic_root)
    assert (
        main(
            ["export", "--checkpoint", str(trained / "checkpoint.pth"), "--out", str(tmp_path / "exp"), "--scales", "2"]
        )
        == 0
    )
    capsys.readouterr()
    glob_arg = str(tmp_path / "imgs" / "**" / "*.jpg")
    code = main(
        [
            "predict",
            str(tmp_path / "exp"),
            glob_arg,
            "--format",
            "json",
            "--scales",
            "auto",
            "--zoom-threshold",
            "1.0",
            "--no-progress",
            "--visualize",
            str(tmp_path / "vis"),
        ]
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == 1 and [x["path"] for x in lines] == [
        str(tmp_path / "imgs" / n) for n in names_in_order if n.endswith(".jpg")
    ]
    assert "error" in lines[1] and all(x["zoomed"] for x in lines if "top" in x)
    model, cfg, _ = _model(trained)
    x = eval_transform(cfg, model)(read_image(lines[0]["path"]), None, 0)[0][None]
    assert lines[0]["top"][0]["prob"] == pytest.approx(model.predict(x, 2).probs.max().item(), abs=1e-5)
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["{ckpt}", "{tmp}/nope"], "nope does not exist"),
        (["{ckpt}", "{tmp}/empty"], "holds no image files"),
        (["{tmp}/notes.txt", "{tmp}/empty"], "holds no image files"),
        (["{tmp}/junk.pth", "{img}"], "not a readable ramstrans checkpoint"),
        (["{ckpt}", "{img}", "--scales", "3"], "cannot run 3"),
        (
            ["{ckpt}", "{img}", "--scales", "auto", "--zoom-threshold", "1.5"],
            "predict --zoom-threshold must be a number in [0, 1], got 1.5",
        ),
        (["{tmp}", "{img}"], "is a folder without a checkpoint or an export: it is not a run folder"),
    ],
)
def test_predict_bad_input_is_one_sentence(trained, synthetic_root, tmp_path, capsys, argv, fragment):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    img = next((synthetic_root / "images").rglob("*.jpg"))
    args = [a.format(ckpt=trained / "checkpoint.pth", tmp=tmp_path, img=img) for a in argv]
    assert main(["predict", "--out", str(tmp_path / "o.csv")] + args) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and not (tmp_path / "o.csv").exists()


def test_many_classes_get_the_most_confused_pairs(trained, tmp_path, monkeypatch):
    from ramstrans.inference.plots import confused_pairs

    m = np.array([[5, 3, 0], [1, 4, 2], [0, 3, 6]])
    assert confused_pairs(m) == [(0, 1, 3, 3 / 8), (2, 1, 3, 3 / 9), (1, 2, 2, 2 / 7), (1, 0, 1, 1 / 7)]
    monkeypatch.setattr("ramstrans.inference.evaluate.CONFUSION_PLOT_MAX", 2)  # as if the 3 classes were more than 50
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(trained / "checkpoint.pth"),
                "--workers",
                "0",
                "--no-progress",
                "--output",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    assert not (tmp_path / "ev" / "confusion.png").exists()
    pairs = list(csv.DictReader(io.StringIO((tmp_path / "ev" / "confused_pairs.csv").read_text())))
    assert pairs and set(pairs[0]) == {"true_class", "predicted_class", "images", "share_of_true_class"}
    assert (tmp_path / "ev" / "confused_pairs.png").read_bytes()[:4] == b"\x89PNG"
