"""``ramstrans bench report``: the evaluation report at CUB's size (5,794 test images, 200 classes), opened from
``file://`` in the system's Chromium (headless, through selenium): the page's size, its thumbnails' size, and the time
to first contentful paint and to the gallery's first page (the page's ``ramstrans-gallery`` mark), median of
``repeats`` fresh loads. The records are synthetic (random labels, predictions and confidences, a box each) and so are
the thumbnails (noise JPEGs of the report's size): the page's cost depends on their number, not their content.
Goal (set before measuring): the page under 5 MB, the first paint and the gallery's first page within 1 s.
"""

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ramstrans.errors import UsageError
from ramstrans.inference.report import FILES, THUMB, render_page, summarise

__all__ = ["bench_report", "GOAL_MB", "GOAL_S"]

GOAL_MB, GOAL_S = 5.0, 1.0


def _records(n: int, k: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """``n`` synthetic records over ``k`` classes: 80% right after the zoom, scale 1 right on 70%."""
    labels = rng.integers(0, k, n)
    out = []
    for i, y in enumerate(labels.tolist()):
        fused = y if rng.random() < 0.8 else int(rng.integers(0, k))
        first = y if rng.random() < 0.7 else int(rng.integers(0, k))
        conf = float(rng.uniform(0.2, 1.0))
        top = [[fused, round(conf, 6)], [(fused + 1) % k, round((1 - conf) / 2, 6)], [(fused + 2) % k, 0.01]]
        out.append(
            {
                "path": f"images/{y:03d}/{i:05d}.jpg",
                "label": y,
                "s1": [[first, 0.5], [(first + 1) % k, 0.3], [(first + 2) % k, 0.1]],
                "fused": top,
                "box": [10.0, 12.0, 300.0, 280.0],
                "iou": round(float(rng.uniform(0, 1)), 6),
            }
        )
    return out


def _write(folder: Path, n: int, k: int) -> Path:
    """The report of ``n`` synthetic images in ``folder``: the page and its thumbnails."""
    rng = np.random.default_rng(0)
    names = [f"{c + 1:03d}.Species_{c}" for c in range(k)]
    records = _records(n, k, rng)
    files = folder / FILES
    files.mkdir(parents=True)
    for i in range(n):
        for s in "ac":
            cv2.imwrite(str(files / f"{i:05d}_{s}.jpg"), rng.integers(0, 256, (THUMB, THUMB, 3), dtype=np.uint8))
    header = {
        "model": "synthetic",
        "kind": "checkpoint",
        "weights": "raw",
        "step": 0,
        "split": "test",
        "images": n,
        "classes": k,
        "top1": 80.0,
        "top5": 95.0,
        "mean_class_acc": 80.0,
        "ece": 0.05,
        "scales": 2,
        "shots": {},
    }
    data = {
        "header": header,
        "names": names,
        "boxes": True,
        "no_boxes_reason": None,
        "records": records,
        "sweep": None,
        **summarise(records, names),
    }
    page = folder / "report.html"
    page.write_text(render_page(data), encoding="utf-8")
    return page


def _load_times(page: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Per fresh load: seconds to the first contentful paint and to the gallery's first page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser()
    paint, gallery = [], []
    for _ in range(repeats):
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.get(page.as_uri())
            time.sleep(0.5)  # the paint entries are queued after the load event
            fcp = driver.execute_script("return performance.getEntriesByName('first-contentful-paint')[0].startTime")
            mark = driver.execute_script("return performance.getEntriesByName('ramstrans-gallery')[0].startTime")
            paint.append(float(fcp) / 1000.0)
            gallery.append(float(mark) / 1000.0)
        finally:
            driver.quit()
    return paint, gallery


def _browser() -> tuple[str, str]:
    """The system Chromium and chromedriver, with selenium to drive them.

    Raises:
        UsageError: any of them missing, saying how to install it.
    """
    try:
        import selenium  # noqa: F401
    except ImportError as e:
        raise UsageError("bench report drives Chromium with selenium: pip install selenium (or '.[test]')") from e
    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        raise UsageError(
            "bench report needs the system Chromium and chromedriver (apt-get install chromium chromium-driver)"
        )
    return chromium, driver_path


def bench_report(images: int = 5794, classes: int = 200, repeats: int = 5) -> dict[str, Any]:
    """The report's size and load times at ``images`` images (see the module doc).

    Raises:
        UsageError: no selenium, Chromium or chromedriver (checked before anything is written).
    """
    _browser()
    with tempfile.TemporaryDirectory(prefix="ramstrans-report-") as tmp:
        page = _write(Path(tmp), images, classes)
        thumbs = sum(f.stat().st_size for f in (Path(tmp) / FILES).iterdir())
        paint, gallery = _load_times(page, repeats)
        size = page.stat().st_size
    return {
        "images": images,
        "classes": classes,
        "repeats": repeats,
        "page_mb": size / 1e6,
        "thumbnails_mb": thumbs / 1e6,
        "first_paint_s": {"median": statistics.median(paint), "values": paint},
        "gallery_s": {"median": statistics.median(gallery), "values": gallery},
        "goal": {"page_mb": GOAL_MB, "seconds": GOAL_S},
    }
