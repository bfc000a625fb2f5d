"""The one predict loop streams: each chunk of files is read, predicted and written before the next is read, so rows
appear as they are made; a file given as ``--out`` appears whole at the end and keeps what it held on an error."""

from pathlib import Path

import numpy as np
import pytest

from ramstrans.deploy.images import ImageReadError
from ramstrans.deploy.predict import predict_files
from ramstrans.deploy.rows import RowWriter


class _Stub:
    """An ArrayModel that logs what the loop asks of it (class b always at 0.75)."""

    class_names = ["a", "b"]
    num_scales = 1
    gate_threshold = None
    draws = "is a stub"

    def __init__(self, log):
        self.log = log

    def check_scales(self, scales, zoom_on="maxprob"):
        pass

    def drawer(self, folder):
        raise AssertionError("not asked")

    def prepare(self, path):
        self.log.append(f"read {path.name}")
        if path.name.startswith("bad"):
            raise ImageReadError(path, "cannot be decoded (a test)")
        return np.zeros(1, np.float32)

    def predict_batch(self, images, scales, threshold, zoom_on, mirror=False):
        self.log.append(f"predict {len(images)}" + (" mirrored" if mirror else ""))
        return np.tile(np.float32([0.25, 0.75]), (len(images), 1)), np.zeros(len(images), bool)


class _Writer:
    def __init__(self, log):
        self.log = log

    def write(self, rows):
        self.log.append("write " + ",".join(f"{Path(r['path']).name}:{r['status']}" for r in rows))


def test_each_chunk_is_written_before_the_next_is_read():
    log = []
    files = [Path(f"{name}.jpg") for name in ("a0", "a1", "a2", "bad3", "a4")]
    counts = predict_files(_Stub(log), files, _Writer(log), (1, 0.0, "maxprob", "flip"), batch_size=2)
    assert log == [
        "read a0.jpg",
        "read a1.jpg",
        "predict 2",
        "predict 2 mirrored",
        "write a0.jpg:ok,a1.jpg:ok",
        "read a2.jpg",
        "read bad3.jpg",
        "predict 1",
        "predict 1 mirrored",
        "write a2.jpg:ok,bad3.jpg:skipped",
        "read a4.jpg",
        "predict 1",
        "predict 1 mirrored",
        "write a4.jpg:ok",
    ]
    assert counts == {"images": 5, "read": 4, "skipped": 1}


def test_an_output_file_appears_whole_and_keeps_its_content_on_an_error(tmp_path):
    out = tmp_path / "rows.csv"
    out.write_text("what the user had\n")
    with pytest.raises(RuntimeError, match="stopped"), RowWriter("csv", 1, False, str(out)) as writer:
        writer.write([{"path": "x.jpg", "status": "ok", "top": [("b", 0.75)]}])
        assert out.read_text() == "what the user had\n"  # the rows go to a temp file beside it until the end
        raise RuntimeError("stopped")
    assert out.read_text() == "what the user had\n" and [p.name for p in tmp_path.iterdir()] == ["rows.csv"]
    with RowWriter("json", 1, True, str(out)) as writer:
        writer.write([{"path": "x.jpg", "status": "ok", "top": [("b", 0.75)], "zoomed": True}])
        writer.write([{"path": "y.jpg", "status": "skipped", "error": "cannot be read (test)"}])
    assert out.read_text().splitlines() == [
        '{"path": "x.jpg", "top": [{"class": "b", "prob": 0.75}], "zoomed": true}',
        '{"path": "y.jpg", "error": "cannot be read (test)"}',
    ]


def test_folders_are_listed_lazily_in_the_order_of_sorted_paths(tmp_path):
    import os

    from ramstrans.deploy.images import IMAGE_EXTENSIONS, check_paths, iter_paths

    for rel in ("b.jpg", "b/x.jpg", "b-x/y.png", "a.JPG", "ab/c.jpg", "b/.h.jpg", ".hid/z.jpg", "b/c/d.jpeg", "c.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    want = sorted(  # the reference: os.walk without hidden entries, every path sorted at the end
        Path(here) / f
        for here, dirs, files in os.walk(tmp_path)
        if not any(part.startswith(".") for part in Path(here).relative_to(tmp_path).parts)
        for f in files
        if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
    )
    listed = iter_paths(check_paths([str(tmp_path)]), [])
    first = next(listed)  # a generator: nothing more is listed until asked
    assert [first, *listed] == want and [p.name for p in want][:3] == ["a.JPG", "c.jpg", "d.jpeg"]


def test_an_output_met_in_a_listed_folder_is_refused_before_it_is_replaced(exported, synthetic_root, tmp_path, capsys):
    import shutil

    from ramstrans.cli import main

    folder = tmp_path / "photos"
    shutil.copytree(next((synthetic_root / "images").iterdir()), folder)
    victim = sorted(folder.glob("*.jpg"))[-1]
    before = victim.read_bytes()
    argv = ["predict", str(exported[1]["scale1"]), str(folder), "--batch-size", "2", "--out", str(victim)]
    assert main(argv + ["--overwrite"]) == 2
    assert f"is one of the command's inputs ({victim})" in capsys.readouterr().err
    assert victim.read_bytes() == before and sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
