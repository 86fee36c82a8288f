"""A person in a real browser: Debian's Chromium driven by Playwright uploads X-rays and reads the answers.

Set SCREENSHOT_DIR to keep the screenshots (they are how the page was looked at)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import REAL_DATA, synthetic_xray

OOD_DATA = REAL_DATA.parent / "ood"
requires_ood_data = pytest.mark.skipif(not (OOD_DATA / "hand").is_dir(), reason="real hand X-rays in ../shared/data/ood are absent")


def held_out_hand_xray() -> Path:
    """A hand X-ray the bundled gate was not fitted on (its held-out list), else the first one."""
    import json

    splits = Path(__file__).resolve().parents[1] / "model" / "ood_gate_splits.json"
    hands = sorted((OOD_DATA / "hand").iterdir())
    if splits.is_file():
        held_out = {Path(name).name for name in json.loads(splits.read_text())["held_out"]["hand"]}
        hands = [path for path in hands if path.name in held_out] or hands
    return hands[0]

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
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(app_url, wait_until="networkidle")
    yield page
    page.close()


def screenshot(page, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def upload(page, path: Path) -> None:
    clear = page.locator("#xray-upload button[aria-label*='Clear' i]")
    if clear.count():
        clear.first.click()
        page.locator("#xray-upload input[type=file]").wait_for(state="attached", timeout=10_000)
    page.locator("#xray-upload input[type=file]").set_input_files(str(path))


def good_xray(tmp_path: Path, name: str = "child_chest.png") -> Path:
    path = tmp_path / name
    synthetic_xray(1, 99, size=128).resize((400, 320)).save(path)
    return path


def test_an_upload_shows_the_picture_decision_probabilities_and_a_heatmap_with_its_legend(page, tmp_path):
    body = page.locator("body").inner_text()
    assert body.count("not a medical device") == 1  # said once, prominently
    upload(page, good_xray(tmp_path))
    decision = page.locator("#decision")
    decision.get_by_text("Decision:").wait_for(timeout=30_000)
    assert "operating threshold" in decision.inner_text()
    confidences = page.locator("#confidences").inner_text()
    assert "PNEUMONIA" in confidences and "NORMAL" in confidences
    page.locator("#upload-preview img").wait_for(timeout=10_000)
    page.locator("#heatmap img").wait_for(timeout=10_000)
    legend = page.locator("#heatmap-legend")
    assert legend.is_visible() and "strong evidence for PNEUMONIA" in legend.inner_text()
    assert page.locator("body").inner_text().count("not a medical device") == 1
    screenshot(page, tmp_path, "single-xray")


def test_a_refused_upload_leaves_no_decision_of_the_previous_file_on_screen(page, tmp_path):
    upload(page, good_xray(tmp_path))
    page.locator("#decision").get_by_text("Decision:").wait_for(timeout=30_000)
    bad = tmp_path / "scan.png"
    bad.write_text("not an image at all")
    upload(page, bad)
    page.locator("#decision").get_by_text("Cannot analyse this file").wait_for(timeout=30_000)
    assert "is not an image" in page.locator("#decision").inner_text()
    assert "Decision:" not in page.locator("body").inner_text()
    assert not page.locator("#heatmap img").is_visible() and not page.locator("#confidences").is_visible()
    assert not page.locator("#upload-preview img").count()
    screenshot(page, tmp_path, "refused-upload")


def test_clearing_the_upload_clears_the_answer(page, tmp_path):
    upload(page, good_xray(tmp_path))
    page.locator("#decision").get_by_text("Decision:").wait_for(timeout=30_000)
    page.locator("#xray-upload button[aria-label*='Clear' i]").first.click()
    page.wait_for_function("() => !document.body.innerText.includes('Decision:')", timeout=15_000)
    assert not page.locator("#heatmap img").is_visible()


def test_the_batch_tab_fills_the_table_and_says_when_the_space_is_busy(page, tmp_path, monkeypatch):
    import app

    films = [good_xray(tmp_path, f"batch-{i}.png") for i in range(2)]
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-upload input[type=file]").set_input_files([str(film) for film in films])
    page.locator("#batch-upload").get_by_text("batch-1").wait_for(timeout=15_000)
    page.locator("#analyse-all").click()
    page.locator("#batch-results").get_by_text("batch-1.png").wait_for(timeout=30_000)
    page.locator("#batch-csv").get_by_text("pneumonia_predictions").wait_for(timeout=10_000)
    screenshot(page, tmp_path, "batch")

    # A new set of files clears the last answer and keeps the table's headers.
    page.locator("#batch-upload input[type=file]").set_input_files(str(films[0]))
    page.wait_for_function("() => !document.querySelector('#batch-results').innerText.includes('batch-1.png')",
                           timeout=15_000)
    assert all(header in page.locator("#batch-results").inner_text() for header in ("P(pneumonia)", "decision", "note"))

    # The Space full of batches: the person is told at once, not left waiting.
    monkeypatch.setattr(app, "MAX_WAITING_BATCHES", 0)
    page.locator("#analyse-all").click()
    page.get_by_text("The Space is busy").wait_for(timeout=15_000)
    screenshot(page, tmp_path, "batch-busy")


def test_a_batch_list_longer_than_a_batch_takes_is_said_as_soon_as_the_files_are_added(page, tmp_path):
    """The list can grow past 100 in two additions; pressing the button would only be refused (the request names
    too many files), so the table says so at once."""
    import app

    films = []
    for i in range(app.MAX_BATCH_FILES + 1):
        films.append(tmp_path / f"many-{i:03d}.png")
        Image.new("L", (16, 16), i).save(films[-1])
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-upload input[type=file]").set_input_files([str(film) for film in films[:60]])
    page.locator("#batch-upload").get_by_text("many-059").wait_for(timeout=30_000)
    page.locator("#batch-upload input[type=file]").set_input_files([str(film) for film in films[60:]])
    page.wait_for_function(f"() => document.querySelector('#batch-results').innerText"
                           f".includes('{len(films)} files is more than the {app.MAX_BATCH_FILES} a batch takes')",
                           timeout=30_000)
    screenshot(page, tmp_path, "batch-list-too-long")


def test_analyse_all_without_files_asks_for_them_and_leaves_no_error_on_the_results(page, tmp_path):
    page.get_by_role("tab", name="Batch").click()
    page.locator("#analyse-all").click()
    page.get_by_text("Upload one or more chest X-rays first.").wait_for(timeout=15_000)
    assert "Error" not in page.locator("#batch-results").inner_text() + page.locator("#batch-csv").inner_text()
    assert "P(pneumonia)" in page.locator("#batch-results").inner_text()
    screenshot(page, tmp_path, "batch-without-files")


def test_on_a_phone_the_answer_comes_right_under_the_file_and_is_announced(browser, app_url, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(app_url, wait_until="networkidle")
    assert page.locator("#decision").get_attribute("aria-live") == "polite"
    upload(page, good_xray(tmp_path))
    page.locator("#decision").get_by_text("Decision:").wait_for(timeout=30_000)
    page.locator("#upload-preview img").wait_for(timeout=10_000)
    boxes = {name: page.locator(f"#{name}").bounding_box() for name in ("xray-upload", "upload-hint", "decision", "upload-preview")}
    assert boxes["xray-upload"]["y"] < boxes["decision"]["y"] < boxes["upload-preview"]["y"]
    # only the one-paragraph hint lies between the file and its answer
    assert boxes["decision"]["y"] - (boxes["xray-upload"]["y"] + boxes["xray-upload"]["height"]) < boxes["upload-hint"]["height"] + 60
    screenshot(page, tmp_path, "phone-answer")
    page.close()


def test_on_a_phone_the_batch_table_scrolls_sideways_rather_than_breaking_words(browser, app_url, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(app_url, wait_until="networkidle")
    page.get_by_role("tab", name="Batch").click()
    films = [good_xray(tmp_path, f"phone-batch-{i}.png") for i in range(2)]
    page.locator("#batch-upload input[type=file]").set_input_files([str(film) for film in films])
    page.locator("#batch-upload").get_by_text("phone-batch-1").wait_for(timeout=15_000)
    page.locator("#analyse-all").click()
    page.locator("#batch-results [role=gridcell]").get_by_text("phone-batch-1.png").wait_for(timeout=30_000)
    # each probability and decision cell takes no more lines than it has words
    lines_and_words = page.evaluate("""() => [...document.querySelectorAll(
        '#batch-results [role=gridcell][data-col="1"], #batch-results [role=gridcell][data-col="2"]')].map(cell => {
            const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT), lines = new Set();
            while (walker.nextNode()) {
                const range = document.createRange(); range.selectNodeContents(walker.currentNode);
                [...range.getClientRects()].filter(r => r.width > 0).forEach(r => lines.add(Math.round(r.top)));
            }
            return [lines.size, cell.innerText.trim().split(/\\s+/).filter(Boolean).length]; })""")
    assert len(lines_and_words) == 4 and all(lines <= max(words, 1) for lines, words in lines_and_words), lines_and_words
    screenshot(page, tmp_path, "phone-batch")
    page.close()


def test_a_phone_sized_screen_shows_the_disclaimer_and_a_readable_footer(browser, app_url, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(app_url, wait_until="networkidle")
    assert "not a medical device" in page.locator("body").inner_text()
    assert "Model:" in page.locator("#footer-note").inner_text()
    screenshot(page, tmp_path, "phone")
    page.close()


@pytest.fixture(scope="module")
def bundled_app_url():
    """The app on the bundled model, whose gate was fitted on real X-rays of other kinds."""
    import app
    from chestxray import PneumoniaClassifier
    from conftest import free_port

    classifier = PneumoniaClassifier.from_pretrained(app.DEFAULT_MODEL)
    demo = app.build_demo(classifier, "bundled model")
    port = free_port()
    app.serve(demo, "127.0.0.1", port, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@requires_ood_data
def test_a_hand_x_ray_gets_no_decision_on_screen(browser, bundled_app_url, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(bundled_app_url, wait_until="networkidle")
    upload(page, held_out_hand_xray())
    page.locator("#decision").get_by_text("No decision").wait_for(timeout=30_000)
    body = page.locator("body").inner_text()
    assert "Decision:" not in body and "PNEUMONIA" not in page.locator("#decision").inner_text()
    assert not page.locator("#confidences").is_visible() and not page.locator("#heatmap img").is_visible()
    page.locator("#upload-preview img").wait_for(timeout=10_000)  # the person still sees what they sent
    screenshot(page, tmp_path, "hand-refused")
    page.close()


def test_clicking_an_example_loads_it_and_answers(browser, examples_app_url, tmp_path):
    """The page loads an example outside the queue (POST /run/predict), which the HTTP guard must let through."""
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(examples_app_url, wait_until="networkidle")
    page.get_by_text("pneumonia_film1.png").first.click()
    page.locator("#decision").get_by_text("Decision:").wait_for(timeout=30_000)
    assert "pneumonia_film1" in page.locator("#xray-upload").inner_text()  # the example is the file on the page
    page.locator("#upload-preview img").wait_for(timeout=10_000)
    screenshot(page, tmp_path, "example-clicked")
    page.close()


@pytest.mark.skipif(not (REAL_DATA.parent / "adult_nih").is_dir(), reason="adult NIH films in ../shared/data are absent")
def test_an_adult_film_gets_its_answer_under_a_warning_that_stands_out(browser, bundled_app_url, tmp_path):
    """Any adult film the gate warns about: the warning is a coloured callout above the decision."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(bundled_app_url, wait_until="networkidle")
    for film in sorted((REAL_DATA.parent / "adult_nih" / "NORMAL").iterdir())[:10]:
        upload(page, film)
        page.wait_for_function(f"() => document.querySelector('#xray-upload').innerText.includes({film.stem!r})"
                               " && /Decision:|No decision/.test(document.querySelector('#decision').innerText)",
                               timeout=30_000)
        warning = page.locator("#decision .population-warning")
        if warning.count():
            break
    else:
        pytest.skip("the gate warned about none of the first ten adult films")
    assert "children aged 1 to 5" in warning.inner_text() and "do not rely on this result" in warning.inner_text()
    colour = warning.evaluate("element => getComputedStyle(element).backgroundColor")
    assert colour not in ("rgba(0, 0, 0, 0)", "transparent"), colour
    decision = page.locator("#decision").inner_text()
    assert "not validated for this patient" in decision and "as calibrated on children's X-rays" in decision
    screenshot(page, tmp_path, "adult-warning")
    page.close()
