"""Pictures: written as real PNG files, without touching the caller's matplotlib backend."""

import os
import subprocess
import sys


def test_drawing_never_switches_the_matplotlib_backend(tmp_path):
    code = (
        "import matplotlib, numpy as np\n"
        "from ramstrans.inference.plots import plot_confusion, contact_sheet\n"
        "plot_confusion(np.eye(2), ['a', 'b'], 'confusion.png')\n"
        "contact_sheet([(np.zeros((8, 8, 3), np.uint8), ['true a', 's1: a'], [True])], 'sheet.png')\n"
        "print(matplotlib.get_backend())\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MPLBACKEND": "svg"},
    )  # e.g. a notebook's inline backend
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "svg"
    for name in ("confusion.png", "sheet.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "sheet.png"]  # no temp files left
