"""The learned zoom gate: its ridge logistic regression against scipy's optimiser, its forward against a hand
computation, adaptive zoom on it at the extreme thresholds, ``ramstrans fit-gate`` end to end (a new checkpoint, the
input untouched, eval / predict / ONNX with the gate), and its refusals."""

import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, sets, tiny_model
from scipy.optimize import minimize

from ramstrans.checkpoint import load_checkpoint
from ramstrans.cli import main
from ramstrans.inference.load import load_model
from ramstrans.models import ZoomGate, fit_zoom_gate
from ramstrans.models.build import model_from_checkpoint
from ramstrans.models.gate import _fit_logistic, gate_inputs


def test_the_logistic_fit_is_the_minimum_scipy_finds():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.8 * torch.randn(80, generator=g, dtype=torch.float64) > 0).double()
    w, b = _fit_logistic(x, y, l2=0.1)
    X, Y = x.numpy(), y.numpy()

    def objective(theta):
        z = X @ theta[:4] + theta[4]
        return np.mean(np.logaddexp(0, z) - Y * z) + 0.05 * theta[:4] @ theta[:4]

    ref = minimize(objective, np.zeros(5), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(w.numpy(), ref[:4], atol=1e-5)
    assert b.item() == pytest.approx(ref[4], abs=1e-5)


def test_the_gate_is_a_standardised_logistic_regression_on_scale_1():
    torch.manual_seed(0)
    pooled, probs = torch.randn(6, 3), torch.softmax(torch.randn(6, 4), -1)
    gate = ZoomGate(3 + 4 + 3)
    with torch.no_grad():
        gate.mean.copy_(torch.randn(10))
        gate.std.copy_(torch.rand(10) + 0.5)
    p = probs.double()
    top = p.sort(-1, descending=True).values
    x = torch.cat([pooled.double(), p, top[:, :1], top[:, :1] - top[:, 1:2], -(p * p.log()).sum(-1, keepdim=True)], 1)
    z = ((x - gate.mean.double()) / gate.std.double()) @ gate.linear.weight.double()[0] + gate.linear.bias.double()
    torch.testing.assert_close(gate(pooled, probs).double(), torch.sigmoid(z), rtol=0, atol=1e-6)
    assert torch.equal(gate_inputs(pooled, probs)[:, 3:7], probs)


def test_the_fitted_gate_is_the_ridge_fit_of_all_rows_at_the_cross_validated_strength():
    g = torch.Generator().manual_seed(1)
    pooled, probs = torch.randn(60, 5, generator=g), torch.softmax(2 * torch.randn(60, 4, generator=g), -1)
    changed = probs.max(-1).values < 0.6
    gate, oof, l2 = fit_zoom_gate(pooled, probs, changed, l2_grid=(0.01, 1.0))
    x = gate_inputs(pooled, probs).double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    w, b = _fit_logistic((x - mean) / std, changed.double(), l2)
    torch.testing.assert_close(gate.linear.weight[0].double(), w, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        gate(pooled, probs).double(), torch.sigmoid(((x - mean) / std) @ w + b), rtol=0, atol=1e-5
    )
    assert oof.shape == (60,) and not torch.allclose(oof, gate(pooled, probs))  # held-out scores, not refits
    with pytest.raises(ValueError, match="changes the answer and images where it does not"):
        fit_zoom_gate(pooled, probs, torch.zeros(60, dtype=torch.bool))


def test_adaptive_zoom_on_the_gate():
    model = tiny_model().eval()
    x = torch.randn(5, 3, 64, 64)
    with pytest.raises(ValueError, match="fitted zoom gate"):
        model.predict(x, "auto", 0.5, "gate")
    model.zoom_gate = ZoomGate(model.backbone.vit.embed_dim + 5 + 3)
    with torch.no_grad():
        model.zoom_gate.linear.weight.normal_()
    single, fused = model.predict(x, 1).probs, model.predict(x, 2).probs
    assert torch.equal(model.predict(x, "auto", 0.0, "gate").probs, single)
    assert torch.equal(model.predict(x, "auto", 1.01, "gate").probs, fused)
    feats = model.backbone.forward_features(x).tokens
    confidence = 1 - model.zoom_gate(model.backbone.pre_logits(feats), single)
    t = confidence.median().item()
    pred = model.predict(x, "auto", t, "gate")
    assert torch.equal(pred.zoomed, confidence < t) and 0 < pred.zoomed.sum() < 5
    torch.testing.assert_close(pred.probs, torch.where(pred.zoomed[:, None], fused, single))


@pytest.fixture(scope="module")
def zoom_run(tmp_path_factory):
    """A tiny run from the shipped synthetic-tiny weights (image-dependent features, so the zoom changes some answers)
    that holds out half of its 60 training images."""
    folder = tmp_path_factory.mktemp("zoomrun")
    tiny = [t for t in TINY_TRAIN if not t.startswith(("model.backbone_kwargs", "model.pretrained"))]
    assert (
        main(
            ["train", "--no-progress", "--output-dir", str(folder)]
            + sets(
                *tiny,
                "model.pretrained=synthetic-tiny",
                "model.backbone_kwargs={embed_dim: 128, depth: 6, num_heads: 4}",
                "data.val_fraction=0.5",
                "data.synthetic.train_per_class=20",
            )
        )
        == 0
    )
    return folder


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fit_gate_writes_a_new_checkpoint_that_eval_predict_and_onnx_use(zoom_run, tmp_path, capsys):
    ckpt = zoom_run / "checkpoint.pth"
    before = _sha(ckpt)
    assert main(["fit-gate", "--checkpoint", str(ckpt), "--workers", "0", "--out", str(tmp_path / "g.pth")]) == 0
    said = capsys.readouterr().out
    assert "zoom gate" in said and "oracle" in said
    assert _sha(ckpt) == before  # the input is never replaced
    report = json.loads((tmp_path / "fit_gate_val_raw" / "gate.json").read_text())
    gated = load_checkpoint(tmp_path / "g.pth")
    assert gated["zoom_gate"]["threshold"] == pytest.approx(report["threshold"])
    assert gated["zoom_gate"]["split"] == "val" and gated["zoom_gate"]["images"] == report["images"] == 30
    assert report["oracle"]["passes_per_image"] == pytest.approx(1 + report["changed_share"])
    model = load_model(tmp_path / "g.pth").model  # the checkpoint reader attaches the gate it holds
    assert float(model.zoom_gate.threshold) == pytest.approx(report["threshold"])
    assert load_model(tmp_path / "g.pth", gate=False).model.zoom_gate is None
    assert model_from_checkpoint(gated)[0].zoom_gate is None  # the weights alone
    # eval: the gate's own threshold by default
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "g.pth"),
                "--scales",
                "auto",
                "--zoom-on",
                "gate",
                "--workers",
                "0",
                "--no-progress",
                "--output",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["zoom_on"] == "gate" and summary["zoom_threshold"] == pytest.approx(report["threshold"])
    capsys.readouterr()
    # a checkpoint without a gate: one sentence
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(ckpt),
                "--scales",
                "auto",
                "--zoom-on",
                "gate",
                "--workers",
                "0",
                "--no-progress",
                "--output",
                str(tmp_path / "e2"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fit-gate" in err[0]


def test_the_fused_onnx_graph_carries_the_gate(zoom_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "g.pth"
    assert (
        main(["fit-gate", "--checkpoint", str(zoom_run / "checkpoint.pth"), "--workers", "0", "--out", str(out)]) == 0
    )
    assert (
        main(
            ["export", "--checkpoint", str(out), "--format", "onnx", "--scales", "2", "--out", str(tmp_path / "m.onnx")]
        )
        == 0
    )
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probs", "boxes", "zoom_confidence"]
    meta = session.get_modelmeta().custom_metadata_map
    model = load_model(out).model  # eval mode, the gate attached
    assert meta["zoom_on"] == "gate"
    assert float(meta["zoom_threshold"]) == pytest.approx(float(model.zoom_gate.threshold))
    x = torch.randn(3, 3, 64, 64)
    got = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        feats = model.backbone.forward_features(x).tokens
        want = 1 - model.zoom_gate(model.backbone.pre_logits(feats), model.predict(x, 1).probs)
    np.testing.assert_allclose(got[3], want.numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], model.predict(x, 2).probs.numpy(), atol=1e-4)


@pytest.mark.parametrize(
    "args,culprit",
    [
        (["--split", "test"], "never on test"),
        (["--out", "SELF"], "is one of the command's inputs"),
        (["--out", "EXISTS"], "already exists"),
    ],
)
def test_fit_gate_refusals_are_one_sentence(zoom_run, tmp_path, capsys, args, culprit):
    ckpt = zoom_run / "checkpoint.pth"
    (tmp_path / "exists.pth").write_text("mine")
    args = [{"SELF": str(ckpt), "EXISTS": str(tmp_path / "exists.pth")}.get(a, a) for a in args]
    assert main(["fit-gate", "--checkpoint", str(ckpt), "--workers", "0", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0]
    assert (tmp_path / "exists.pth").read_text() == "mine"
