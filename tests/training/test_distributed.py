"""DistributedDataParallel on the CPU with gloo: two spawned processes against one process on the joint batch."""

import json
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_TRAIN

from ramstrans.checkpoint import load_checkpoint
from ramstrans.config import load_config
from ramstrans.data import build_data, eval_loader, load_index, train_loader
from ramstrans.inference.evaluate import evaluate
from ramstrans.losses import MultiScaleLoss
from ramstrans.models import MultiScaleForward, build_model
from ramstrans.runtime.dist import all_reduce_sum_, init_distributed, shutdown
from ramstrans.training.build import build_optimizer, build_scheduler
from ramstrans.training.engine import LoopPlan, train_steps
from ramstrans.training.run import run_training
from ramstrans.training.steps import BatchStep, OptimizerUpdate

pytestmark = pytest.mark.slow  # end to end through the CLI or several processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def _cfg(root, out, *extra):
    return load_config(None, TINY_TRAIN + [f"data.root={root}", f"train.output_dir={out}", *extra])


def _tiny(root, out, *extra):
    """The tiny model (seeded) and data of TINY_TRAIN (with ``extra`` overrides)."""
    cfg = _cfg(root, out, *extra)
    torch.manual_seed(0)
    index = load_index(cfg.data)
    model = build_model(cfg.model, len(index.class_names), source_size=cfg.data.source_size)
    crop, resize = cfg.pipeline_size
    return cfg, model, build_data(cfg.data, index, crop, model.backbone.mean, model.backbone.std, 0, resize)


def _train_and_record(root, out, batch, rank=0, world=1, accum=1, extra=()):
    """Train 3 steps on the tiny synthetic set; save the flat parameters after every step."""
    info, device = init_distributed("cpu", 60)
    cfg, model, data = _tiny(root, out, *extra)
    opt, t = build_optimizer(cfg.train, model), cfg.train
    module = MultiScaleForward(model)
    if info.enabled:
        module = torch.nn.parallel.DistributedDataParallel(module)

    def record(done, batches=0):
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save(flat, out / f"w{world}_rank{rank}_step{done}.pt")

    record(0)
    # no warm-up: the first step's lr is not 0, so every compared step moves the weights
    step = BatchStep(model=module, criterion=MultiScaleLoss(), device=device)
    update = OptimizerUpdate(optimizer=opt, params=list(model.parameters()), clip_grad=1.0)
    plan = LoopPlan(start_step=0, total_steps=3, start_batch=0, grad_accum=accum, world_size=world)
    train_steps(
        step,
        update,
        build_scheduler(replace(t, warmup_steps=0), opt),
        train_loader(data.train, batch, t.seed, 0, 0, rank, world, accum),
        plan,
        after_step=record,
        show_progress=False,
    )
    shutdown()


def _ddp_train_worker(rank, world, port, root, out, batch, accum, extra):
    _env(rank, world, port)
    _train_and_record(root, out, batch=batch, rank=rank, world=world, accum=accum, extra=extra)


GLANCE = ("model.scale_sizes=[32,64]", "model.zoom_source=source", "data.source_size=128")


@pytest.mark.parametrize("batch,accum,extra", [(2, 1, ()), (1, 2, ()), (2, 1, GLANCE)], ids=["b2", "accum2", "glance"])
def test_ddp_steps_equal_one_process_on_the_joint_batch(tmp_path, synthetic_root, batch, accum, extra):
    mp.start_processes(
        _ddp_train_worker,
        args=(2, _free_port(), synthetic_root, tmp_path, batch, accum, extra),
        nprocs=2,
        start_method="spawn",
    )
    _train_and_record(synthetic_root, tmp_path, batch=4, extra=extra)
    for step in (1, 2, 3):
        r0, r1 = (torch.load(tmp_path / f"w2_rank{r}_step{step}.pt") for r in (0, 1))
        single = torch.load(tmp_path / f"w1_rank0_step{step}.pt")
        assert torch.equal(r0, r1), f"ranks differ after step {step}"
        assert not torch.equal(single, torch.load(tmp_path / f"w1_rank0_step{step - 1}.pt"))  # the step moved it
        torch.testing.assert_close(r0, single, atol=2e-5, rtol=1e-4)


def _ddp_eval_worker(rank, world, port, root, ckpt_out):
    _env(rank, world, port)
    info, device = init_distributed("cpu", 60)
    _, model, data = _tiny(root, ckpt_out)
    shard = range(rank, len(data.test), world)
    res, _ = evaluate(model, eval_loader(data.test, 2, 0, shard), device=device, num_classes=3, reduce=all_reduce_sum_)
    if info.is_main:
        (ckpt_out / "dist_eval.json").write_text(json.dumps(res))
    shutdown()


def test_distributed_evaluation_equals_single_process(tmp_path, synthetic_root):
    mp.start_processes(
        _ddp_eval_worker, args=(2, _free_port(), synthetic_root, tmp_path), nprocs=2, start_method="spawn"
    )
    got = json.loads((tmp_path / "dist_eval.json").read_text())
    _, model, data = _tiny(synthetic_root, tmp_path)
    want, _ = evaluate(model, eval_loader(data.test, 3, 0), device=torch.device("cpu"), num_classes=3)
    for k in ("images", "top1", "top5", "mean_class_acc", "loc_iou50", "skipped"):
        assert got[k] == want[k], k
    assert got["loc_miou"] == pytest.approx(want["loc_miou"], abs=1e-9)


def _run_training_worker(rank, world, port, root, out):
    _env(rank, world, port)
    run_training(_cfg(root, out, "train.steps=3", "train.ckpt_every=3", "train.eval_every=2"), show_progress=False)


def test_only_rank0_writes_and_a_single_process_resumes(tmp_path, synthetic_root):
    out = tmp_path / "run"
    mp.start_processes(
        _run_training_worker, args=(2, _free_port(), synthetic_root, out), nprocs=2, start_method="spawn"
    )
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2, 3]  # one writer: each step logged once
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",
        "checkpoint.pth",
        "config.yaml",
        "curves.png",
        "metrics.jsonl",
        "metrics_eval.csv",
        "metrics_start.csv",
        "metrics_train.csv",
        "summary.json",
    ]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert load_checkpoint(out / "checkpoint.pth")["data_positions"] == [3, 3]  # both ranks' batch positions
    resumed = run_training(
        _cfg(synthetic_root, out, "train.steps=5", "train.ckpt_every=5"),
        resume=str(out / "checkpoint.pth"),
        show_progress=False,
    )
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert [(r["step"], r["resumed"], r["world_size"]) for r in lines if r["kind"] == "start"] == [
        (0, False, 2),
        (3, True, 1),
    ]
    assert resumed["train"]["steps"] == 2  # continued at step 4, not from scratch


DISTILL = [
    "model.dist_token=true",
    "distill.enabled=true",
    "distill.scales=[1, 2]",
    "train.steps=3",
    "train.warmup_steps=0",
    "train.ckpt_every=3",
]


def _distill_worker(rank, world, port, root, out, teacher):
    _env(rank, world, port)
    run_training(_cfg(root, out, *DISTILL, f"distill.teacher={teacher}", "train.batch_size=2"), show_progress=False)


def test_ddp_distillation_equals_one_process_on_the_joint_batch(tmp_path, synthetic_root):
    """The teacher stays outside DDP (in the criterion): two processes of 2 images train the student as one of 4."""
    teacher = tmp_path / "teacher"
    run_training(
        _cfg(
            synthetic_root,
            teacher,
            "model.type=classifier",
            "model.backbone=resnet10t",
            "model.num_scales=1",
            "loss.scale_weights=[1.0]",
            "model.backbone_kwargs={channels: [8, 8, 16, 16]}",
        ),
        show_progress=False,
    )
    mp.start_processes(
        _distill_worker,
        args=(2, _free_port(), synthetic_root, tmp_path / "ddp", teacher),
        nprocs=2,
        start_method="spawn",
    )
    run_training(
        _cfg(synthetic_root, tmp_path / "one", *DISTILL, f"distill.teacher={teacher}", "train.batch_size=4"),
        show_progress=False,
    )
    got, want = (load_checkpoint(tmp_path / d / "checkpoint.pth")["model"] for d in ("ddp", "one"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=2e-6, rtol=1e-5, msg=k)


def _unreachable_worker(rank, world, port, root, out):
    os.environ.update(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        init_distributed("cpu", 2)
    except ValueError as e:
        (out / "error.txt").write_text(str(e))


def test_unreachable_rendezvous_is_a_clear_timeout(tmp_path):
    mp.start_processes(_unreachable_worker, args=(2, _free_port(), None, tmp_path), nprocs=1, start_method="spawn")
    msg = (tmp_path / "error.txt").read_text()
    assert "could not join the process group at 127.0.0.1" in msg and "within 2 s" in msg
    assert "raise train.dist_timeout_s" in msg  # the key that exists


def test_more_processes_than_images_is_refused(tmp_path, synthetic_root, monkeypatch):
    from ramstrans.runtime.dist import DistInfo
    from ramstrans.training.run import _build

    with pytest.raises(ValueError, match="the test split has 9 images, fewer than the 16 processes"):
        _build(_cfg(synthetic_root, tmp_path), None, DistInfo(rank=0, world_size=16), torch.device("cpu"))


SELF_DISTILL = [
    "loss.self_distill=2.0",
    "loss.self_distill_tau=2.0",
    "train.steps=3",
    "train.warmup_steps=0",
    "train.ckpt_every=3",
]


def _self_distill_worker(rank, world, port, root, out):
    _env(rank, world, port)
    run_training(_cfg(root, out, *SELF_DISTILL, "train.batch_size=2"), show_progress=False)


def test_ddp_self_distillation_equals_one_process_on_the_joint_batch(tmp_path, synthetic_root):
    """Each image's target is its own fused prediction: two processes of 2 images train as one of 4."""
    mp.start_processes(
        _self_distill_worker, args=(2, _free_port(), synthetic_root, tmp_path / "ddp"), nprocs=2, start_method="spawn"
    )
    run_training(_cfg(synthetic_root, tmp_path / "one", *SELF_DISTILL, "train.batch_size=4"), show_progress=False)
    got, want = (load_checkpoint(tmp_path / d / "checkpoint.pth")["model"] for d in ("ddp", "one"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=2e-6, rtol=1e-5, msg=k)
    moved = load_checkpoint(tmp_path / "one" / "checkpoint.pth")
    assert moved["config"]["loss"]["self_distill"] == 2.0
