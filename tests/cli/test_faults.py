"""Faults: divergence, a second run on the same folder, kill -9, Ctrl-C, a full disk, a silent hub, overwritten data
sets. Nothing written earlier is lost and nothing hangs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, tiny_model

from ramstrans.checkpoint import load_checkpoint
from ramstrans.cli import main
from ramstrans.runtime.files import FileLock

pytestmark = pytest.mark.slow  # end to end through the CLI or several processes


def _sets(*items):
    return [a for it in items for a in ("--set", it)]


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("ramstrans: error: ")][-1]


def test_divergence_keeps_the_last_finite_checkpoint(tmp_path, capsys):
    argv = ["train", "--no-progress", "--output-dir", str(tmp_path)] + _sets(
        *TINY_TRAIN,
        "train.lr=1000000.0",
        "train.warmup_steps=0",
        "train.steps=12",
        "train.log_every=20",
        "train.ckpt_every=1",
    )
    msg = _error(capsys, argv)
    assert "non-finite" in msg
    ck = load_checkpoint(tmp_path / "checkpoint.pth")
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert 0 < ck["step"] < 12  # the run stopped before the end, on its last finite checkpoint
    assert main(["eval", "--checkpoint", str(tmp_path / "checkpoint.pth"), "--workers", "0", "--no-progress"]) == 0


def test_a_run_folder_in_use_is_refused_and_a_dead_holder_is_no_obstacle(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--no-progress", "--output-dir", str(run)] + _sets(*TINY_TRAIN)
    held = FileLock(run / ".lock", "test").acquire()  # another live process's training
    msg = _error(capsys, argv)
    assert f"run folder {run} is in use by process {os.getpid()}" in msg
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    held.release()
    (run / ".lock").write_text("process 999999 on nowhere since 2020-01-01 00:00:00")  # a killed run's file
    assert main(argv) == 0


def test_a_second_live_process_is_refused(tmp_path):
    run = tmp_path / "run"
    code = (
        "import sys, time; from ramstrans.runtime.files import FileLock; FileLock(sys.argv[1], 'x').acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = subprocess.run(
            [sys.executable, "-m", "ramstrans", "train", "--output-dir", str(run)] + _sets(*TINY_TRAIN),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and f"is in use by process {holder.pid}" in r.stderr and "Traceback" not in r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_then_resume_finishes_and_clears_stale_temp_files(tmp_path):
    run = tmp_path / "run"
    sets = _sets(*TINY_TRAIN, "train.steps=40", "train.ckpt_every=1", "train.log_every=1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ramstrans", "train", "--output-dir", str(run)] + sets,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (run / "checkpoint.pth").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run: 40 steps take several seconds after the first checkpoint
    proc.wait()
    (run / ".checkpoint.pth.orphan.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves
    step = load_checkpoint(run / "checkpoint.pth")["step"]
    assert 0 < step < 40
    assert main(["train", "--no-progress", "--resume", "auto", "--output-dir", str(run)] + sets) == 0
    assert load_checkpoint(run / "checkpoint.pth")["step"] == 40
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    train_steps = [
        json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in x
    ]
    assert train_steps == list(range(1, 41))


def test_kill_9_before_the_first_checkpoint_then_the_same_command_restarts(tmp_path, capsys):
    run = tmp_path / "run"
    sets = _sets(*TINY_TRAIN, "train.steps=40", "train.ckpt_every=1000", "train.log_every=1")
    argv = ["train", "--no-progress", "--resume", "auto", "--output-dir", str(run)] + sets
    proc = subprocess.Popen(
        [sys.executable, "-m", "ramstrans", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while (
        '"kind": "train"' not in ((run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else "")
        and time.time() < deadline
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # logs and config written, no checkpoint yet
    proc.wait()
    assert (run / "config.yaml").is_file() and not (run / "checkpoint.pth").exists()
    other = ["train", "--no-progress", "--resume", "auto", "--output-dir", str(run)] + _sets(
        *TINY_TRAIN, "train.steps=41", "train.ckpt_every=1000", "train.log_every=1"
    )
    assert "unfinished run of another config (it differs in train.steps)" in _error(capsys, other)
    assert main(argv) == 0  # the very command that was killed
    assert load_checkpoint(run / "checkpoint.pth")["step"] == 40
    train_steps = [
        json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in x
    ]
    assert train_steps == list(range(1, 41))


def test_a_start_that_fails_leaves_no_folder_behind(tmp_path, capsys):
    run = tmp_path / "runs" / "new"
    msg = _error(
        capsys,
        [
            "train",
            "--no-progress",
            "--output-dir",
            str(run),
            "--set",
            "data.dataset=cub",
            "--set",
            f"data.root={tmp_path / 'missing'}",
        ],
    )
    assert "data set root" in msg and not (tmp_path / "runs").exists()


def test_ctrl_c_is_one_line(tmp_path):
    sets = _sets(*TINY_TRAIN, "train.steps=400", "train.ckpt_every=1", "train.log_every=1")
    # a child inherits an ignored SIGINT (and Python then installs no KeyboardInterrupt handler): give it the default
    proc = subprocess.Popen(
        [sys.executable, "-m", "ramstrans", "train", "--output-dir", str(tmp_path)] + sets,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not (tmp_path / "checkpoint.pth").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "ramstrans: interrupted"
    assert "Traceback" not in err
    assert load_checkpoint(tmp_path / "checkpoint.pth")["step"] >= 1  # the last checkpoint is whole


def test_a_full_disk_during_a_checkpoint_is_one_sentence(tmp_path, capsys, monkeypatch):
    argv = ["train", "--no-progress", "--output-dir", str(tmp_path)] + _sets(*TINY_TRAIN)
    assert main(argv) == 0
    before = (tmp_path / "checkpoint.pth").read_bytes()

    def full(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
            "data/3: file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    msg = _error(capsys, ["train", "--no-progress", "--resume", str(tmp_path), "--set", "train.steps=4"])
    assert msg == f"ramstrans: error: no space left on device: {tmp_path / 'checkpoint.pth'}"
    assert (tmp_path / "checkpoint.pth").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_silent_hub_fails_within_the_deadline(monkeypatch):
    import huggingface_hub

    from ramstrans.models.backbones import pretrained

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(pretrained, "_online", lambda timeout: True)  # TCP is accepted...
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: time.sleep(30))  # ...and never answered
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"did not finish within 1 s .*pass the file as pretrained=PATH"):
        tiny_model(pretrained="augreg_in21k", download_timeout_s=1.0)
    assert time.monotonic() - start < 5


def test_make_synthetic_never_overwrites_unless_asked(tmp_path, capsys):
    out = tmp_path / "set"
    base = [
        "make-synthetic",
        "--out",
        str(out),
        "--num-classes",
        "2",
        "--train-per-class",
        "2",
        "--test-per-class",
        "1",
        "--image-size",
        "48",
    ]
    assert main(base) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    msg = _error(capsys, base[:3] + ["--num-classes", "3", "--train-per-class", "1", "--test-per-class", "1"])
    assert f"{out} is not empty" in msg and "--overwrite" in msg
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert (
        main(
            base[:3]
            + [
                "--num-classes",
                "3",
                "--train-per-class",
                "1",
                "--test-per-class",
                "1",
                "--image-size",
                "48",
                "--overwrite",
            ]
        )
        == 0
    )
    assert (out / "images.txt").read_text().count("\n") == 6
    assert len(list((out / "images").rglob("*.jpg"))) == 6  # no orphans of the old set
    assert sorted(p.name for p in tmp_path.iterdir()) == [".set.lock", "set"]  # no temp folders left


def _ensure(root, out_file):
    from ramstrans.data.synthetic.birds import ensure_synthetic

    path = ensure_synthetic(root, 2, 3, 1, 48, 0)
    Path(out_file).write_text(str(path))


def test_two_first_uses_of_the_synthetic_set_at_once(tmp_path):
    import torch.multiprocessing as mp

    root = tmp_path / "syn"
    procs = [
        mp.get_context("spawn").Process(target=_ensure, args=(str(root), str(tmp_path / f"{i}.txt"))) for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (root / "images.txt").read_text().count("\n") == 8
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_scientific_notation_for_float_keys():
    from ramstrans.config import load_config

    assert load_config(None, ["train.lr=1e-4", "train.min_lr=5E-6"]).train.lr == 1e-4


def test_a_symlink_loop_in_an_image_folder_indexes_every_image_once(tmp_path):
    import cv2
    import numpy as np

    from ramstrans.data import DATASETS

    for split in ("train", "test"):
        for name in ("a", "b"):
            cls = tmp_path / split / name
            cls.mkdir(parents=True)
            cv2.imwrite(str(cls / "x.png"), np.zeros((8, 8, 3), np.uint8))
            os.symlink("..", cls / "loop")  # a/loop -> the split folder -> a -> ...
    index = DATASETS["folder"](tmp_path)
    assert index.split("train")["path"].tolist() == ["train/a/x.png", "train/b/x.png"]


def test_check_data_reports_bad_boxes(synthetic_root, tmp_path, capsys):
    root = shutil.copytree(synthetic_root, tmp_path / "data")
    lines = (root / "bounding_boxes.txt").read_text().splitlines()
    lines[0] = "1 10.0 10.0 -5.0 20.0"  # negative width
    lines[1] = "2 10.0 10.0 500.0 20.0"  # ends far outside an 80 x 80 image
    (root / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    assert main(["check-data", "--dataset", "cub", "--root", str(root), "--no-progress", "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [p["kind"] for p in problems] == ["box", "box"]
    assert "which is empty or starts outside the image" in problems[0]["message"]
    assert "which ends outside its 80 x 80 pixels" in problems[1]["message"]
