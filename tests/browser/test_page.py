"""The web page in a real browser (headless chromium) against the live stack with tiny models.

Screenshots land in out/test-artifacts/ (GENSERVICE_TEST_ARTIFACTS overrides it). Without chromium,
chromedriver or selenium the module is skipped with what to install.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.browser.driver import IMAGES_LOADED, INSTALL_HINT, fill, job_status, submit, text, texts
from tests.integration.stack import Stack, wait_until

pytest.importorskip("selenium", reason=f"browser tests skipped: selenium is not installed; {INSTALL_HINT}")
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture(scope="module")
def page(browser: WebDriver, stack: Stack) -> WebDriver:
    browser.get(stack.url + "/")
    wait_until(lambda: "worker" in text(browser, "service"), 15, "the page to read /models/info")
    return browser


def test_a_job_shows_progress_its_trajectory_and_its_images(page: WebDriver, stack: Stack, artifacts: Path) -> None:
    fill(page, "diffusion", class_label="cat", num_images=4, sampler="ddpm", seed=7, previews=6)
    job_id = submit(page)
    values, frames = set(), set()
    deadline = time.monotonic() + 120
    while (status := job_status(page)) != "finished" and time.monotonic() < deadline:
        values.add(page.execute_script("return document.getElementById('progress').value"))
        if status == "started":
            frames.add(page.execute_script("return document.querySelectorAll('#trajectory figure').length"))
        time.sleep(0.05)
    assert job_status(page) == "finished", text(page, "job-error")
    assert len({v for v in values if 0 < v < 1}) >= 2  # the bar moved while the job ran
    assert {1, 2, 3, 4, 5} & frames  # the trajectory grew while the job ran
    assert page.execute_script("return document.getElementById('progress').value") == 1
    assert text(page, "progress-text") == "step 1000 / 1000"
    assert text(page, "job-seed") == "7"

    assert wait_until(lambda: page.execute_script(IMAGES_LOADED, "#results img", 4), 15, "the images") == 4
    assert wait_until(lambda: page.execute_script(IMAGES_LOADED, "#trajectory img", 6), 15, "the trajectory") == 6
    captions = texts(page, "#trajectory figcaption")
    assert captions == [f"step {s}" for s in (167, 334, 500, 667, 834, 1000)]
    links = page.execute_script("return [...document.querySelectorAll('#results a')].map(a => a.href)")
    assert len(links) == 4 and all(link.endswith(f"/jobs/{job_id}/images/{k}.png") for k, link in enumerate(links))
    page.save_screenshot(str(artifacts / "web-page-finished.png"))


def test_a_bad_request_shows_the_services_message(page: WebDriver) -> None:
    fill(page, "diffusion", num_images=65, sampler="ddim", steps=10)
    page.find_element(By.ID, "submit").click()
    message = wait_until(lambda: text(page, "error"), 10, "the error message")
    assert "num_images" in message and "64" in message
    fill(page, "diffusion", num_images=1)


def test_cancel_a_running_job(page: WebDriver, stack: Stack, artifacts: Path) -> None:
    fill(page, "diffusion", num_images=16, sampler="ddpm", previews=4, seed="")
    job_id = submit(page)
    progress = "return document.getElementById('progress').value"
    wait_until(lambda: job_status(page) == "started" and page.execute_script(progress) > 0, 60, "the job to run")
    page.find_element(By.ID, "cancel").click()
    wait_until(lambda: job_status(page) == "canceled", 60, "the page to show the job canceled")
    status = stack.status(job_id)
    assert status["status"] == "canceled" and 0 < status["progress"]["step"] < 1000
    assert not page.find_element(By.ID, "cancel").is_enabled()
    seed = stack.status(job_id)["parameters"]["seed"]
    assert text(page, "job-seed") == str(seed)  # chosen by the gateway, shown for reuse
    page.save_screenshot(str(artifacts / "web-page-canceled.png"))


def test_recent_jobs_survive_a_reload(page: WebDriver, artifacts: Path) -> None:
    page.refresh()
    wait_until(lambda: "worker" in text(page, "service"), 15, "the page to load")
    assert texts(page, "#recent li .pill")[:2] == ["canceled", "finished"]  # newest first
    page.find_element(By.CSS_SELECTOR, "#recent li:nth-child(2) button").click()  # reopen the finished job
    assert wait_until(lambda: page.execute_script(IMAGES_LOADED, "#results img", 4), 20, "its images") == 4


def test_the_page_fits_a_phone(page: WebDriver, artifacts: Path) -> None:
    size = page.get_window_size()
    try:
        page.set_window_size(390, 844)
        time.sleep(0.3)
        overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{overflow} px wider than a phone"
        page.save_screenshot(str(artifacts / "web-page-phone.png"))
    finally:
        page.set_window_size(size["width"], size["height"])
