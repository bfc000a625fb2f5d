"""``eval --report``: the page's numbers against hand-worked values, its files, names escaped, and the page driven in
a real browser (the system's Chromium through selenium: no browser is downloaded; skipped, with the reason, where it is
not installed)."""

import json
import os
import shutil
from pathlib import Path

import pytest

from ramstrans.cli import main
from ramstrans.inference.report import render_page, summarise

ARTIFACTS = Path(os.environ.get("RAMSTRANS_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / ".artifacts"))


def _record(label, s1, fused, conf=0.9, iou=None):
    return {
        "path": f"{label}.jpg",
        "label": label,
        "s1": [[s1, 0.5]],
        "fused": [[fused, conf]],
        "box": None,
        "iou": iou,
    }


def test_the_summary_against_hand_worked_values():
    # class 0: 3 images, 2 right, one taken for 2; class 1: 1 image, taken for 2; class 2: 2 right
    records = [
        _record(0, 0, 0, 0.95, 0.5),
        _record(0, 1, 0, 0.55, 0.7),
        _record(0, 0, 2, 0.45),
        _record(1, 1, 2, 0.65),
        _record(2, 2, 2, 0.99),
        _record(2, 0, 2, 0.97),
    ]
    s = summarise(records, ["a", "b", "c"])
    assert s["per_class"][0] == {"class": 0, "count": 3, "accuracy": 66.6667, "confused_with": 2, "miou": 0.6}
    assert s["per_class"][1] == {"class": 1, "count": 1, "accuracy": 0.0, "confused_with": 2, "miou": None}
    assert s["per_class"][2]["confused_with"] is None and s["per_class"][2]["accuracy"] == 100.0
    assert s["pairs"] == [{"true": 0, "pred": 2, "count": 1}, {"true": 1, "pred": 2, "count": 1}]
    # bins of width 1/15: 0.45 -> 6, 0.55 -> 8, 0.65 -> 9, 0.95 / 0.97 / 0.99 -> 14
    assert [b["count"] for b in s["reliability"]] == [1, 1, 1, 3]
    assert s["reliability"][-1] == {"confidence": 0.97, "accuracy": 100.0, "count": 3}
    assert s["reliability"][0] == {"confidence": 0.45, "accuracy": 0.0, "count": 1}


def _page_data(names, records):
    return {
        "header": {
            "model": "m.pth",
            "kind": "checkpoint",
            "weights": "raw",
            "step": 1,
            "split": "test",
            "images": len(records),
            "classes": len(names),
            "top1": 50.0,
            "top5": 100.0,
            "mean_class_acc": 50.0,
            "ece": 0.1,
            "scales": 1,
            "shots": {},
        },
        "names": names,
        "boxes": False,
        "no_boxes_reason": "m.pth runs one scale",
        "records": records,
        "sweep": None,
        **summarise(records, names),
    }


def test_a_class_name_with_html_in_it_cannot_open_a_tag():
    names = ["</script><script>window.pwned = 1</script>", "<b>bold</b>"]
    html = render_page(_page_data(names, [_record(0, 0, 1), _record(1, 1, 1)]))
    assert "<script>window.pwned" not in html and "<b>bold" not in html and "</script><script>" not in html
    payload = html.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(payload)["names"] == names


@pytest.fixture(scope="module")
def reports(exported, tmp_path_factory):
    """eval --report of the fused checkpoint (2 scales, boxes) and of the single-scale ONNX file (no boxes)."""
    root, files = exported
    out = tmp_path_factory.mktemp("reports")
    ckpt = ["eval", "--checkpoint", str(root / "checkpoint.pth"), "--scales", "2", "--report", "--workers", "0"]
    assert main(ckpt + ["--output", str(out / "ckpt")]) == 0
    single = ["eval", "--checkpoint", str(files["scale1"]), "--report", "--workers", "0"]
    assert main(single + ["--output", str(out / "onnx")]) == 0
    return out


def test_the_report_holds_every_image_with_its_thumbnails(reports):
    data = json.loads((reports / "ckpt" / "report.json").read_text())
    summary = json.loads((reports / "ckpt" / "summary.json").read_text())
    n = summary["images"]
    assert len(data["records"]) == n == 9 and data["boxes"] is True
    assert sorted(p.name for p in (reports / "ckpt" / "report_files").iterdir()) == sorted(
        f"{i:05d}_{s}.jpg" for i in range(n) for s in "ac"
    )
    right = sum(r["fused"][0][0] == r["label"] for r in data["records"])
    assert 100.0 * right / n == pytest.approx(summary["top1"])  # --scales 2: the fused answers eval scored
    assert data["header"]["top1"] == summary["top1"] and "<script" not in json.dumps(data["names"])
    assert not list((reports / "ckpt").glob(".report_files*"))  # the staging folder is gone


def test_a_single_scale_onnx_report_says_it_has_no_boxes(reports):
    data = json.loads((reports / "onnx" / "report.json").read_text())
    assert data["boxes"] is False and "runs one scale: it has no proposal" in data["no_boxes_reason"]
    assert all(r["box"] is None for r in data["records"])


def test_an_unwritable_report_leaves_nothing_half_written(exported, tmp_path, capsys, monkeypatch):
    root, _ = exported

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ramstrans.inference.report._thumbs", full)
    args = ["eval", "--checkpoint", str(root / "checkpoint.pth"), "--scales", "2", "--report", "--workers", "0"]
    assert main(args + ["--output", str(tmp_path / "e")]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "e" / "report.html").exists() and not list((tmp_path / "e").glob("*report_files*"))


def _browser():
    """A headless system Chromium through selenium, or a skip saying why."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("no system Chromium and chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


def _count(driver) -> int:
    return int(driver.find_element("id", "count").text)


def test_the_report_in_a_real_browser(reports):
    from selenium.webdriver.support.ui import Select

    data = json.loads((reports / "ckpt" / "report.json").read_text())
    recs = data["records"]
    driver = _browser()
    try:
        driver.get((reports / "ckpt" / "report.html").as_uri())
        assert _count(driver) == len(recs)
        right = [r for r in recs if r["fused"][0][0] == r["label"]]
        changed = [r for r in recs if r["s1"][0][0] != r["fused"][0][0]]
        for select, value, expected in [
            ("f-correct", "right", len(right)),
            ("f-correct", "wrong", len(recs) - len(right)),
            ("f-zoom", "changed", len(changed)),
            ("f-zoom", "better", sum(r in right and r["s1"][0][0] != r["label"] for r in recs)),
            ("f-zoom", "worse", sum(r not in right and r["s1"][0][0] == r["label"] for r in recs)),
            ("f-class", "1", sum(r["label"] == 1 for r in recs)),
        ]:
            driver.find_element("id", "f-clear").click()
            Select(driver.find_element("id", select)).select_by_value(value)
            assert _count(driver) == expected, (select, value)
        driver.find_element("id", "f-clear").click()
        low = driver.find_element("id", "f-min")
        low.clear()
        low.send_keys("0.6")
        assert _count(driver) == sum(r["fused"][0][1] >= 0.6 for r in recs)
        driver.find_element("id", "f-clear").click()
        buttons = driver.find_elements("css selector", "#pairs button")
        assert len(buttons) == len(data["pairs"])
        if buttons:  # a confusion pair shows exactly its images
            pair = data["pairs"][0]
            buttons[0].click()
            shown = [int(c.get_attribute("data-index")) for c in driver.find_elements("css selector", ".card")]
            assert len(shown) == pair["count"] == _count(driver)
            assert all(recs[i]["label"] == pair["true"] and recs[i]["fused"][0][0] == pair["pred"] for i in shown)
        header = driver.find_element("css selector", "th[data-key='accuracy']")
        header.click()
        cells = [
            row.find_elements("tag name", "td")[2].text
            for row in driver.find_elements("css selector", "#classes tbody tr")
        ]
        values = [float(c) for c in cells if c != "-"]
        assert values == sorted(values) and len(cells) == len(data["names"])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "report.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()


def test_a_script_in_a_class_name_does_not_run_in_the_browser(tmp_path):
    names = ["</script><script>window.pwned = 1</script>", "<img src=x onerror='window.pwned=2'>"]
    (tmp_path / "report.html").write_text(render_page(_page_data(names, [_record(0, 0, 1), _record(1, 1, 1)])))
    driver = _browser()
    try:
        driver.get((tmp_path / "report.html").as_uri())
        assert driver.execute_script("return window.pwned === undefined")
        assert names[0] in driver.find_element("id", "classes").text
        assert [
            e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "report_files" not in e["message"]
        ] == []
    finally:
        driver.quit()
