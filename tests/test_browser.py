"""A person in a real browser: Debian's Chromium driven by Playwright uploads an X-ray and reads the answer."""

from __future__ import annotations

import shutil

import pytest

from conftest import synthetic_xray

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (apt-get install chromium)"),
]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def app_url(app_server):
    return app_server[0]


@pytest.fixture(scope="module")
def page(app_url):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_url, wait_until="networkidle")
        yield page
        browser.close()


def test_upload_shows_decision_probabilities_heatmap_and_disclaimer(page, tmp_path):
    xray = tmp_path / "child_chest.png"
    synthetic_xray(1, 99, size=128).save(xray)
    assert "not a medical device" in page.locator("body").inner_text()
    page.locator("#xray-upload input[type=file]").set_input_files(str(xray))
    page.get_by_role("button", name="Analyse", exact=True).click()
    decision = page.locator("#decision")
    decision.get_by_text("Decision:").wait_for(timeout=30_000)
    text = decision.inner_text()
    assert "NORMAL" in text or "PNEUMONIA" in text
    assert "operating threshold" in text
    confidences = page.locator("#confidences").inner_text()
    assert "PNEUMONIA" in confidences and "NORMAL" in confidences
    page.get_by_alt_text("What drove the PNEUMONIA score (Grad-CAM)").or_(page.locator("img[src*='image']")).first.wait_for(timeout=10_000)
    page.screenshot(path=str(tmp_path / "single.png"), full_page=True)


def test_a_bad_upload_shows_a_readable_error(page, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_text("not an image at all")
    page.locator("#xray-upload button[aria-label*='Clear'], #xray-upload button[aria-label*='clear']").first.click(timeout=5_000)
    page.locator("#xray-upload input[type=file]").set_input_files(str(bad))
    page.get_by_role("button", name="Analyse", exact=True).click()
    page.get_by_text("is not an image").first.wait_for(timeout=30_000)
