"""The ramstrans command end to end on tiny synthetic data, and its answers to bad input."""
import json
import subprocess
import sys

import pytest

from conftest import TINY_TRAIN
from ramstrans.cli import main


def _sets(*items):
    return [a for it in items for a in ("--set", it)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--no-progress", "--output-dir", str(out)] + _sets(*TINY_TRAIN)) == 0
    return out


def test_train_eval_visualize(trained, capsys, tmp_path):
    assert (trained / "checkpoint.pth").is_file() and (trained / "curves.png").is_file()
    assert main(["eval", "--checkpoint", str(trained / "checkpoint.pth"), "--output", str(tmp_path / "ev"),
                 "--workers", "0"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["images"] == 9 and 0 <= res["top1"] <= 100 and 0 <= res["loc_miou"] <= 1 and res["scales"] == 1
    assert (tmp_path / "ev" / "per_class.csv").read_text().count("\n") == 4
    assert (tmp_path / "ev" / "confusion.png").is_file()
    assert main(["eval", "--checkpoint", str(trained / "checkpoint.pth"), "--output", str(tmp_path / "ev2"),
                 "--scales", "2", "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scales"] == 2
    assert main(["visualize", "--checkpoint", str(trained / "checkpoint.pth"), "--num", "3",
                 "--output", str(tmp_path / "vis")]) == 0
    assert len(list((tmp_path / "vis").glob("*.png"))) == 4  # 3 panels + the contact sheet


def test_visualize_any_image_file(trained, tmp_path, synthetic_root):
    img = next((synthetic_root / "images").rglob("*.jpg"))
    assert main(["visualize", "--checkpoint", str(trained / "checkpoint.pth"), "--images", str(img),
                 "--output", str(tmp_path)]) == 0
    assert (tmp_path / "contact_sheet.png").is_file() and (tmp_path / f"000_{img.stem}.png").is_file()


def test_make_synthetic(tmp_path, capsys):
    assert main(["make-synthetic", "--out", str(tmp_path / "s"), "--num-classes", "2", "--train-per-class", "1",
                 "--test-per-class", "1", "--image-size", "48"]) == 0
    assert (tmp_path / "s" / "bounding_boxes.txt").read_text().count("\n") == 4


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # a progress bar may precede the message
    assert last.startswith("ramstrans: error: ") and "Traceback" not in err
    return last


def test_user_mistakes_are_one_sentence(capsys, tmp_path, trained, synthetic_root):
    assert "unknown config key 'train.lrr'" in _error(capsys, ["train", "--set", "train.lrr=1"])
    assert "must be int" in _error(capsys, ["train", "--set", "train.steps=many"])
    assert "config nope not found" in _error(capsys, ["train", "--config", "nope"])
    assert "data set root" in _error(capsys, ["train", "--set", "data.dataset=cub",
                                              "--set", f"data.root={tmp_path / 'missing'}"])
    assert "checkpoint" in _error(capsys, ["eval", "--checkpoint", str(tmp_path / "nope.pth")])
    (tmp_path / "junk.pth").write_text("junk")
    assert "not a readable ramstrans checkpoint" in _error(capsys, ["eval", "--checkpoint", str(tmp_path / "junk.pth")])
    assert "no CUDA GPU" in _error(capsys, ["eval", "--checkpoint", str(trained / "checkpoint.pth"),
                                            "--device", "cuda"]) or __import__("torch").cuda.is_available()
    assert "unknown backbone" in _error(capsys, ["train", "--output-dir", str(tmp_path / "x")]
                                        + _sets(*TINY_TRAIN, "model.backbone=vit_nope"))
    assert "cannot run 3" in _error(capsys, ["eval", "--checkpoint", str(trained / "checkpoint.pth"),
                                             "--scales", "3", "--workers", "0"])
    assert "gone.jpg does not exist" in _error(capsys, ["visualize", "--checkpoint", str(trained / "checkpoint.pth"),
                                                        "--images", str(tmp_path / "gone.jpg")])


def test_corrupt_image_names_the_file_and_skip_corrupt_counts(capsys, tmp_path, trained, synthetic_root):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    bad = sorted((root / "images").rglob("*_0_0001.jpg"))[0]
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    argv = ["eval", "--checkpoint", str(trained / "checkpoint.pth"), "--data-root", str(root), "--workers", "0",
            "--output", str(tmp_path / "ev")]
    assert f"{bad.name} cannot be decoded" in _error(capsys, argv)
    assert main(argv + ["--skip-corrupt"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["skipped"] == 1 and res["images"] == 8


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "ramstrans", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "make-synthetic" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ramstrans", "train", "--set", "train.nope=1"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "train.nope" in r.stderr
