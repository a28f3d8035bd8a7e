"""The leaderboard HTML, looked at in a real headless Chromium: intervals, breakdowns, probe tables, plots."""

import shutil
from pathlib import Path

import pytest

from medweave.evaluate.harness import run_task
from medweave.evaluate.leaderboard import write_report
from medweave.evaluate.tasks import load_task
from medweave.generate import load_backend

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report(tiny_set, tiny_vqa_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    (root / "t.yaml").write_text(f"name: tiny\nlayout: vqa-rad\ndata: {tiny_set / 'train.json'}\n"
                                 "metrics: [overall_acc, closed_acc, open_acc]\nbreakdown: [organ]\n")
    task = load_task(root / "t.yaml")
    with load_backend("builtin", model=str(tiny_vqa_model)) as b:
        run_task(task, b, root / "full", n_boot=100, progress=False, probes=["image", "paired"])
        run_task(task, b, root / "half", n_boot=100, progress=False, limit=12)
    return write_report([str(root / "full"), str(root / "half")], root / "board.html")


def test_report_is_self_contained_and_complete(report):
    html = report.read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched: figures are inline
    assert html.count("data:image/png;base64,") >= 2  # the leaderboard plot and the image-probe plot
    for needle in ("overall_acc", "closed_acc", "by organ", "paired (ProbMed-style)", "random guessing: 25%",
                   "other_same_organ", "clustered by image"):
        assert needle in html
    assert "(full)" in html and "(half)" in html  # the same model twice: each run told apart by its folder


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)")
def test_report_in_headless_chromium(report, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(report.as_uri())
        assert page.title() == "medweave leaderboard"
        board = page.locator("table").first
        assert board.locator("tbody tr").count() == 2  # two runs of the task, ranked
        first_row = board.locator("tbody tr").first.inner_text()
        assert "medweave-vqa" in first_row and "[" in first_row  # a value with its interval
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) >= 2 and min(widths) > 100  # every plot decoded and drawn
        page.screenshot(path=str(tmp_path / "board.png"), full_page=True)
        browser.close()
    assert (tmp_path / "board.png").stat().st_size > 10_000
