"""The ramstrans command end to end on tiny synthetic data, and its answers to bad input."""

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import TINY_TRAIN, eval_summary

from ramstrans.checkpoint import load_checkpoint
from ramstrans.cli import main
from ramstrans.models.build import model_from_checkpoint

pytestmark = pytest.mark.slow  # end to end through the CLI or several processes


def _sets(*items):
    return [a for it in items for a in ("--set", it)]


def _fused_top1(checkpoint, root):
    """Independent two-scale top-1: the mean of both scales' softmax over the test images, one at a time."""
    from ramstrans.data import load_index, read_image
    from ramstrans.inference.load import eval_transform

    model, cfg, names = model_from_checkpoint(load_checkpoint(checkpoint))
    model.eval()
    cfg.data.root = str(root)
    index = load_index(cfg.data, generate=False)
    t = eval_transform(cfg, model)
    hits = 0
    for path, label in zip(index.split("test")["path"], index.split("test")["label"]):
        x = t(read_image(index.root / path), None, 0)[0][None]
        with torch.no_grad():
            p = torch.stack([lg.softmax(-1) for lg in model.forward_multiscale(x).logits]).mean(0)
        hits += int(p.argmax(-1).item() == label)
    return 100.0 * hits / len(index.split("test"))


def test_train_eval_visualize(trained, capsys, tmp_path, synthetic_root):
    assert (trained / "checkpoint.pth").is_file() and (trained / "curves.png").is_file()
    final = json.loads((trained / "summary.json").read_text())["test"]
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(trained / "checkpoint.pth"),
                "--output",
                str(tmp_path / "ev"),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert res["images"] == 9 and res["scales"] == 1 and res["weights"] == "raw" and res["step"] == 3
    assert res["top1"] == final["top1"]  # the same checkpoint on the same images as training's final evaluation
    assert res["loc_miou"] == pytest.approx(final["loc_miou"], abs=1e-6)
    assert (tmp_path / "ev" / "per_class.csv").read_text().count("\n") == 4
    assert (tmp_path / "ev" / "confusion.png").is_file()
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(trained / "checkpoint.pth"),
                "--output",
                str(tmp_path / "ev2"),
                "--scales",
                "2",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    res2 = eval_summary(capsys)
    assert res2["scales"] == 2 and res2["top1"] == pytest.approx(
        _fused_top1(trained / "checkpoint.pth", synthetic_root), abs=1e-4
    )
    assert (
        main(
            [
                "visualize",
                "--checkpoint",
                str(trained / "checkpoint.pth"),
                "--num",
                "3",
                "--output",
                str(tmp_path / "vis"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "vis").glob("*.png"))) == 4  # 3 panels + the contact sheet


def test_visualize_any_image_file(trained, tmp_path, synthetic_root):
    img = next((synthetic_root / "images").rglob("*.jpg"))
    assert (
        main(
            [
                "visualize",
                "--checkpoint",
                str(trained / "checkpoint.pth"),
                "--images",
                str(img),
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "contact_sheet.png").is_file() and (tmp_path / f"000_{img.stem}.png").is_file()


def test_make_synthetic(tmp_path, capsys):
    assert (
        main(
            [
                "make-synthetic",
                "--out",
                str(tmp_path / "s"),
                "--num-classes",
                "2",
                "--train-per-class",
                "1",
                "--test-per-class",
                "1",
                "--image-size",
                "48",
            ]
        )
        == 0
    )
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
    assert "data set root" in _error(
        capsys, ["train", "--set", "data.dataset=cub", "--set", f"data.root={tmp_path / 'missing'}"]
    )
    assert "checkpoint" in _error(capsys, ["eval", "--checkpoint", str(tmp_path / "nope.pth")])
    (tmp_path / "junk.pth").write_text("junk")
    assert "not a readable ramstrans checkpoint" in _error(capsys, ["eval", "--checkpoint", str(tmp_path / "junk.pth")])
    if not torch.cuda.is_available():  # on a CUDA machine this is a valid request
        assert "no CUDA GPU" in _error(
            capsys, ["eval", "--checkpoint", str(trained / "checkpoint.pth"), "--device", "cuda"]
        )
    assert "unknown backbone" in _error(
        capsys, ["train", "--output-dir", str(tmp_path / "x")] + _sets(*TINY_TRAIN, "model.backbone=vit_nope")
    )
    assert "cannot run 3" in _error(
        capsys, ["eval", "--checkpoint", str(trained / "checkpoint.pth"), "--scales", "3", "--workers", "0"]
    )
    assert "gone.jpg does not exist" in _error(
        capsys, ["visualize", "--checkpoint", str(trained / "checkpoint.pth"), "--images", str(tmp_path / "gone.jpg")]
    )


def test_corrupt_image_names_the_file_and_skip_corrupt_counts(capsys, tmp_path, trained, synthetic_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    bad = sorted((root / "images").rglob("*_0_0001.jpg"))[0]
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    argv = [
        "eval",
        "--checkpoint",
        str(trained / "checkpoint.pth"),
        "--data-root",
        str(root),
        "--workers",
        "0",
        "--output",
        str(tmp_path / "ev"),
    ]
    assert f"{bad.name} cannot be decoded" in _error(capsys, argv)
    assert main(argv + ["--skip-corrupt"]) == 0
    res = eval_summary(capsys)
    assert res["skipped"] == 1 and res["images"] == 8


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "ramstrans", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "make-synthetic" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "ramstrans", "train", "--set", "train.nope=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "train.nope" in r.stderr


def _copy_run(trained, dest):
    import shutil

    return shutil.copytree(trained, dest)


def test_help_imports_nothing_heavy():
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ramstrans", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "make-synthetic" in r.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "timm", "cv2", "pandas", "albumentations", "matplotlib", "scipy", "numpy"}


def test_resume_alone_takes_the_stored_config_and_the_run_folder(trained, tmp_path, capsys):
    run = _copy_run(trained, tmp_path / "run")
    assert main(["train", "--no-progress", "--resume", str(run / "checkpoint.pth"), "--set", "train.steps=4"]) == 0
    ckpt = load_checkpoint(run / "checkpoint.pth")
    assert ckpt["step"] == 4 and ckpt["config"]["train"]["steps"] == 4
    assert ckpt["config"]["data"]["synthetic"]["num_classes"] == 3  # the stored config, not the demo's default
    assert main(["train", "--no-progress", "--resume", str(run), "--set", "train.steps=5"]) == 0  # a run folder
    assert load_checkpoint(run / "checkpoint.pth")["step"] == 5
    sets = _sets(*TINY_TRAIN, "train.steps=6")
    assert main(["train", "--no-progress", "--resume", "auto", "--output-dir", str(run)] + sets) == 0
    assert load_checkpoint(run / "checkpoint.pth")["step"] == 6
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    fresh = tmp_path / "fresh"
    assert main(["train", "--no-progress", "--resume", "auto", "--output-dir", str(fresh)] + _sets(*TINY_TRAIN)) == 0
    assert [json.loads(x)["step"] for x in (fresh / "metrics.jsonl").read_text().splitlines()][0] == 0  # a new run
    capsys.readouterr()
    assert "--config cannot be combined with --resume" in _error(
        capsys, ["train", "--config", "synthetic_cpu", "--resume", str(run)]
    )
    assert "holds no checkpoint" in _error(capsys, ["train", "--resume", str(tmp_path)])


def test_a_run_folder_is_never_silently_overwritten(trained, tmp_path, capsys):
    run = _copy_run(trained, tmp_path / "run")
    before = (run / "metrics.jsonl").read_text()
    argv = ["train", "--no-progress", "--output-dir", str(run)] + _sets(*TINY_TRAIN)
    assert "already holds a run" in _error(capsys, argv)
    assert (run / "metrics.jsonl").read_text() == before  # nothing touched
    assert main(argv + ["--overwrite"]) == 0
    starts = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"start"' in x]
    assert len(starts) == 1  # the old run's records are gone, not mixed in


def test_eval_folders_are_per_split_scales_and_weights(trained, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    for scales in (1, 2):
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    str(run / "checkpoint.pth"),
                    "--scales",
                    str(scales),
                    "--workers",
                    "0",
                    "--no-progress",
                ]
            )
            == 0
        )
    one = json.loads((run / "eval_test_scales1_raw" / "summary.json").read_text())
    two = json.loads((run / "eval_test_scales2_raw" / "summary.json").read_text())
    assert (one["scales"], two["scales"]) == (1, 2)


def test_eval_data_root_is_used_as_given(trained, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a data set")
    msg = _error(
        capsys,
        ["eval", "--checkpoint", str(trained / "checkpoint.pth"), "--data-root", str(tmp_path), "--workers", "0"],
    )
    assert "images.txt is missing" in msg and "Errno" not in msg


def test_piped_training_prints_log_lines_not_carriage_returns(tmp_path):
    argv = [sys.executable, "-m", "ramstrans", "train", "--output-dir", str(tmp_path / "r")] + _sets(*TINY_TRAIN)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    steps = [m.group(1) for line in r.stderr.splitlines() if (m := re.match(r"^\S+ step (\d+/\d+)  loss ", line))]
    assert steps == ["1/3", "2/3", "3/3"]  # log_every = 1
