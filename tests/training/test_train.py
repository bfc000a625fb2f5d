"""Training engine: exact resume, atomic checkpoints, logs, schedule."""

import json

import pytest
import torch
from conftest import TINY_TRAIN, stop_after_step

from ramstrans.checkpoint import load_checkpoint, save_checkpoint
from ramstrans.config import load_config
from ramstrans.training.build import build_optimizer, build_scheduler
from ramstrans.training.run import run_training


def _cfg(out, *extra):
    return load_config(None, TINY_TRAIN + [f"train.output_dir={out}", *extra])


def test_resume_continues_exactly(tmp_path, monkeypatch):
    straight = run_training(_cfg(tmp_path / "a", "train.steps=4"), show_progress=False)
    want = load_checkpoint(straight["checkpoint"])["model"]

    restore = stop_after_step(monkeypatch, 2)  # the user stops the run right after the step-2 checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(tmp_path / "b", "train.steps=4"), show_progress=False)
    restore()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pth")["step"] == 2
    resumed = run_training(
        _cfg(tmp_path / "b", "train.steps=4"), resume=str(tmp_path / "b" / "checkpoint.pth"), show_progress=False
    )
    got = load_checkpoint(resumed["checkpoint"])
    assert got["step"] == 4
    for k in want:
        assert torch.equal(got["model"][k], want[k]), k
    assert resumed["test"]["top1"] == straight["test"]["top1"]


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    meta = {"config": {}, "class_names": ["a"]}
    save_checkpoint({"model": {"w": torch.ones(3)}, "step": 1, **meta}, path)

    def crash(obj, f):
        open(f, "wb").write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "step": 2, **meta}, path)
    monkeypatch.undo()
    ck = load_checkpoint(path)
    assert ck["step"] == 1 and torch.equal(ck["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temp file left behind


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable ramstrans checkpoint"):
        load_checkpoint(tmp_path / "x.pth")
    torch.save({"state_dict": {}}, tmp_path / "y.pth")
    with pytest.raises(ValueError, match="not a ramstrans checkpoint"):
        load_checkpoint(tmp_path / "y.pth")


def test_run_writes_logs_curves_config_and_never_selects_on_test(tmp_path):
    s = run_training(_cfg(tmp_path, "train.eval_every=1", "data.val_fraction=0.34"), show_progress=False)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("kind" in r for r in records)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all({"lr", "loss", "ce_scale1", "ce_scale2", "img_per_s"} <= set(r) for r in train)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [(r["step"], r["split"]) for r in evals] == [
        (1, "val"),
        (1, "test"),
        (2, "val"),
        (2, "test"),
        (3, "val"),
        (3, "test"),
    ]
    start = records[0]
    assert start["kind"] == "start" and start["global_batch"] == 4 and start["world_size"] == 1
    for f in ("config.yaml", "curves.png", "checkpoint.pth", "best_val.pth", "summary.json"):
        assert (tmp_path / f).is_file()
    val = [r for r in evals if r["split"] == "val"]
    best = max(val, key=lambda r: (r["top1"], -r["step"]))  # the first step reaching the highest validation top-1
    assert load_checkpoint(tmp_path / "best_val.pth")["step"] == best["step"] == s["best_val"]["step"]
    assert s["best_val"]["top1"] == best["top1"]
    assert s["test"]["final"] is True and s["test"]["top1"] == evals[-1]["top1"] and s["weights"] == "raw"
    assert load_checkpoint(tmp_path / "checkpoint.pth")["step"] == 3


def test_paper_schedule_warmup_then_cosine_per_step():
    cfg = load_config("cub_vitb16_448")
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg.train, model)
    assert type(opt).__name__ == "SGD" and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["nesterov"] is False
    sched = build_scheduler(cfg.train, opt)
    lrs = {}
    for step in (0, 250, 500, 5250, 9999):
        sched.step_update(num_updates=step)
        lrs[step] = opt.param_groups[0]["lr"]
    assert lrs[0] == 0.0 and lrs[250] == pytest.approx(0.015) and lrs[500] == pytest.approx(0.03)
    assert lrs[5250] == pytest.approx(0.015, rel=1e-3) and lrs[9999] < 1e-6
