"""Headless Chromium for the report tests, driven with selenium.

Debian's packages `chromium` and `chromium-driver` (`.ci/run` installs them when missing)
give /usr/bin/chromium and /usr/bin/chromedriver; elsewhere any `chromium`/`chromedriver`
on PATH will do. `find_chromium()` says what is missing; `open_page(driver, path)` loads a
file and returns its console errors, `console_errors(driver)` those logged since;
`broken_images` and `remote_references` list what a reader would miss offline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NAMES = {"browser": ("chromium", "chromium-browser"), "driver": ("chromedriver",)}
INSTALL = "apt-get install -y chromium chromium-driver (Debian; .ci/run does this as root)"


def find_chromium() -> tuple[str, str] | str:
    """(browser, driver) executables, or a sentence saying which is missing and how to install it."""
    found = {what: next((p for p in map(shutil.which, names) if p), None) for what, names in NAMES.items()}
    missing = [" or ".join(NAMES[what]) for what, path in found.items() if path is None]
    if missing:
        return f"no {' and no '.join(missing)} on PATH: {INSTALL}"
    return found["browser"], found["driver"]


def chromium_driver():
    """A headless Chromium under selenium that keeps the page's console log; skips the
    calling test only when no Chromium is installed (selenium comes with the test extra)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if isinstance(found, str):
        pytest.skip(found)
    browser, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def console_errors(driver) -> list[dict]:
    """The SEVERE entries (script errors, failed loads) of the console log since the last read."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_page(driver, path: Path) -> list[dict]:
    """Load the file `path` (until its load event: images included) and return its console errors."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(Path(path).resolve().as_uri())
    # get() returns at the load event; on a busy machine a large page can still report "interactive"
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return console_errors(driver)


def remote_references(driver) -> list[str]:
    """Every src or href on the page (resolved) that is not a local file or inline data."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('[src], [href]')).map(e => e.src || e.href)"
        ".filter(u => !/^(file|data):/.test(u))")


def broken_images(driver) -> list[str]:
    """The src of every <img> on the page that did not decode (naturalWidth 0)."""
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
