"""The page at ``/`` in headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.utils.tools import require_tool

pytestmark = pytest.mark.browser

CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path("/tmp/bookrec-page.png")


@pytest.fixture
def open_browser(tmp_path: Path):
    """Opens a headless Chromium with a fresh profile when the test calls it (so a missing
    browser or driver fails or skips the test itself, see ``require_tool``); quit afterwards."""
    drivers = []

    def open_() -> object:
        driver_path = require_tool(
            "chromedriver", "install Debian's chromium-driver", CHROMEDRIVER
        )
        binary = require_tool("chromium", "install Debian's chromium")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--window-size=1200,1400",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        drivers.append(driver)
        driver.set_page_load_timeout(20)
        return driver

    yield open_
    for driver in drivers:
        driver.quit()


def test_search_details_similar_and_user_recommendations(
    open_browser, start_gunicorn, serving_settings
):
    browser = open_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    server = start_gunicorn(serving_settings, workers=1)
    wait = WebDriverWait(browser, 10)
    browser.get(server.url + "/")
    assert browser.title == "bookrec"

    browser.find_element(By.ID, "search-input").send_keys("cooking with herbs")
    browser.find_element(By.CSS_SELECTOR, "#search-form button").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "search-status"), "12 book(s) found"))
    results = browser.find_elements(By.CSS_SELECTOR, "#search-results li")
    assert len(results) == 12
    assert results[0].find_element(By.CLASS_NAME, "title").text == "Cooking with Herbs 1"

    results[0].click()
    wait.until(EC.visibility_of_element_located((By.ID, "book-panel")))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#similar-results li"))
    details = browser.find_element(By.ID, "book-details").text
    assert "Cooking with Herbs 1" in details and "by Cy Chef" in details
    similar = browser.find_elements(By.CSS_SELECTOR, "#similar-results li .title")
    titles = [s.text for s in similar]
    assert len(titles) == 8 and all(titles)
    assert all(t.startswith("Cooking with Herbs") for t in titles[:4]), titles  # same genre
    assert "Cooking with Herbs 1" not in titles
    cover = browser.find_element(By.CSS_SELECTOR, "#book-details img.cover")
    assert cover.get_attribute("src")  # the placeholder when the cover cannot load

    browser.find_element(By.ID, "user-input").send_keys("3")
    browser.find_element(By.CSS_SELECTOR, "#user-form button").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "user-status"), "reader 3"))
    cards = browser.find_elements(By.CSS_SELECTOR, "#user-results li")
    assert len(cards) == 12
    reasons = [c.find_element(By.CLASS_NAME, "reason").text for c in cards]
    assert all(reasons) and any(r.startswith("because you rated") for r in reasons)
    assert "model " in browser.find_element(By.ID, "model-version").text

    browser.find_element(By.ID, "user-input").clear()
    browser.find_element(By.ID, "user-input").send_keys("999999")
    browser.find_element(By.CSS_SELECTOR, "#user-form button").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "user-status"), "popular books"))
    browser.save_screenshot(str(SCREENSHOT))
