"""Deployment without torch: the preprocessing an export records against the albumentations transform, fp16 and int8
exports against torch, ``predict model.onnx`` against ``predict checkpoint.pth``, ``eval`` of an ONNX file against
the checkpoint's, and that the ONNX predict path never imports torch."""

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from ramstrans.checkpoint import load_checkpoint
from ramstrans.cli import main
from ramstrans.data import Transform, load_index, split_tables
from ramstrans.deploy.images import read_image
from ramstrans.deploy.preprocess import Preprocess
from ramstrans.deploy.session import OnnxModel
from ramstrans.inference.load import eval_transform
from ramstrans.models.build import model_from_checkpoint

pytestmark = pytest.mark.slow  # trains and exports through the CLI


@pytest.mark.parametrize(
    "shape,resize,crop",
    [((80, 80), 72, 64), ((97, 131), 72, 64), ((300, 72), 72, 64), ((72, 73), 72, 64), ((4, 5), 2, 2), ((4, 7), 2, 2)],
)
def test_preprocess_equals_the_albumentations_test_transform(shape, resize, crop):
    # (4, 5) -> 2.5 and (4, 7) -> 3.5: the other side rounds half to even (2 and 4), as albumentations does
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    want = Transform(train=False, crop=crop, resize=resize, mean=mean, std=std)(image, None, 0)[0].numpy()
    got = Preprocess.of(resize, crop, mean, std)(image)
    assert got.shape == (3, crop, crop) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_exif_orientation_is_applied(tmp_path):
    """A JPEG stored landscape with EXIF orientation 6 (rotate 90° clockwise) decodes portrait, as a phone shows it."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (0, 0, 255)  # left half red (BGR)
    ok, jpeg = cv2.imencode(".jpg", pixels)
    assert ok
    exif = bytes.fromhex("4578696600004d4d002a00000008000101120003000000010006000000000000")  # Orientation = 6
    data = jpeg.tobytes()
    app1 = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    (tmp_path / "phone.jpg").write_bytes(data[:2] + app1 + data[2:])
    img = read_image(tmp_path / "phone.jpg")
    assert img.shape == (40, 20, 3)  # portrait
    assert img[5, 10, 0] > 200 and img[35, 10, 0] < 50  # the red (RGB) half is now on top


def _inputs(synthetic_root, cfg, model):
    """The tiny data set's test images, preprocessed as evaluation does: (N, 3, 64, 64)."""
    t = eval_transform(cfg, model)
    paths = sorted((synthetic_root / "images").rglob("*.jpg"))[:12]
    return torch.stack([t(read_image(p), None, 0)[0] for p in paths])


def _model(root):
    model, cfg, names = model_from_checkpoint(load_checkpoint(root / "checkpoint.pth"))
    return model.eval(), cfg, names


def test_fp16_and_int8_agree_with_torch_and_record_their_precision(exported, synthetic_root):
    root, files = exported
    model, cfg, names = _model(root)
    x = _inputs(synthetic_root, cfg, model)
    with torch.no_grad():
        want = model.predict(x, 2, boxes=True)
    for precision in ("fp32", "fp16", "int8"):
        onnx_model = OnnxModel(files[precision])
        assert onnx_model.record["precision"] == precision and onnx_model.class_names == names
        got = onnx_model.predict(x.numpy(), 2)
        agree = (got.probs.argmax(1) == want.probs.argmax(1).numpy()).mean()
        tol = {"fp32": 1e-5, "fp16": 2e-3, "int8": 0.1}[precision]
        np.testing.assert_allclose(got.probs, want.probs.numpy(), atol=tol, rtol=0)
        assert agree == 1.0, precision
        if precision != "int8":  # the rollout and proposal stay float32: the same boxes
            assert np.array_equal(got.boxes, want.boxes.numpy()), precision
    int8 = OnnxModel(files["int8"]).record
    assert int8["calibration"]["images"] == 8 and int8["calibration"]["split"] == "train"
    table = split_tables(cfg.data, load_index(cfg.data), cfg.train.seed)["train"]
    drawn = [str(p) for p in table["path"].iloc[np.random.default_rng(0).permutation(len(table))[:8]]]
    assert int8["calibration"]["sha256"] == hashlib.sha256("\n".join(drawn).encode()).hexdigest()


def test_int8_quantizes_the_weighted_products_and_keeps_the_rest_float(exported):
    import onnx

    graph = onnx.load(str(exported[1]["int8"])).graph
    made_by = {o: n for n in graph.node for o in n.output}
    weighted = [n for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    quantized = [
        n
        for n in weighted
        if made_by.get(n.input[1]) is not None and made_by[n.input[1]].op_type == ("DequantizeLinear")
    ]
    # per scale: the patch embedding, 2 blocks x (qkv, proj, fc1, fc2), the head; the two scales share weights
    # but each scale has its own nodes
    assert len(quantized) == 2 * (1 + 2 * 4 + 1)
    float_ops = [n for n in graph.node if n.op_type in ("LayerNormalization", "Softmax", "Erf")]
    assert float_ops and all(
        made_by.get(n.input[0]) is None or made_by[n.input[0]].op_type != "DequantizeLinear" for n in float_ops
    )


def _images(folder, synthetic_root):
    src = sorted((synthetic_root / "images").rglob("*.jpg"))[:4]
    (folder / "sub").mkdir(parents=True)
    for i, s in enumerate(src):
        shutil.copy(s, folder / ("sub" if i % 2 else ".") / f"{i}.jpg")
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")


@pytest.mark.parametrize("scales", ["1", "2", "auto"])
def test_predict_onnx_gives_the_rows_and_exit_code_of_the_checkpoint(exported, synthetic_root, tmp_path, scales):
    root, files = exported
    _images(tmp_path / "imgs", synthetic_root)
    rows: dict[str, list[dict]] = {}
    for name, model, s in [
        ("first", root / "checkpoint.pth", "1"),
        ("ckpt", root / "checkpoint.pth", scales),
        ("onnx", files["fp32"], scales),
    ]:
        out = tmp_path / f"{name}.csv"
        args = ["predict", str(model), str(tmp_path / "imgs"), "--scales", s, "--out", str(out), "--no-progress"]
        if s == "auto":  # half the images below the threshold: zoomed
            top = sorted(float(r["prob_1"]) for r in rows["first"] if r["status"] == "ok")
            args += ["--zoom-threshold", str((top[1] + top[2]) / 2)]
        assert main(args) == 1
        rows[name] = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows["ckpt"]) == 5
    for a, b in zip(rows["ckpt"], rows["onnx"]):
        assert (a["path"], a["status"], a["error"], a["class_1"]) == (b["path"], b["status"], b["error"], b["class_1"])
        assert a.get("zoomed") == b.get("zoomed")
        if a["status"] == "ok":
            assert float(a["prob_1"]) == pytest.approx(float(b["prob_1"]), abs=1e-5)
    if scales == "auto":
        assert {r["zoomed"] for r in rows["onnx"] if r["status"] == "ok"} == {"True", "False"}


def test_the_onnx_predict_path_does_not_import_torch(exported, synthetic_root):
    img = next((synthetic_root / "images").rglob("*.jpg"))
    code = (
        "import sys; from ramstrans.cli import main; "
        f"code = main(['predict', {str(exported[1]['fp32'])!r}, {str(img)!r}, '--scales', 'auto']); "
        "print(sorted(m for m in ('torch', 'timm', 'albumentations') if m in sys.modules), code)"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "[] 0", r.stderr


def test_eval_of_an_onnx_file_equals_eval_of_the_checkpoint(exported, capsys):
    from ramstrans.inference.evaluate import run_eval
    from ramstrans.registry import EvalRequest

    root, files = exported
    ckpt, onnx = (
        EvalRequest(str(root / "checkpoint.pth"), num_workers=0),
        EvalRequest(str(files["fp32"]), num_workers=0),
    )
    for scales in (1, 2):
        a = run_eval(ckpt, scales=scales, output_dir=str(root / f"e{scales}"))
        b = run_eval(onnx, scales=scales, output_dir=str(root / f"o{scales}"))
        assert (a["top1"], a["top5"], a["images"]) == (b["top1"], b["top5"], b["images"])
        assert b["weights"] == "onnx-fp32" and b["step"] == a["step"]
        if scales == 2:
            assert b["loc_miou"] == pytest.approx(a["loc_miou"], abs=1e-6)
    auto = run_eval(onnx, scales="auto", zoom_threshold=0.9, output_dir=str(root / "oa"))
    assert auto["passes_per_image"] == pytest.approx(1 + 2 * auto["zoomed_share"])  # the fused graph reruns scale 1


def test_exports_record_what_a_client_needs(exported, tmp_path):
    root, files = exported
    m = OnnxModel(files["fp32"])
    pre = m.record["preprocess"]
    assert (pre["resize"], pre["crop"]) == (72, 64) and "antialias" in pre["steps"]["interpolation"]
    assert "EXIF" in pre["steps"]["decode"] and "x1 and y1 exclusive" in pre["boxes"]
    assert m.record["provenance"]["step"] == 3 and m.record["scale1_graph"] == "fp32.scale1.onnx"
    assert main(["export", "--checkpoint", str(root / "checkpoint.pth"), "--out", str(tmp_path / "t")]) == 0
    info = json.loads((tmp_path / "t" / "ramstrans.json").read_text())
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())["pretrained_cfg"]
    assert info["preprocess"] == pre and info["provenance"]["dataset"] == "synthetic"
    assert cfg["tag"] == "ramstrans_synthetic" and "augreg" not in json.dumps(cfg)


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["predict", "{plain}", "{img}"], "was not written by ramstrans export"),
        (["predict", "{truncated}", "{img}"], "is not a readable ONNX file"),
        (["predict", "{single}", "{img}", "--scales", "auto"], "--scales auto needs a fused export"),
        (["predict", "{fp32}", "{img}", "--providers", "NoSuchExecutionProvider"], "is not installed"),
        (["predict", "{fp32}", "{img}", "--scales", "3"], "it runs --scales 1 or 2"),
        (
            [
                "export",
                "--checkpoint",
                "{ckpt}",
                "--format",
                "onnx",
                "--out",
                "{tmp}/o.onnx",
                "--precision",
                "int8",
                "--calibration-images",
                "0",
            ],
            "needs calibration images",
        ),
        (["export", "--checkpoint", "{ckpt}", "--out", "{tmp}/o.onnx", "--precision", "int8"], "applies to --format"),
    ],
)
def test_bad_onnx_input_is_one_sentence(exported, synthetic_root, tmp_path, capsys, argv, fragment):
    import onnx

    root, files = exported
    plain = onnx.load(str(files["scale1"]))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    (tmp_path / "truncated.onnx").write_bytes(files["scale1"].read_bytes()[:5000])
    img = next((synthetic_root / "images").rglob("*.jpg"))
    fmt = dict(
        plain=tmp_path / "plain.onnx",
        truncated=tmp_path / "truncated.onnx",
        single=files["scale1"],
        fp32=files["fp32"],
        img=img,
        ckpt=root / "checkpoint.pth",
        tmp=tmp_path,
    )
    args = [a.format(**fmt) for a in argv]
    if args[0] == "predict":
        args += ["--out", str(tmp_path / "o.csv")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("scales", ["1", "2"])
def test_eval_and_predict_agree_row_by_row_on_an_int8_file(exported, tmp_path, scales):
    """eval of an ONNX file preprocesses as its record says, with predict's code: on an int8 file, where float32
    rounding differences flip answers, both give every test image the same top class and probabilities."""
    from ramstrans.data import eval_loader
    from ramstrans.inference.inputs import load_eval_inputs
    from ramstrans.registry import EvalRequest

    _, files = exported
    inputs = load_eval_inputs(EvalRequest(str(files["int8"]), num_workers=0, batch_size=8))
    probs = [inputs.model.predict(b["image"], int(scales)).probs for b in eval_loader(inputs.dataset, 8, 0)]
    evaluated = torch.cat(probs).numpy()
    paths = [inputs.dataset.root / p for p in inputs.dataset.paths]
    for i, p in enumerate(paths):  # the very same input arrays, bit for bit (albumentations differs in rounding)
        assert np.array_equal(inputs.dataset[i]["image"].numpy(), inputs.model.onnx.prepare(p))
    (tmp_path / "list").mkdir()
    for i, p in enumerate(paths):
        shutil.copy(p, tmp_path / "list" / f"{i:04d}.jpg")
    out = tmp_path / "rows.json"
    args = ["predict", str(files["int8"]), str(tmp_path / "list"), "--scales", scales, "--batch-size", "8"]
    assert main(args + ["--format", "json", "--topk", "3", "--out", str(out)]) == 0
    rows = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["path"])
    assert len(rows) == len(paths) == len(evaluated)
    names = inputs.class_names
    for row, p in zip(rows, evaluated):
        assert row["top"][0]["class"] == names[int(p.argmax())]
        assert [q["prob"] for q in row["top"]] == pytest.approx(sorted(p.tolist(), reverse=True), abs=1e-6)
