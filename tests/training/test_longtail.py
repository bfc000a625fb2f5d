"""Long-tailed data: the class-aware samplers, logit adjustment, the synthetic long tail, and the evaluation's shot
groups, calibration error, flip test-time augmentation and temperature scaling, each against hand-worked values or an
independent float64 recomputation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, eval_summary, sets, tiny_model
from scipy.stats import chisquare

from ramstrans.data.loader import StepSampler, sampling_weights
from ramstrans.data.synthetic.birds import long_tail_counts, long_tailed
from ramstrans.errors import UsageError
from ramstrans.inference.metrics import MetricAccumulator, shot_accuracy
from ramstrans.inference.temperature import fit_temperature
from ramstrans.inference.tta import FlipTTA
from ramstrans.losses import MultiScaleLoss
from ramstrans.models import MultiScaleOutput

LABELS = np.array([0] * 1 + [1] * 3 + [2] * 12)  # 16 images, classes of 1, 3 and 12


# ---- samplers ----------------------------------------------------------------------------------------------------
def test_sampling_weights_give_the_closed_form_class_probabilities():
    cb = sampling_weights(LABELS, "class_balanced", 3).numpy()
    sq = sampling_weights(LABELS, "sqrt", 3).numpy()
    per_class = lambda w: np.bincount(LABELS, weights=w, minlength=3)  # noqa: E731
    np.testing.assert_allclose(per_class(cb), [1 / 3, 1 / 3, 1 / 3], rtol=0, atol=1e-15)
    root = np.sqrt([1.0, 3.0, 12.0])  # 1, 1.732, 3.464: class probability ∝ √n_c
    np.testing.assert_allclose(per_class(sq), root / root.sum(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(sq[LABELS == 2], root[2] / root.sum() / 12, rtol=0, atol=1e-15)  # equal within a class
    assert sampling_weights(LABELS, "uniform", 3) is None


@pytest.mark.parametrize("kind,probs", [("class_balanced", [1 / 3] * 3), ("sqrt", [1, 3**0.5, 12**0.5])])
def test_the_drawn_class_frequencies_follow_the_probabilities(kind, probs):
    # 400 epochs of 16 draws (6,400 images, seeded): a chi-square test of the class counts at the 1% level
    sampler = StepSampler(16, 4, seed=3, weights=sampling_weights(LABELS, kind, 3))
    drawn = torch.cat([sampler.epoch_order(e) for e in range(400)]).numpy()
    counts = np.bincount(LABELS[drawn], minlength=3)
    expected = np.asarray(probs) / np.sum(probs) * len(drawn)
    assert chisquare(counts, expected).pvalue > 0.01
    assert abs(counts[0] / len(drawn) - expected[0] / len(drawn)) < 0.02  # the rare class is drawn as often


def test_a_weighted_stream_resumes_and_shards_exactly():
    w = sampling_weights(LABELS, "sqrt", 3)
    whole = StepSampler(16, 4, seed=5, weights=w)
    stream = iter(whole)
    first = [next(stream) for _ in range(4 * 12)]  # 12 batches: three epochs of 4 steps (16 // 4)
    resumed = iter(StepSampler(16, 4, seed=5, start_batch=5, weights=w))
    assert [next(resumed) for _ in range(4 * 7)] == first[4 * 5 :]  # resumed at batch 5: the same draws and seeds
    ranks = [iter(StepSampler(16, 2, seed=5, rank=r, world_size=2, weights=w)) for r in range(2)]
    per_step = [[next(ranks[r]) for _ in range(2)] for _ in range(12) for r in range(2)]
    assert [x for batch in per_step for x in batch] == first  # two processes of 2 = one of 4, step by step


def test_an_unknown_sampler_is_one_sentence():
    with pytest.raises(UsageError, match="data.sampler must be one of uniform, class_balanced, sqrt"):
        sampling_weights(LABELS, "oversample", 3)


# ---- logit adjustment --------------------------------------------------------------------------------------------
def test_logit_adjusted_loss_equals_a_float64_hand_computation_and_tau_zero_is_bit_identical():
    torch.manual_seed(0)
    prior = torch.tensor([0.7, 0.2, 0.1])
    logits = [torch.randn(4, 3), torch.randn(4, 3)]
    y = torch.tensor([0, 2, 1, 2])
    soft = torch.softmax(torch.randn(4, 3), -1)
    out = MultiScaleOutput(logits=logits, boxes=[], rollout=[], cls_attention=[])
    for tau in (1.0, 2.0):
        loss = MultiScaleLoss(weights=(1.0, 0.5), prior=prior, logit_adjust=tau)
        got = loss(torch.zeros(1), out, [y, soft])
        z1 = logits[0].double() + tau * prior.double().log()
        z2 = logits[1].double() + tau * prior.double().log()
        want1 = -(z1.log_softmax(-1)[torch.arange(4), y]).mean()  # hard labels
        want2 = 0.5 * -(soft.double() * z2.log_softmax(-1)).sum(-1).mean()  # soft (mixed) targets
        torch.testing.assert_close(got["ce_scale1"].double(), want1, atol=1e-6, rtol=0)
        torch.testing.assert_close(got["ce_scale2"].double(), want2, atol=1e-6, rtol=0)
    plain = MultiScaleLoss(weights=(1.0, 0.5))(torch.zeros(1), out, y)
    off = MultiScaleLoss(weights=(1.0, 0.5), prior=prior, logit_adjust=0.0)(torch.zeros(1), out, y)
    assert all(torch.equal(plain[k], off[k]) for k in plain)


@pytest.mark.parametrize("tau", [-1.0, float("inf"), float("nan")])
def test_a_bad_tau_is_refused(tau):
    with pytest.raises(UsageError, match="logit_adjust must be finite and >= 0"):
        MultiScaleLoss(prior=torch.tensor([0.5, 0.5]), logit_adjust=tau)


# ---- the synthetic long tail, shot groups ---------------------------------------------------------------------------
def test_long_tail_counts_by_hand():
    # K = 3, 100 images, r = 4: 100, 100 / 4^(1/2) = 50, 100 / 4 = 25
    assert long_tail_counts(3, 100, 4.0).tolist() == [100, 50, 25]
    assert long_tail_counts(10, 150, 1.0).tolist() == [150] * 10
    import pandas as pd

    table = pd.DataFrame(
        {"path": [f"{k}_{i}" for k in range(3) for i in range(100)], "label": np.repeat([0, 1, 2], 100)}
    )
    kept = long_tailed(table, 4.0)
    assert kept["label"].value_counts().sort_index().tolist() == [100, 50, 25]
    assert kept[kept.label == 1]["path"].tolist() == [f"1_{i}" for i in range(50)]  # the first images of each class


def test_shot_groups_by_hand():
    # training images 150, 100, 20, 19, 0 (>100 many; 20..100 medium; <20 few); per-class accuracy 0.9, 0.5, 0.7, 0.2
    count, correct, train = [10, 10, 10, 10, 0], [9, 5, 7, 2, 0], [150, 100, 20, 19, 0]
    got = shot_accuracy(count, correct, train, (100, 20))
    assert got["many"] == {"classes": 1, "accuracy": pytest.approx(90.0)}
    assert got["medium"] == {"classes": 2, "accuracy": pytest.approx(60.0)}  # (50 + 70) / 2
    assert got["few"] == {"classes": 1, "accuracy": pytest.approx(20.0)}  # the class never evaluated is not counted


def test_ece_by_hand():
    # label 0 for all: confidences 0.95 (right), 0.95 (wrong: class 1), 0.5 (right), 0.45 (wrong: class 1); 15 bins
    # (b / 15, (b + 1) / 15]: the 0.95s share bin 14, 0.5 is bin 7, 0.45 bin 6. Per bin |correct - summed confidence|:
    # |1 - 1.9| + |1 - 0.5| + |0 - 0.45| = 1.85, over 4 images: ECE = 0.4625
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.05, 0.95, 0.0], [0.5, 0.25, 0.25], [0.25, 0.45, 0.30]])
    acc = MetricAccumulator(3)
    acc.update(probs, torch.zeros(4, dtype=torch.long))
    assert acc.state["bin_count"][[6, 7, 14]].tolist() == [1.0, 1.0, 2.0] and acc.state["bin_count"].sum() == 4
    assert acc.summary()["ece"] == pytest.approx(0.4625, abs=1e-7)  # float32 probabilities


# ---- flip TTA and temperature scaling ------------------------------------------------------------------------------
def test_flip_tta_is_the_mean_of_two_explicit_forwards():
    torch.manual_seed(1)
    model = tiny_model().eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = (model(x).softmax(-1) + model(torch.flip(x, dims=[3])).softmax(-1)) / 2
        got = FlipTTA(model).predict(x, 1)
        fused = FlipTTA(model).predict(x, 2)
        fused_want = (model.predict(x, 2).probs + model.predict(x.flip(-1), 2).probs) / 2
    torch.testing.assert_close(got.probs, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(fused.probs, fused_want, atol=0, rtol=0)
    assert fused.zoomed.tolist() == [2, 2, 2]  # both views of every image ran the zoom


def test_the_fitted_temperature_minimises_the_nll():
    torch.manual_seed(2)
    z = torch.randn(2000, 5) * 2.0
    y = torch.distributions.Categorical(logits=z / 2.5).sample()  # labels drawn at temperature 2.5
    t = fit_temperature(z, y)
    nll = lambda s: torch.nn.functional.cross_entropy(z.double() / s, y).item()  # noqa: E731
    assert nll(t) <= min(nll(t * 1.001), nll(t / 1.001))  # a minimum (float64)
    assert 2.2 < t < 2.8  # and near the temperature the labels were drawn at (2000 draws, seeded)


# ---- end to end: train, evaluate, calibrate --------------------------------------------------------------------------
def test_long_tailed_training_with_both_remedies_and_the_eval_reports(tmp_path, capsys):
    from ramstrans.checkpoint import load_checkpoint
    from ramstrans.cli import main

    out = tmp_path / "run"
    extra = [
        "data.synthetic.imbalance=3",
        "data.sampler=class_balanced",
        "loss.logit_adjust=1.0",
        "data.val_fraction=0.34",
    ]
    assert main(["train", "--no-progress", "--output-dir", str(out)] + sets(*TINY_TRAIN, *extra)) == 0
    ckpt = load_checkpoint(out / "checkpoint.pth")
    # 6 images per class, r = 3: 6, round(6 / 3^0.5) = 3, 2; a third held out for validation (at least one each)
    assert ckpt["class_counts"] == [4, 2, 1]
    assert (
        main(
            ["eval", "--checkpoint", str(out), "--workers", "0", "--no-progress", "--many-shot", "3", "--few-shot", "2"]
        )
        == 0
    )
    r = eval_summary(capsys)
    assert (
        r["shots"]["many"]["classes"] == 1
        and r["shots"]["medium"]["classes"] == 1
        and r["shots"]["few"]["classes"] == 1
    )
    assert 0.0 <= r["ece"] <= 1.0 and r["temperature"] == 1.0
    assert (Path(r["output"]).parent / "reliability.png").stat().st_size > 1000
    assert (
        main(["eval", "--checkpoint", str(out), "--split", "val", "--calibrate", "--workers", "0", "--no-progress"])
        == 0
    )
    stored = json.loads((out / "checkpoint.pth.temperature.json").read_text())
    r = eval_summary(capsys)
    assert r["temperature"] == stored["temperature"] > 0 and stored["images"] == 4 and stored["split"] == "val"
    assert main(["eval", "--checkpoint", str(out), "--tta", "flip", "--workers", "0", "--no-progress"]) == 0
    r = eval_summary(capsys)
    assert r["tta"] == "flip" and r["passes_per_image"] == 2.0 and r["temperature"] == stored["temperature"]


def test_the_sweep_reads_the_same_calibrated_probabilities_as_predict():
    from ramstrans.inference.sweep import scale_outputs

    torch.manual_seed(3)
    model = tiny_model().eval()
    model.set_temperature(2.5)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        _, first, fused, _ = scale_outputs(model, [{"image": x, "label": torch.zeros(4)}], torch.device("cpu"), None)
        single, both = model.predict(x, 1), model.predict(x, 2)
        plain = model(x).softmax(-1)
    torch.testing.assert_close(first, single.probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(fused, both.probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(single.probs, (model(x) / 2.5).softmax(-1), atol=1e-6, rtol=0)
    assert not torch.allclose(single.probs, plain, atol=1e-3)


def test_logit_adjustment_reaches_the_label_term_of_distillation():
    from ramstrans.distill.loss import DistillationLoss

    torch.manual_seed(4)
    prior = torch.tensor([0.6, 0.3, 0.1])
    logits, teacher = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 2])
    out = MultiScaleOutput(logits=[logits], boxes=[], rollout=[], cls_attention=[])
    base = MultiScaleLoss(weights=(1.0,), prior=prior, logit_adjust=1.0)
    crit = DistillationLoss(base=base, teacher=lambda x: teacher, alpha=0.5, tau=1.0)
    terms = crit(torch.zeros(4, 3, 8, 8), out, y)
    want = 0.5 * torch.nn.functional.cross_entropy(logits.double() + prior.double().log(), y)
    torch.testing.assert_close(terms["ce_scale1"].double(), want, atol=1e-6, rtol=0)
