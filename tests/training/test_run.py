"""A training run as a user drives it: resume and extension, run folders, EMA, accumulation, layer decay, compile,
metric files, and the engine's handling of unreadable batches."""

import csv
import json
import logging
import math
import os
import shutil

import pytest
import timm
import torch
from conftest import TINY_TRAIN, tiny_model
from safetensors.torch import save_file

from ramstrans.checkpoint import load_checkpoint
from ramstrans.config import ConfigError, load_config
from ramstrans.data import DataError, StepSampler, load_index
from ramstrans.inference.evaluate import evaluate
from ramstrans.losses import MultiScaleLoss
from ramstrans.models import MultiScaleForward
from ramstrans.models.build import model_from_checkpoint
from ramstrans.training.build import build_optimizer
from ramstrans.training.engine import LoopPlan, train_steps
from ramstrans.training.monitor import RunMonitor
from ramstrans.training.run import resolve_training, run_training
from ramstrans.training.steps import BatchStep, OptimizerUpdate


def _cfg(out, *extra):
    return load_config(None, TINY_TRAIN + [f"train.output_dir={out}", *extra])


def _records(folder, kind):
    return [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _cosine(step, lr, warmup, total):
    """timm's per-step cosine after a linear warm-up from 0, by hand (min_lr 0)."""
    if step < warmup:
        return lr * step / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_extending_a_finished_run_replans_the_cosine(tmp_path, caplog):
    run_training(_cfg(tmp_path, "train.steps=4"), show_progress=False)
    before = load_checkpoint(tmp_path / "checkpoint.pth")["model"]
    cfg, ckpt = resolve_training(None, ["train.steps=8"], str(tmp_path / "checkpoint.pth"))
    with caplog.at_level(logging.WARNING, logger="ramstrans"):
        run_training(cfg, resume=ckpt, show_progress=False)
    lrs = {r["step"]: r["lr"] for r in _records(tmp_path, "train")}
    for done in range(1, 5):  # the first run's schedule over 4 steps (the lr of step s is set before its update)
        assert lrs[done] == pytest.approx(_cosine(done - 1, 0.01, 1, 4), abs=1e-12)
    for done in range(5, 9):  # re-planned over 8 steps, continued at step 4
        assert lrs[done] == pytest.approx(_cosine(done - 1, 0.01, 1, 8), abs=1e-12)
    assert "train.steps 4 -> 8" in caplog.text and "re-planned over 8 steps" in caplog.text
    after = load_checkpoint(tmp_path / "checkpoint.pth")["model"]
    assert not torch.equal(after["backbone.vit.head.weight"], before["backbone.vit.head.weight"])


def test_a_schedule_shorter_than_the_checkpoint_or_another_optimizer_is_refused(tmp_path):
    run_training(_cfg(tmp_path, "train.steps=3"), show_progress=False)
    ckpt = tmp_path / "checkpoint.pth"
    with pytest.raises(ConfigError, match="the checkpoint is at step 3 but train.steps is 2"):
        run_training(resolve_training(None, ["train.steps=2"], str(ckpt))[0], resume=ckpt, show_progress=False)
    with pytest.raises(ConfigError, match=r"train.opt momentum -> adamw"):
        run_training(
            resolve_training(None, ["train.steps=4", "train.opt=adamw"], str(ckpt))[0], resume=ckpt, show_progress=False
        )


def test_resume_and_eval_need_only_the_checkpoint(tmp_path):
    init = timm.create_model("vit_tiny_patch16_224", img_size=64, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    save_file(init.state_dict(), str(tmp_path / "init.safetensors"))
    run_training(
        _cfg(tmp_path / "run", f"model.pretrained={tmp_path / 'init.safetensors'}", "train.steps=2"),
        show_progress=False,
    )
    os.remove(tmp_path / "init.safetensors")
    cfg, ckpt = resolve_training(None, ["train.steps=3"], str(tmp_path / "run"))
    assert run_training(cfg, resume=ckpt, show_progress=False)["train"]["steps"] == 1
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pth")
    model, _, names = model_from_checkpoint(state)
    assert names == state["class_names"] and all(
        torch.equal(v, state["model"][k]) for k, v in model.state_dict().items()
    )


def test_resume_drops_the_interrupted_tail_of_the_log(tmp_path, monkeypatch):
    real = RunMonitor.after_step

    def stop_at_three(self, done, batches):
        real(self, done, batches)
        if done == 3:
            raise KeyboardInterrupt  # step 3 was logged, its checkpoint was not due (ckpt_every 2)

    monkeypatch.setattr(RunMonitor, "after_step", stop_at_three)
    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(tmp_path, "train.steps=4"), show_progress=False)
    monkeypatch.setattr(RunMonitor, "after_step", real)
    assert [r["step"] for r in _records(tmp_path, "train")] == [1, 2, 3]
    run_training(_cfg(tmp_path, "train.steps=4"), resume=tmp_path / "checkpoint.pth", show_progress=False)
    assert [r["step"] for r in _records(tmp_path, "train")] == [1, 2, 3, 4]
    with open(tmp_path / "metrics_train.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


def test_resume_into_another_folder_that_holds_a_run_is_refused(tmp_path):
    run_training(_cfg(tmp_path / "a", "train.steps=2"), show_progress=False)
    run_training(_cfg(tmp_path / "b", "train.steps=2"), show_progress=False)
    cfg, ckpt = resolve_training(None, ["train.steps=3", f"train.output_dir={tmp_path / 'b'}"], str(tmp_path / "a"))
    with pytest.raises(ValueError, match="already holds a run"):
        run_training(cfg, resume=ckpt, show_progress=False)
    cfg, ckpt = resolve_training(None, ["train.steps=3", f"train.output_dir={tmp_path / 'c'}"], str(tmp_path / "a"))
    run_training(cfg, resume=ckpt, show_progress=False)  # a new folder: the run branches off
    assert [(r["step"], r["resumed"]) for r in _records(tmp_path / "c", "start")] == [(2, True)]


def test_keep_the_last_n_checkpoints(tmp_path):
    run_training(_cfg(tmp_path, "train.ckpt_every=1", "train.keep_checkpoints=2"), show_progress=False)
    names = sorted(p.name for p in tmp_path.glob("checkpoint*.pth"))
    assert names == ["checkpoint.pth", "checkpoint_step0000002.pth", "checkpoint_step0000003.pth"]
    assert os.path.samefile(tmp_path / "checkpoint.pth", tmp_path / "checkpoint_step0000003.pth")  # no second copy
    assert load_checkpoint(tmp_path / "checkpoint_step0000002.pth")["step"] == 2
    run_training(_cfg(tmp_path / "all", "train.ckpt_every=1", "train.keep_checkpoints=0"), show_progress=False)
    assert len(list((tmp_path / "all").glob("checkpoint_step*.pth"))) == 3


def _batch(n, skipped=0):
    if n == 0:
        return {"skipped": skipped}
    return {"image": torch.randn(n, 3, 64, 64), "label": torch.zeros(n, dtype=torch.long), "skipped": skipped}


class _Schedule:
    def __init__(self):
        self.updates = []

    def step_update(self, num_updates):
        self.updates.append(num_updates)


def _plain(model):
    """A plain batch step and SGD update of a one-scale model."""
    step = BatchStep(
        model=MultiScaleForward(model), criterion=MultiScaleLoss(weights=(1.0,)), device=torch.device("cpu")
    )
    return step, OptimizerUpdate(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), params=list(model.parameters()))


def test_a_step_whose_batches_are_all_unreadable_draws_new_ones():
    model = tiny_model(num_scales=1, num_classes=3)
    sched, calls = _Schedule(), []
    loader = [_batch(2), _batch(0, 2), _batch(0, 2), _batch(2), _batch(2)]
    stats = train_steps(
        *_plain(model),
        sched,
        loader,
        LoopPlan(start_step=0, total_steps=3, start_batch=0),
        after_step=lambda d, b: calls.append((d, b)),
        show_progress=False,
    )
    assert calls == [(1, 1), (2, 4), (3, 5)]  # every step (the final one too) is done and reported
    assert sched.updates == [0, 1, 2] and stats["skipped"] == 4 and stats["batches"] == 5 and stats["steps"] == 3


def test_only_unreadable_batches_is_a_data_error(monkeypatch):
    monkeypatch.setattr("ramstrans.training.engine.MAX_EMPTY_DRAWS", 3)
    model = tiny_model(num_scales=1, num_classes=3)
    with pytest.raises(DataError, match="every image of 3 batches in a row was unreadable at step 1"):
        train_steps(
            *_plain(model),
            _Schedule(),
            iter([_batch(0, 4)] * 5),
            LoopPlan(start_step=0, total_steps=2, start_batch=0),
            show_progress=False,
        )


def test_resume_is_exact_across_a_redrawn_batch(tmp_path, synthetic_root, monkeypatch):
    root = shutil.copytree(synthetic_root, tmp_path / "data")
    cfg = _cfg(tmp_path / "x", f"data.root={root}")
    table = load_index(cfg.data).split("train")
    stream = iter(StepSampler(len(table), 4, seed=cfg.train.seed))
    batches = [[next(stream)[0] for _ in range(4)] for _ in range(5)]
    for i in batches[0]:  # every image of the first batch becomes unreadable
        (root / table["path"][i]).write_bytes(b"")
    sets = [f"data.root={root}", "data.skip_corrupt=true", "train.steps=4"]
    straight = run_training(_cfg(tmp_path / "a", *sets), show_progress=False)
    ck = load_checkpoint(straight["checkpoint"])
    assert ck["data_positions"] == [5]  # 4 steps, one batch drawn again
    assert straight["train"]["skipped"] == sum(i in batches[0] for b in batches for i in b)  # epoch 2 has some too
    real = RunMonitor.after_step

    def stop_at_two(self, done, batches):
        real(self, done, batches)
        if done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunMonitor, "after_step", stop_at_two)
    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(tmp_path / "b", *sets), show_progress=False)
    monkeypatch.setattr(RunMonitor, "after_step", real)
    resumed = run_training(_cfg(tmp_path / "b", *sets), resume=tmp_path / "b" / "checkpoint.pth", show_progress=False)
    got = load_checkpoint(resumed["checkpoint"])
    assert got["data_positions"] == [5]
    assert all(torch.equal(got["model"][k], v) for k, v in ck["model"].items())


def test_ema_is_timms_average_checkpointed_and_reported(tmp_path, monkeypatch):
    import ramstrans.training.run as train_mod

    seen, real_ema, real_step = [], train_mod.build_ema, RunMonitor.after_step

    def spy_ema(train_cfg, model):
        seen.append({k: v.detach().double().clone() for k, v in model.state_dict().items()})  # the EMA's start
        return real_ema(train_cfg, model)

    def spy_step(self, done, batches):
        seen.append({k: v.detach().double().clone() for k, v in self.run.model.state_dict().items()})
        real_step(self, done, batches)

    monkeypatch.setattr(train_mod, "build_ema", spy_ema)
    monkeypatch.setattr(RunMonitor, "after_step", spy_step)
    s = run_training(_cfg(tmp_path, "train.ema_decay=0.75"), show_progress=False)
    want = seen[0]
    for weights in seen[1:]:  # e <- 0.75 e + 0.25 w after every step, in float64
        want = {k: 0.75 * want[k] + 0.25 * weights[k] for k in want}
    ck = load_checkpoint(tmp_path / "checkpoint.pth")
    for k, v in ck["model_ema"].items():
        torch.testing.assert_close(v.double(), want[k], atol=1e-6, rtol=1e-5, msg=k)
    assert s["weights"] == "ema" and s["test"] == s["test_by_weights"]["ema"]
    assert s["test_by_weights"]["raw"]["weights"] == "raw"
    model, _, _ = model_from_checkpoint(ck)  # "auto": the EMA weights, as the run reported
    assert all(torch.equal(v, ck["model_ema"][k]) for k, v in model.state_dict().items())
    raw, _, _ = model_from_checkpoint(ck, weights="raw")
    assert all(torch.equal(v, ck["model"][k]) for k, v in raw.state_dict().items())


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    big = run_training(_cfg(tmp_path / "big", "train.batch_size=4", "train.steps=3"), show_progress=False)
    acc = run_training(
        _cfg(tmp_path / "acc", "train.batch_size=2", "train.grad_accum=2", "train.steps=3"), show_progress=False
    )
    a, b = load_checkpoint(big["checkpoint"])["model"], load_checkpoint(acc["checkpoint"])["model"]
    first = tiny_model(num_classes=3, embed_dim=32, num_heads=2)  # not the run's init; just the shapes
    assert a["backbone.vit.head.weight"].shape == first.backbone.vit.head.weight.shape
    train = _records(tmp_path / "big", "train")
    assert train[0]["loss"] != train[-1]["loss"]  # the steps trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=k)
    assert [r["global_batch"] for r in _records(tmp_path / "acc", "start")] == [4]
    losses = [
        (x["loss"], y["loss"]) for x, y in zip(_records(tmp_path / "big", "train"), _records(tmp_path / "acc", "train"))
    ]
    assert all(x == pytest.approx(y, rel=1e-5) for x, y in losses)


def test_layer_decay_goes_through_timm_with_the_models_layers(caplog):
    model = tiny_model(num_scales=2)  # depth 2
    cfg = load_config(None, ["train.layer_decay=0.5", "train.opt=momentum"])
    with caplog.at_level(logging.WARNING):
        opt = build_optimizer(cfg.train, model)
    assert "assigned to one layer" not in caplog.text
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=5)  # timm's own grouping
    ref = timm.optim.create_optimizer_v2(vit, opt="momentum", lr=0.01, layer_decay=0.5)
    want = {
        name: g["lr_scale"]
        for g in ref.param_groups
        for name, p in vit.named_parameters()
        if any(p is q for q in g["params"])
    }
    assert want["cls_token"] == 0.5**3 and want["blocks.0.attn.qkv.weight"] == 0.5**2 and want["head.weight"] == 1
    for name, p in model.named_parameters():
        key = "cls_token" if name.startswith("backbone.zoom_cls_tokens") else name[len("backbone.vit.") :]
        assert scale[id(p)] == want[key], name


@pytest.mark.parametrize(
    "extra",
    [[], ["loss.self_distill=1.0", "train.ema_decay=0.9", "loss.self_distill_source=ema"]],
    ids=["plain", "self_distill_from_ema"],
)
def test_compiled_training_gives_the_same_weights(tmp_path, extra):
    plain = run_training(_cfg(tmp_path / "p", "train.steps=2", *extra), show_progress=False)
    comp = run_training(
        _cfg(tmp_path / "c", "train.steps=2", "train.compile=true", "train.compile_backend=aot_eager", *extra),
        show_progress=False,
    )
    a, b = load_checkpoint(plain["checkpoint"])["model"], load_checkpoint(comp["checkpoint"])["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)


def test_metrics_go_to_csv_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(_cfg(tmp_path, "train.tensorboard=true"), show_progress=False)
    train = _records(tmp_path, "train")
    with open(tmp_path / "metrics_train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in train]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    final = [e.value for e in events.Scalars("test_raw/top1")]
    assert final == pytest.approx([_records(tmp_path, "eval")[-1]["top1"]])


def test_evaluation_without_boxes_runs_the_plain_forward(monkeypatch):
    model = tiny_model(num_classes=3).eval()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    no_box = [{"image": x, "label": y, "box": torch.full((4, 4), float("nan")), "skipped": 0}]
    want = (model(x).argmax(-1) == y).float().mean().item() * 100

    def refuse(*a, **k):
        raise AssertionError("the attention capture ran")

    monkeypatch.setattr(model, "propose", refuse)
    res, state = evaluate(model, no_box, device=torch.device("cpu"), num_classes=3)
    assert res["top1"] == pytest.approx(want) and "loc_miou" not in res and state["count"].sum() == 4
    monkeypatch.undo()
    boxed = [{**no_box[0], "box": torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 4)}]
    assert "loc_miou" in evaluate(model, boxed, device=torch.device("cpu"), num_classes=3)[0]


def test_bench_demo_reuses_runs_only_under_the_same_settings(tmp_path, monkeypatch):
    from ramstrans.bench.demo import bench_demo

    with pytest.raises(ValueError, match="no zoom threshold"):  # the adaptive threshold is chosen on validation
        bench_demo([0], "synthetic_cpu", "test", str(tmp_path), TINY_TRAIN)
    first = bench_demo([0], "synthetic_cpu", "test", str(tmp_path), TINY_TRAIN, 0.5)
    rams = first["run_folders"]["rams"][0]
    assert first["zoom_threshold"] == 0.5 and first["resolved_configs"][rams]["train"]["steps"] == 3
    assert first["resolved_configs"][rams]["train"]["output_dir"] == rams  # each run's own folder and seed
    assert first["rams_fused"]["passes_per_image"]["values"] == [2.0]
    longer = bench_demo([0], "synthetic_cpu", "test", str(tmp_path), TINY_TRAIN + ["train.steps=4"], 0.5)
    assert len(list((tmp_path / "test").iterdir())) == 4  # other settings, other folders
    for name in ("vit", "rams"):
        ran = load_checkpoint(os.path.join(longer["run_folders"][name][0], "checkpoint.pth"))
        assert ran["step"] == 4 and ran["config"]["train"]["steps"] == 4

    def refuse(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("ramstrans.training.run.run_training", refuse)
    again = bench_demo([0], "synthetic_cpu", "test", str(tmp_path), TINY_TRAIN, 0.5)
    assert again["vit"]["top1"] == first["vit"]["top1"] and again["run_folders"] == first["run_folders"]


def test_bench_run_killed_before_its_first_checkpoint_restarts(tmp_path):
    """A bench run whose folder holds a config and logs but no checkpoint (killed before its first one) is trained
    again from step 0 by the same call, as ``ramstrans train --resume auto`` restarts it, and ends where an
    uninterrupted run ends."""
    from ramstrans.bench.demo import run_or_reuse

    sets = [*TINY_TRAIN, "model.num_scales=1", "loss.scale_weights=[1.0]"]
    run_dir = run_or_reuse("synthetic_cpu", sets, tmp_path, "vit")
    done = load_checkpoint(os.path.join(run_dir, "checkpoint.pth"))
    for name in os.listdir(run_dir):  # what a kill before the first checkpoint leaves: the config and the logs
        if name.endswith(".pth") or name == "summary.json":
            os.remove(run_dir / name)
    assert run_or_reuse("synthetic_cpu", sets, tmp_path, "vit") == run_dir
    again = load_checkpoint(os.path.join(run_dir, "checkpoint.pth"))
    assert again["step"] == done["step"] == 3
    assert all(torch.equal(again["model"][k], v) for k, v in done["model"].items())
