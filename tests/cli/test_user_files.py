"""What a command does to the user's files: modes that follow the umask, a full disk named in one sentence (on a real
tmpfs), a killed export's leftovers, unlistable folders, missing listed images, run folders given as checkpoints."""

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import TINY_TRAIN, eval_summary, sets

from ramstrans.cli import main
from ramstrans.data.loader import stratified_split

pytestmark = pytest.mark.slow  # end to end through the CLI or several processes


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ramstrans: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs, filled but for a few bytes (a real ENOSPC for every write); skipped where mounting is not
    allowed."""
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with open(mount / "filler", "wb") as f:
            try:
                f.write(b"\0" * (256 << 10))
            except OSError:
                pass
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_outputs_follow_the_umask(trained, tmp_path):
    old = os.umask(0o027)
    try:
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    str(trained),
                    "--workers",
                    "0",
                    "--no-progress",
                    "--output",
                    str(tmp_path / "ev"),
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    for name in ("summary.json", "per_class.csv", "confusion.png"):
        assert (tmp_path / "ev" / name).stat().st_mode & 0o777 == 0o640, name


def test_a_full_disk_is_one_sentence_naming_the_output(trained, synthetic_root, full_disk, capsys):
    ckpt = str(trained / "checkpoint.pth")
    image = str(sorted((synthetic_root / "images").rglob("*.jpg"))[0])
    cases = [
        (["train", "--no-progress", "--output-dir", str(full_disk / "run")] + sets(*TINY_TRAIN), "run/"),
        (["predict", ckpt, image, "--no-progress", "--out", str(full_disk / "rows.csv")], "rows.csv"),
        (["export", "--checkpoint", ckpt, "--format", "onnx", "--out", str(full_disk / "m.onnx")], "m.onnx"),
        (["export", "--checkpoint", ckpt, "--out", str(full_disk / "timm")], "timm"),
        (["eval", "--checkpoint", ckpt, "--workers", "0", "--no-progress", "--output", str(full_disk / "ev")], "ev/"),
        (
            [
                "make-synthetic",
                "--out",
                str(full_disk / "syn"),
                "--num-classes",
                "2",
                "--train-per-class",
                "2",
                "--test-per-class",
                "1",
                "--image-size",
                "32",
            ],
            "syn",
        ),
    ]
    for argv, culprit in cases:
        msg = _error(capsys, argv)
        assert msg.startswith(f"ramstrans: error: no space left on device: {full_disk}") and culprit in msg, msg
    left = [p for p in full_disk.rglob("*") if p.is_file() and p.name != "filler" and p.stat().st_size]
    assert left == []  # no half-written output left behind


def test_a_killed_exports_staging_folder_does_not_end_up_in_the_next(trained, tmp_path):
    stale = tmp_path / ".exported.tmp"
    stale.mkdir()
    (stale / "stale.bin").write_text("left by a killed export")
    assert main(["export", "--checkpoint", str(trained), "--out", str(tmp_path / "exported")]) == 0
    assert "stale.bin" not in {p.name for p in (tmp_path / "exported").iterdir()} and not stale.exists()


def test_a_folder_that_cannot_be_listed_is_a_row_and_counts_in_the_exit_code(
    trained, synthetic_root, tmp_path, monkeypatch, capsys
):
    images = tmp_path / "imgs"
    shutil.copytree(synthetic_root / "images" / sorted(os.listdir(synthetic_root / "images"))[0], images / "ok")
    (images / "locked").mkdir()
    real = os.scandir

    def scandir(path="."):
        if Path(path) == images / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # as root, chmod 000 would not stop the listing
    code = main(["predict", str(trained / "checkpoint.pth"), str(images), "--format", "json", "--no-progress"])
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and "could not be read" in err
    assert {"path": str(images / "locked"), "error": "cannot be listed (Permission denied)"} in rows
    assert sum("top" in r for r in rows) == len(list((images / "ok").iterdir()))


def test_missing_listed_images_are_skipped_and_counted_with_skip_corrupt(synthetic_root, tmp_path):
    root = shutil.copytree(synthetic_root, tmp_path / "data")
    sorted((root / "images").rglob("*_0_0000.jpg"))[0].unlink()  # a test image
    out = tmp_path / "run"
    assert (
        main(
            ["train", "--no-progress", "--output-dir", str(out)]
            + sets(*TINY_TRAIN, f"data.root={root}", "data.skip_corrupt=true")
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["test"]["skipped"] == 1


def test_a_run_folder_stands_for_its_newest_checkpoint(trained, tmp_path, capsys):
    assert (
        main(
            ["eval", "--checkpoint", str(trained), "--workers", "0", "--no-progress", "--output", str(tmp_path / "ev")]
        )
        == 0
    )
    assert eval_summary(capsys)["checkpoint"] == str(trained / "checkpoint.pth")
    (tmp_path / "empty").mkdir()
    assert "is a folder without a checkpoint" in _error(capsys, ["eval", "--checkpoint", str(tmp_path / "empty")])


def test_a_validation_fraction_never_takes_a_class_s_last_training_image(synthetic_root):
    import pandas as pd

    table = pd.DataFrame({"path": [f"{i}.jpg" for i in range(12)], "label": [0] * 6 + [1] * 4 + [2] * 2})
    train, val = stratified_split(table, 0.99, seed=0)
    assert sorted(train["label"].value_counts().items()) == [(0, 1), (1, 1), (2, 1)]
    assert len(val) == 9
