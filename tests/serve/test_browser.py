"""The web UI in a real headless Chromium (Debian's package), driven by Playwright."""

import shutil
from pathlib import Path

import pytest

from medweave.serve import create_app
from medweave.serve.testing import ThreadServer

from .test_server import side_png

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def page(phantom_model, tiny_vqa_model, tmp_path_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    app = create_app(phantom_model.parent.parent / "store", phantom_model, vqa_model_dir=tiny_vqa_model)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with ThreadServer(app) as srv, playwright.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=FLAGS,
                                                       headless=True, viewport={"width": 1200, "height": 900})
        pg = browser.new_page()
        pg.base_url = srv.url
        yield pg
        browser.close()


def test_cohort_page_lists_cases(page, tmp_path):
    page.goto(page.base_url + "/")
    page.wait_for_selector("#case-list a")
    assert page.locator("#case-list a").count() == 60
    assert "image" in page.inner_text("#presence")
    page.screenshot(path=str(tmp_path / "cohort.png"), full_page=True)


def test_case_page_shows_prediction_contributions_and_saliency(page, tmp_path):
    page.goto(page.base_url + "/")
    page.wait_for_selector("#case-list a")
    page.locator("#case-list a").first.click()
    page.wait_for_selector("#shapley", timeout=60_000)
    prob = float(page.inner_text("#prob"))
    assert 0 <= prob <= 1
    assert page.locator("#shapley tr").count() == 5  # header + 4 modalities
    page.wait_for_selector("#similar", timeout=30_000)
    # the similar-case panel shows what the retrieved cases' reports say (the phantom's reports)
    reports = page.locator("#similar .report")
    assert reports.count() == page.locator("#similar tr").count() - 1
    texts = [reports.nth(i).inner_text() for i in range(reports.count())]
    assert any(("pneumonia" in t.lower() or "cardiopulmonary" in t.lower() or "lungs" in t.lower()) for t in texts), texts
    if page.locator("#images img").count():
        assert page.locator("#saliency-occlusion").get_attribute("src").startswith("data:image/png;base64,")
    page.screenshot(path=str(tmp_path / "case.png"), full_page=True)
    shutil.copy(tmp_path / "case.png", "/tmp/medweave-case.png")


def test_ask_flow(page, tmp_path):
    img = tmp_path / "left.png"
    img.write_bytes(side_png("left", 11))
    page.goto(page.base_url + "/ask")
    page.set_input_files("#image", str(img))
    page.fill("#question", "Which side is the opacity on?")
    page.click("#submit")
    page.wait_for_selector("#answer", timeout=30_000)
    assert page.inner_text("#answer") == "left"
    assert page.locator("#similar tr").count() == 6
    page.screenshot(path=str(tmp_path / "ask.png"), full_page=True)
    shutil.copy(tmp_path / "ask.png", "/tmp/medweave-ask.png")
