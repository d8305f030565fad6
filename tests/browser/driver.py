"""Debian's chromium, headless, driven by selenium through Debian's chromedriver; never a downloaded browser."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.integration.stack import ROOT, wait_until

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = os.environ.get("GENSERVICE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GENSERVICE_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL_HINT = "apt-get install chromium chromium-driver, and pip install selenium (in the dev extra)"
ARTIFACTS = Path(os.environ.get("GENSERVICE_TEST_ARTIFACTS", ROOT / "out" / "test-artifacts"))
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--hide-scrollbars",
)  # fmt: skip


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed; {INSTALL_HINT}"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} not found; {INSTALL_HINT}"
    return None


def chromium(profile: Path, width: int = 1200, height: int = 1500) -> WebDriver:
    """A fresh headless chromium with its own profile directory (nothing carries over between runs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    return driver


# What the tests (and the README's screenshot) do on the page.

IMAGES_LOADED = """
const imgs = [...document.querySelectorAll(arguments[0])];
return imgs.length >= arguments[1] && imgs.every((i) => i.complete && i.naturalWidth > 0) ? imgs.length : 0;
"""


def fill(browser: WebDriver, model: str, **fields: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.find_element(By.CSS_SELECTOR, f"input[name=model][value={model}]").click()
    for element_id, value in fields.items():
        element = browser.find_element(By.ID, element_id.replace("_", "-"))
        if element.tag_name == "select":
            Select(element).select_by_value(str(value))
        else:
            element.clear()
            element.send_keys(str(value))


def text(browser: WebDriver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def job_status(browser: WebDriver) -> str:
    return text(browser, "job-status")


def submit(browser: WebDriver) -> str:
    """Click Generate; the id of the job the page opened."""
    from selenium.webdriver.common.by import By

    before = browser.execute_script("return document.getElementById('job-id').title")
    browser.find_element(By.ID, "submit").click()
    return wait_until(
        lambda: (title := browser.execute_script("return document.getElementById('job-id').title")) != before and title,
        10, "the page to open the new job",
    )  # fmt: skip


def texts(browser: WebDriver, selector: str) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent)", selector
    )
