"""A screenshot of an evaluation report (``ramstrans eval --report``) in the system Chromium, headless: the page
scrolled to the gallery, filtered to the images whose answer the zoom changed. It made ``docs/report.png`` from the
README's demo checkpoint.

Usage: python tools/screenshot_report.py runs/synthetic_cpu/eval_.../report.html docs/report.png
"""

import shutil
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import Select


def main(page: str, out: str) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
    try:
        driver.get(Path(page).resolve().as_uri())
        Select(driver.find_element("id", "f-zoom")).select_by_value("changed")
        driver.execute_script("document.querySelector('.filters').scrollIntoView()")
        time.sleep(1.0)  # the lazy thumbnails load
        driver.save_screenshot(out)
    finally:
        driver.quit()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
