"""The zoom as a teacher: scale self-distillation against float64 hand computations, its detached target against the
model's own test-time fusion, a multi-scale RAMS-Trans teacher for single-pass students, exact resume, and the bad
inputs of the new keys."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TRAIN, sets, stop_after_step, tiny_model

from ramstrans.checkpoint import load_checkpoint
from ramstrans.cli import main
from ramstrans.config import load_config
from ramstrans.distill.loss import DistillationLoss
from ramstrans.distill.self_distill import SelfDistillationLoss
from ramstrans.distill.teacher import load_teacher
from ramstrans.inference.evaluate import run_eval
from ramstrans.losses import MultiScaleLoss
from ramstrans.models import MultiScaleOutput
from ramstrans.models.build import model_from_checkpoint
from ramstrans.registry import EvalRequest
from ramstrans.training.build import build_criterion
from ramstrans.training.run import run_training

SD = ["loss.self_distill=2.0", "loss.self_distill_tau=2.0"]


def _out(logits, dist=None):
    B = logits[0].shape[0]
    return MultiScaleOutput(
        logits=list(logits), dist_logits=list(dist or []), boxes=[torch.zeros(B, 4)], rollout=[], cls_attention=[]
    )


def _hand_sd(student, scales, beta, tau, target):
    """β τ² KL(q ‖ softmax(z_1 / τ)) / B in float64, q ∝ p^(1/τ) of p = mean softmax (fused) or the last scale's."""
    probs = [torch.softmax(z.double(), -1) for z in scales]
    p = torch.stack(probs).mean(0) if target == "fused" else probs[-1]
    q = p ** (1 / tau)
    q = q / q.sum(-1, keepdim=True)
    log_s = torch.log_softmax(student.double() / tau, -1)
    return beta * tau**2 * (q * (q.log() - log_s)).sum() / student.shape[0]


@pytest.mark.parametrize("target", ["fused", "last"])
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_self_distillation_term_equals_the_float64_formula(target, tau):
    torch.manual_seed(1)
    z = torch.randn(3, 4, 6) * 3  # 3 scales, 4 images, 6 classes
    y = torch.tensor([0, 5, 2, 2])
    loss = SelfDistillationLoss(base=MultiScaleLoss(weights=(1.0, 0.5, 0.25)), beta=1.5, tau=tau, target=target)
    terms = loss(torch.zeros(4, 3, 8, 8), _out(z), y)
    want = _hand_sd(z[0], list(z), 1.5, tau, target)
    assert terms["sd_scale1"].item() == pytest.approx(want.item(), rel=1e-5)
    ce = [F.cross_entropy(s.double(), y).item() for s in z]
    assert [terms[f"ce_scale{i + 1}"].item() for i in range(3)] == pytest.approx(
        [ce[0], 0.5 * ce[1], 0.25 * ce[2]], rel=1e-6
    )
    assert set(terms) == {"ce_scale1", "ce_scale2", "ce_scale3", "sd_scale1"}


def test_a_hand_worked_value():
    # scale 1 logits (0, 0): uniform; scale 2 logits (ln 3, 0): (3/4, 1/4); fused (5/8, 3/8)
    z1, z2 = torch.zeros(1, 2), torch.tensor([[torch.log(torch.tensor(3.0)), 0.0]])
    loss = SelfDistillationLoss(base=MultiScaleLoss(), beta=1.0)
    sd = loss(torch.zeros(1, 3, 8, 8), _out([z1, z2]), torch.tensor([0]))["sd_scale1"].item()
    want = 5 / 8 * torch.log(torch.tensor(5 / 4)).item() + 3 / 8 * torch.log(torch.tensor(3 / 4)).item()
    assert sd == pytest.approx(want, rel=1e-6)


def test_no_gradient_reaches_the_target():
    z = torch.randn(2, 4, 5, requires_grad=True)
    loss = SelfDistillationLoss(base=MultiScaleLoss(), beta=1.0, tau=2.0)
    sd = loss(torch.zeros(4, 3, 8, 8), _out([z[0], z[1]]), torch.tensor([0, 1, 2, 3]))["sd_scale1"]
    (grad,) = torch.autograd.grad(sd, z)
    assert grad[0].abs().sum() > 0
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))  # the zoomed scale is the target only


def test_beta_zero_is_bit_identical_to_today():
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    grads = []
    for criterion in (
        MultiScaleLoss(),
        SelfDistillationLoss(base=MultiScaleLoss(), beta=0.0),
        build_criterion(load_config(None, ["loss.self_distill=0"]).loss, 2),
    ):
        torch.manual_seed(0)
        model = tiny_model().train()  # the same weights for each criterion
        loss = sum(criterion(x, model.forward_multiscale(x), y).values())
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert isinstance(build_criterion(load_config(None, []).loss, 2), MultiScaleLoss)
    for loss, g in grads[1:]:
        assert torch.equal(loss, grads[0][0])
        assert len(g) == len(grads[0][1]) and all(torch.equal(a, b) for a, b in zip(g, grads[0][1]))


def test_the_fused_target_is_the_models_own_test_time_fusion():
    model = tiny_model(drop_rate=0.3).eval()  # eval: no dropout, as predict
    x = torch.randn(3, 3, 64, 64)
    loss = SelfDistillationLoss(base=MultiScaleLoss(), beta=1.0)
    target = loss.target_log_probs(x, model.forward_multiscale(x)).exp()
    torch.testing.assert_close(target, model.predict(x, 2).probs, rtol=0, atol=1e-6)
    last = SelfDistillationLoss(base=MultiScaleLoss(), beta=1.0, target="last")
    torch.testing.assert_close(
        last.target_log_probs(x, model.forward_multiscale(x)).exp(),
        model.predict(x, 2).scale_probs[1],
        rtol=0,
        atol=1e-6,
    )


def test_with_a_distillation_token_the_dist_head_takes_the_term_and_the_class_head_the_labels():
    torch.manual_seed(2)
    cls, dist = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    y = torch.tensor([0, 1, 2, 3])
    loss = SelfDistillationLoss(base=MultiScaleLoss(), beta=1.0, head="cls")
    terms = loss(torch.zeros(4, 3, 8, 8), _out(list(cls), list(dist)), y)
    assert terms["ce_scale1"].item() == pytest.approx(F.cross_entropy(cls[0].double(), y).item(), rel=1e-6)
    assert terms["ce_scale2"].item() == pytest.approx(
        (F.cross_entropy(cls[1].double(), y) + F.cross_entropy(dist[1].double(), y)).item() / 2, rel=1e-6
    )
    assert terms["sd_scale1"].item() == pytest.approx(_hand_sd(dist[0], list(cls), 1.0, 1.0, "fused").item(), rel=1e-5)


def test_the_ema_source_takes_the_target_from_the_ema_model():
    online, ema = tiny_model().train(), tiny_model(drop_rate=0.0).eval()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 64, 64)
    loss = SelfDistillationLoss(base=MultiScaleLoss(), beta=1.0, ema=ema)
    out = online.forward_multiscale(x)
    torch.testing.assert_close(loss.target_log_probs(x, out).exp(), ema.predict(x, 2).probs, rtol=0, atol=1e-6)


def test_a_two_scale_teacher_teaches_its_fusion_as_eval_scales_2_scores_it(trained, tmp_path):
    rams, _, names = model_from_checkpoint(load_checkpoint(trained / "checkpoint.pth"))
    rams.eval()
    norm = (rams.backbone.mean, rams.backbone.std)
    teacher, _ = load_teacher(str(trained), names, 64, *norm)
    assert teacher.scales == 2 and teacher.passes_per_image == 2
    x = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(teacher(x).exp(), rams.predict(x, 2).probs, rtol=0, atol=1e-6)
    single, _ = load_teacher(str(trained), names, 64, *norm, 1)
    torch.testing.assert_close(single(x), torch.log_softmax(rams(x), -1), rtol=0, atol=1e-6)
    # a one-scale student without a distillation token learns from it on its only head, and the teacher's reported
    # accuracy is eval --scales 2 of its checkpoint
    out = tmp_path / "student"
    assert (
        main(
            ["train", "--no-progress", "--output-dir", str(out)]
            + sets(
                *TINY_TRAIN,
                "model.num_scales=1",
                "loss.scale_weights=[1.0]",
                "distill.enabled=true",
                f"distill.teacher={trained}",
            )
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    request = EvalRequest(str(trained / "checkpoint.pth"), num_workers=0)
    fused = run_eval(request, scales=2, output_dir=str(tmp_path / "e"), show_progress=False)
    assert summary["teacher"]["top1"] == pytest.approx(fused["top1"], abs=1e-6)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in records if r["kind"] == "teacher")["passes_per_image"] == 2
    assert {"ce_scale1", "kd_scale1"} <= set(next(r for r in records if r["kind"] == "train"))


def test_plain_distillation_of_a_student_without_a_distillation_token():
    torch.manual_seed(3)
    z, t = torch.randn(4, 5), torch.log_softmax(torch.randn(4, 5), -1)
    y = torch.tensor([0, 1, 2, 3])

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return t

    loss = DistillationLoss(base=MultiScaleLoss(weights=(1.0,)), teacher=Fixed(), alpha=0.3, tau=2.0)
    terms = loss(torch.zeros(4, 3, 8, 8), _out([z]), y)
    q = torch.softmax(t.double() / 2, -1)
    kl = 2**2 * (q * (q.log() - torch.log_softmax(z.double() / 2, -1))).sum() / 4  # τ² · KL summed / B
    assert terms["ce_scale1"].item() == pytest.approx(0.7 * F.cross_entropy(z.double(), y).item(), rel=1e-6)
    assert terms["kd_scale1"].item() == pytest.approx(0.3 * kl.item(), rel=1e-5)


def test_resume_with_self_distillation_is_exact(tmp_path, monkeypatch):
    def cfg(out):
        return load_config(None, TINY_TRAIN + SD + ["train.steps=4", f"train.output_dir={out}"])

    want = load_checkpoint(run_training(cfg(tmp_path / "a"), show_progress=False)["checkpoint"])["model"]
    restore = stop_after_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg(tmp_path / "b"), show_progress=False)
    restore()
    got = load_checkpoint(
        run_training(cfg(tmp_path / "b"), resume=str(tmp_path / "b" / "checkpoint.pth"), show_progress=False)[
            "checkpoint"
        ]
    )["model"]
    for k in want:
        assert torch.equal(got[k], want[k]), k
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 4 and all("sd_scale1" in r for r in train)
    assert all(abs(r["loss"] - r["ce_scale1"] - r["ce_scale2"] - r["sd_scale1"]) < 1e-5 for r in train)


@pytest.mark.parametrize(
    "extra,culprit",
    [
        (["loss.self_distill=-1"], "loss.self_distill"),
        (["loss.self_distill=1", "loss.self_distill_tau=0"], "loss.self_distill_tau"),
        (["loss.self_distill=1", "loss.self_distill_target=mean"], "loss.self_distill_target"),
        (["loss.self_distill=1", "model.num_scales=1", "loss.scale_weights=[1.0]"], "loss.self_distill"),
        (["loss.self_distill=1", "loss.self_distill_source=ema"], "loss.self_distill_source"),
    ],
)
def test_bad_self_distillation_settings_are_one_sentence(tmp_path, capsys, extra, culprit):
    out = tmp_path / "run"
    assert main(["train", "--no-progress", "--output-dir", str(out)] + sets(*TINY_TRAIN, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'{culprit}'" in err[0]
    assert not out.exists()


def test_teacher_scales_beyond_the_teachers_are_one_sentence(trained, tmp_path, capsys):
    out = tmp_path / "student"
    args = sets(
        *TINY_TRAIN,
        "model.num_scales=1",
        "loss.scale_weights=[1.0]",
        "distill.enabled=true",
        f"distill.teacher={trained}",
        "distill.teacher_scales=3",
    )
    assert main(["train", "--no-progress", "--output-dir", str(out)] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "distill.teacher_scales is 3" in err[0] and "2 scale(s)" in err[0]
    assert not (out / "checkpoint.pth").exists()
