"""Knowledge distillation: the student's tokens against timm's distilled ViT, the loss against hand-written formulas,
the frozen teacher, exact resume, and a teacher trained and exported by the CLI."""

import json
import shutil

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY_TRAIN, eval_summary, sets, stop_after_step
from test_pretrained import write_google_npz
from timm.models.deit import VisionTransformerDistilled

from ramstrans.checkpoint import load_checkpoint
from ramstrans.cli import main
from ramstrans.config import load_config
from ramstrans.distill.loss import DistillationLoss, kd_term
from ramstrans.distill.teacher import Teacher
from ramstrans.losses import MultiScaleLoss
from ramstrans.models import MultiScaleForward, MultiScaleOutput, create_model, crop_and_zoom
from ramstrans.models.build import model_from_checkpoint
from ramstrans.training.run import run_training

VIT = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=5)
TEACHER_TRAIN = [
    "model.type=classifier",
    "model.backbone=resnet10t",
    "model.num_scales=1",
    "loss.scale_weights=[1.0]",
    "model.backbone_kwargs={channels: [8, 8, 16, 16]}",
]
STUDENT = ["model.dist_token=true"]


def _classifier(num_classes, **kw):
    """A narrow ResNet-10 classifier at 64 px (``model.type: classifier``)."""
    kw = {"channels": [8, 8, 16, 16], **kw}
    return create_model("resnet10t", num_classes, type="classifier", num_scales=1, img_size=64, **kw)


def _student(num_scales=1, **kw):
    torch.manual_seed(0)
    return create_model(
        "vit_tiny_patch16_224",
        num_classes=5,
        img_size=64,
        num_scales=num_scales,
        dist_token=True,
        embed_dim=32,
        depth=2,
        num_heads=2,
        **kw,
    )


def test_one_scale_student_is_timms_distilled_vit():
    model = _student()
    ref = VisionTransformerDistilled(**VIT)
    ref.load_state_dict(model.backbone.vit.state_dict())
    ref.set_distilled_training(True)
    x = torch.randn(3, 3, 64, 64)
    model.train(), ref.train()
    cls, dist = ref(x)  # timm's training tuple
    out = model.forward_multiscale(x)
    assert torch.equal(out.logits[0], cls) and torch.equal(out.dist_logits[0], dist)
    assert not torch.allclose(cls, dist)  # two heads, not their mean twice
    model.eval(), ref.eval()
    assert torch.equal(model(x), ref(x))  # eval: the mean of the heads, timm's inference output
    model.eval_head = "dist"
    assert torch.equal(model(x), ref.head_dist(ref.forward_features(x)[:, 1]))


def test_forgetting_distilled_training_is_caught():
    model = _student().train()
    assert model.backbone.vit.distilled_training is True
    model.backbone.vit.set_distilled_training(False)  # timm would now return the heads' mean in training
    with pytest.raises(RuntimeError, match="set_distilled_training"):
        model.forward_multiscale(torch.randn(2, 3, 64, 64))


def test_tail_token_layout_with_moved_position_embedding_is_the_same_function():
    """The source puts the distillation token last: [cls, patches, dist] with its position embedding moved along."""
    model = _student().double().eval()
    vit = model.backbone.vit
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    patches = vit.patch_embed(x)
    pos = vit.pos_embed
    tail = torch.cat(
        [
            vit.cls_token.expand(2, -1, -1) + pos[:, :1],
            patches + pos[:, 2:],
            vit.dist_token.expand(2, -1, -1) + pos[:, 1:2],
        ],
        dim=1,
    )
    with torch.no_grad():
        tokens = vit.norm(vit.blocks(tail))
        want = (vit.head(tokens[:, 0]) + vit.head_dist(tokens[:, -1])) / 2
        torch.testing.assert_close(model(x), want, rtol=0, atol=1e-10)


def test_a_plain_ramstrans_checkpoint_lifts_into_the_student(trained):
    model = _student(num_scales=2)
    model.backbone.load_pretrained(str(trained / "checkpoint.pth"))
    sd = load_checkpoint(trained / "checkpoint.pth")["model"]
    vit = model.backbone.vit
    assert torch.equal(vit.dist_token, sd["backbone.vit.cls_token"])
    assert torch.equal(vit.pos_embed[:, 1], sd["backbone.vit.pos_embed"][:, 0])
    assert torch.equal(model.backbone.zoom_cls_tokens[0], sd["backbone.zoom_cls_tokens.0"])
    assert torch.equal(model.backbone.zoom_dist_tokens[0], sd["backbone.vit.cls_token"])  # from the dist token


def test_plain_vit_weights_lift_into_the_student(tmp_path):
    torch.manual_seed(1)
    plain = timm.create_model("vit_tiny_patch16_224", img_size=64, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    write_google_npz(plain, tmp_path / "plain.npz")
    for source in ("plain.pth", "plain.npz"):  # a Google .npz reads through a plain twin the build makes
        model = _student(num_scales=2, pretrained=str(tmp_path / source))
        vit, sd = model.backbone.vit, plain.state_dict()
        torch.testing.assert_close(vit.dist_token, sd["cls_token"], rtol=0, atol=1e-6)
        torch.testing.assert_close(vit.pos_embed[:, 1], sd["pos_embed"][:, 0], rtol=0, atol=1e-6)
        torch.testing.assert_close(vit.pos_embed[:, 2:], sd["pos_embed"][:, 1:], rtol=0, atol=1e-6)
        torch.testing.assert_close(vit.head_dist.weight, sd["head.weight"], rtol=0, atol=1e-6)  # 5 classes: copied
        torch.testing.assert_close(model.backbone.zoom_dist_tokens[0], sd["cls_token"], rtol=0, atol=1e-6)
    other = _student()
    other.backbone.vit.reset_classifier(7)
    fresh = other.backbone.vit.head_dist.weight.clone()
    other.backbone.load_pretrained(str(tmp_path / "plain.pth"))  # another class count: fresh heads stay
    assert torch.equal(other.backbone.vit.head_dist.weight, fresh)


def test_a_classifier_loads_timm_files_and_its_own_checkpoints(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    src = timm.create_model("resnet10t", num_classes=9, channels=[8, 8, 16, 16])
    save_file(src.state_dict(), str(tmp_path / "r.safetensors"))
    clf = _classifier(5, pretrained=str(tmp_path / "r.safetensors"))
    got, want = clf.backbone.net.state_dict(), src.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.startswith("fc."))
    assert clf.backbone.net.fc.weight.shape == (5, 16)  # 9 classes in the file: the fresh head stays
    with pytest.raises(ValueError, match="do not fit model 'resnet10t'"):
        _classifier(5, channels=[8, 8, 16, 32], pretrained=str(tmp_path / "r.safetensors"))
    run = _teacher_run(tmp_path)  # a ramstrans checkpoint of a classifier: its weights and normalisation
    clf = _classifier(3, pretrained=str(run / "checkpoint.pth"))
    saved = load_checkpoint(run / "checkpoint.pth")["model"]
    assert all(torch.equal(v, saved[f"backbone.{k}"]) for k, v in clf.backbone.state_dict().items())


def _hand_kl(student, teacher, tau):
    s, t = student.double() / tau, teacher.double() / tau
    p_t = t.softmax(-1)
    return (p_t * (p_t.log() - s.log_softmax(-1))).sum() * tau**2


def test_distillation_terms_equal_the_formulas():
    torch.manual_seed(0)
    B, K, tau = 4, 6, 2.0
    s, t = torch.randn(B, K), torch.randn(B, K)
    assert kd_term(s, t, "soft", tau, "batchmean").item() == pytest.approx(_hand_kl(s, t, tau).item() / B, rel=1e-5)
    assert kd_term(s, t, "soft", tau, "classes").item() == pytest.approx(_hand_kl(s, t, tau).item() / (B * K), rel=1e-5)
    hard = -s.double().log_softmax(-1)[torch.arange(B), t.argmax(-1)].mean()
    assert kd_term(s, t, "hard").item() == pytest.approx(hard.item(), rel=1e-6)
    assert kd_term(t, t, "soft", tau).item() == pytest.approx(0.0, abs=1e-6)  # student agrees with the teacher


class _Fixed(torch.nn.Module):
    """A 'teacher' returning given logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_distillation_loss_weights_the_terms_per_scale():
    torch.manual_seed(0)
    B, K, alpha, tau = 3, 5, 0.3, 1.5
    cls, dist, t = torch.randn(2, B, K), torch.randn(2, B, K), torch.randn(B, K)
    y = torch.tensor([0, 4, 2])
    out = MultiScaleOutput(
        logits=list(cls), dist_logits=list(dist), boxes=[torch.zeros(B, 4)], rollout=[], cls_attention=[]
    )
    loss = DistillationLoss(
        base=MultiScaleLoss(weights=(1.0, 0.7)), teacher=_Fixed(t), kind="soft", alpha=alpha, tau=tau, scales=[0]
    )
    terms = loss(torch.zeros(B, 3, 8, 8), out, y)
    ce = [F.cross_entropy(c.double(), y).item() for c in (*cls, *dist)]
    assert terms["ce_scale1"].item() == pytest.approx((1 - alpha) * ce[0], rel=1e-6)
    assert terms["kd_scale1"].item() == pytest.approx(alpha * _hand_kl(dist[0], t, tau).item() / B, rel=1e-5)
    assert terms["ce_scale2"].item() == pytest.approx(0.7 * (ce[1] + ce[3]) / 2, rel=1e-6)  # no teacher: labels
    assert set(terms) == {"ce_scale1", "kd_scale1", "ce_scale2"}


def _resnet_teacher():
    torch.manual_seed(3)
    return _classifier(5)


def test_kd_gradient_reaches_head_dist_only_and_the_teacher_never_moves():
    student, net = _student().train(), _resnet_teacher()
    teacher = Teacher(model=net, student_mean=student.backbone.mean, student_std=student.backbone.std)
    before = {k: v.clone() for k, v in net.state_dict().items()}  # BatchNorm running statistics included
    loss = DistillationLoss(base=MultiScaleLoss(weights=(1.0,)), teacher=teacher, alpha=1.0)
    loss.train()  # the wrapper may be put in train mode; the teacher stays in eval mode
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    terms = loss(x, student.forward_multiscale(x), y)
    sum(terms.values()).backward()
    vit = student.backbone.vit
    assert vit.head_dist.weight.grad.abs().sum() > 0
    assert vit.head.weight.grad is None or vit.head.weight.grad.abs().sum() == 0  # alpha 1: KD only
    opt.step()
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_teacher_sees_the_student_pixels_in_its_own_normalisation():
    net = _resnet_teacher()  # ImageNet statistics
    s_mean, s_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    teacher = Teacher(model=net, student_mean=s_mean, student_std=s_std)
    pixels = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    x = ((pixels - torch.tensor(s_mean).view(1, 3, 1, 1)) / torch.tensor(s_std).view(1, 3, 1, 1)).float()
    t_mean, t_std = (
        torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    )
    want = (pixels - t_mean) / t_std
    torch.testing.assert_close(teacher.normalize_input(x).double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(teacher(x), torch.log_softmax(net.eval()(want.float()), -1), rtol=0, atol=1e-5)


def _teacher_run(tmp_path):
    out = tmp_path / "teacher"
    assert main(["train", "--no-progress", "--output-dir", str(out)] + sets(*TINY_TRAIN, *TEACHER_TRAIN)) == 0
    return out


def test_a_teacher_trained_and_exported_by_the_cli_teaches(tmp_path, capsys):
    run = _teacher_run(tmp_path)
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(run / "checkpoint.pth"),
                "--format",
                "timm",
                "--out",
                str(tmp_path / "exported"),
            ]
        )
        == 0
    )
    for i, teacher in enumerate((run / "checkpoint.pth", run, tmp_path / "exported")):
        student = tmp_path / f"student{i}"
        assert (
            main(
                ["train", "--no-progress", "--output-dir", str(student)]
                + sets(
                    *TINY_TRAIN, *STUDENT, "distill.enabled=true", f"distill.teacher={teacher}", "distill.scales=[1, 2]"
                )
            )
            == 0
        )
        records = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
        first = next(r for r in records if r["kind"] == "teacher")
        assert first["name"] == "resnet10t" and first["split"] == "test"
        train = [r for r in records if r["kind"] == "train"]
        assert {"ce_scale1", "kd_scale1", "ce_scale2", "kd_scale2"} <= set(train[0])
        assert all(abs(r["loss"] - sum(r[k] for k in r if k[:3] in ("ce_", "kd_"))) < 1e-5 for r in train)
        ckpt = load_checkpoint(student / "checkpoint.pth")
        assert ckpt["teacher"]["name"] == "resnet10t" and len(ckpt["teacher"]["sha256"]) == 64
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pth"), "--no-progress"]) == 0
    teacher_alone = eval_summary(capsys)
    summary = json.loads((tmp_path / "student0" / "summary.json").read_text())
    for k in ("top1", "top5", "mean_class_acc"):  # reported through the student's renormalisation
        assert summary["teacher"][k] == pytest.approx(teacher_alone[k], abs=1e-3), k
    assert main(["eval", "--checkpoint", str(tmp_path / "student0" / "checkpoint.pth"), "--no-progress"]) == 0
    res = eval_summary(capsys)
    assert {"top1_mean", "top1_cls", "top1_dist"} <= set(res) and res["top1"] == res["top1_mean"]


def test_resume_with_a_teacher_is_exact_and_checks_the_teacher(tmp_path, monkeypatch):
    run = _teacher_run(tmp_path)

    def cfg(out, teacher=run):
        return load_config(
            None,
            TINY_TRAIN
            + STUDENT
            + [
                "distill.enabled=true",
                f"distill.teacher={teacher}",
                "distill.type=hard",
                "train.steps=4",
                f"train.output_dir={out}",
            ],
        )

    straight = run_training(cfg(tmp_path / "a"), show_progress=False)
    want = load_checkpoint(straight["checkpoint"])["model"]
    restore = stop_after_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg(tmp_path / "b"), show_progress=False)
    restore()
    other = shutil.copytree(run, tmp_path / "other_teacher")
    state = torch.load(other / "checkpoint.pth", weights_only=False)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, other / "checkpoint.pth")
    with pytest.raises(Exception, match="not the teacher the checkpoint was trained with"):
        run_training(cfg(tmp_path / "b", other), resume=str(tmp_path / "b" / "checkpoint.pth"), show_progress=False)
    resumed = run_training(cfg(tmp_path / "b"), resume=str(tmp_path / "b" / "checkpoint.pth"), show_progress=False)
    got = load_checkpoint(resumed["checkpoint"])["model"]
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_onnx_of_a_student_and_a_classifier(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    run = _teacher_run(tmp_path)
    student = tmp_path / "student"
    assert main(["train", "--no-progress", "--output-dir", str(student)] + sets(*TINY_TRAIN, *STUDENT)) == 0
    for ckpt, scales in ((run / "checkpoint.pth", 1), (student / "checkpoint.pth", 2)):
        path = tmp_path / f"{ckpt.parent.name}.onnx"
        assert (
            main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(path), "--scales", str(scales)])
            == 0
        )
        model = model_from_checkpoint(load_checkpoint(ckpt))[0].eval()
        x = torch.randn(3, 3, 64, 64)
        got = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})
        want = model.predict(x, scales, boxes=False).probs if scales > 1 else model(x)
        np.testing.assert_allclose(got[1 if scales > 1 else 0], want.detach().numpy(), atol=1e-4)


class _Spy(torch.nn.Module):
    """A teacher that records the images it is shown."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 5)


def test_with_transmix_the_teacher_sees_the_mixed_images_and_ce_takes_the_soft_targets():
    from ramstrans.training.mixing import Mixer
    from ramstrans.training.steps import MixedStep

    student = _student(num_scales=2).train()
    spy = _Spy()
    loss = DistillationLoss(base=MultiScaleLoss(weights=(1.0, 1.0)), teacher=spy, alpha=0.5, scales=[0, 1])
    mixer = Mixer(num_classes=5, image_size=(64, 64), grid_size=(4, 4), mixup_alpha=0.0, cutmix_alpha=1.0, seed=3)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    step = MixedStep(model=MultiScaleForward(student), criterion=loss, device=torch.device("cpu"), mixer=mixer)
    terms, stats = step({"image": x, "label": y}, 7, 1.0)
    assert stats["mix_cutmix"].item() == 1 and set(stats) == {"mix_cutmix", "lam_scale1", "lam_scale2"}
    mixed, targets_for = mixer(x, y, 7)
    assert not torch.equal(mixed, x) and torch.equal(spy.seen[0], mixed)
    out = student.forward_multiscale(mixed)
    targets, _ = targets_for(out)
    assert targets[0].dim() == 2  # soft (B, K) targets of the TransMix λ
    assert torch.equal(spy.seen[1], crop_and_zoom(mixed, out.boxes[0], (64, 64)))  # scale 2: the student's crop
    want_ce = 0.5 * -(targets[0] * out.logits[0].log_softmax(-1)).sum(-1).mean()
    assert terms["ce_scale1"].item() == pytest.approx(want_ce.item(), rel=1e-5)


def test_both_models_refuse_a_batch_of_the_wrong_shape_naming_the_expected_one():
    """The one shape check (InputNorm.check_input) serves RAMSTrans and the classifier, each named in its message."""
    from conftest import tiny_model

    clf = _classifier(5)
    for model, who in ((tiny_model(), "RAMSTrans"), (clf, "the classifier")):
        with pytest.raises(ValueError, match=rf"^{who} expects a \(B, 3, 64, 64\) batch, got shape \(2, 3, 48, 64\)$"):
            model(torch.zeros(2, 3, 48, 64))
    with pytest.raises(ValueError, match=r"^RAMSTrans expects a \(B, 3, 64, 64\) batch, got shape \(3, 64, 64\)$"):
        tiny_model().forward_multiscale(torch.zeros(3, 64, 64))
