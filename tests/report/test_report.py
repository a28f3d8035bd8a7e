"""The HTML report: one self-contained file with every section."""

import re
import subprocess
import sys

import pytest

from medweave.report import build_report
from medweave.report.demo import demo_report


def test_report_is_self_contained_with_every_section(ctx, phantom_model, tmp_path):
    out = build_report(phantom_model, tmp_path / "r.html", n_cases=1, n_boot=50, ctx=ctx,
                       image_methods=("occlusion",))
    html = out.read_text()
    for section in ("Cohort", "Metrics", "Missingness", "Visual question answering", "Explained cases"):
        assert f"<h2>{section}" in html
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(imgs) >= 5 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert "http://" not in html and "https://" not in html  # nothing fetched when opened
    assert "image: absent for all" in html and "MNAR" in html
    assert html.count('class="case"') == 1
    assert "auroc" in html and "95% CI" in html


def test_a_task_whose_evaluation_split_holds_one_class_is_reported_without_its_plots(ctx, phantom_model, tmp_path):
    """A small cohort's test split can hold one class only (no ROC exists): the report says so instead
    of failing (it raised on the missing plot; seen in tests/test_atomic.py's 40-patient cohort)."""
    import copy

    import numpy as np

    one = copy.copy(ctx)
    one.dataset = copy.copy(ctx.dataset)
    one.dataset.targets = {k: np.where(np.isnan(v), v, 0.0) for k, v in ctx.dataset.targets.items()}
    html = build_report(phantom_model, tmp_path / "one.html", n_cases=1, n_boot=20, ctx=one,
                        image_methods=("occlusion",)).read_text()
    head = next(iter(ctx.dataset.targets))
    assert f"No ROC or calibration plot for {head}" in html and f'alt="ROC {head}"' not in html
    assert "<h2>Metrics" in html and html.rstrip().endswith("</html>")


@pytest.mark.slow
def test_demo_report_writes_into_the_demo_folder(phantom_model):
    path = demo_report(phantom_model.parent.parent)
    assert path.name == "report.html" and path.stat().st_size > 50_000


def test_cli_commands_have_examples():
    for cmd in ("explain", "report", "serve"):
        out = subprocess.run([sys.executable, "-m", "medweave.cli", cmd, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and f"Example: medweave {cmd}" in out.stdout


def test_explain_cli_writes_html_and_json(ctx, phantom_model, tmp_path):
    case = ctx.dataset.case_ids[0]
    out = subprocess.run([sys.executable, "-m", "medweave.cli", "explain", "--model", str(phantom_model), "--case", case,
                          "--out", str(tmp_path / "e.html"), "--part", "modalities", "--part", "tabular", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert '"shapley"' in out.stdout and "Shapley" in (tmp_path / "e.html").read_text()
    bad = subprocess.run([sys.executable, "-m", "medweave.cli", "explain", "--model", str(phantom_model), "--case", "nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown case 'nope'" in bad.stderr
