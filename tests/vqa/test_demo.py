"""The VQA demo part on a small phantom store (real generator, real ingest)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from medweave.demo.phantom import generate_phantom
from medweave.ingest import ingest
from medweave.store import Store
from medweave.vqa.demo import demo_vqa

pytestmark = pytest.mark.slow


def test_demo_vqa_answers_phantom_questions(tmp_path):
    manifest = generate_phantom(tmp_path / "phantom", n_patients=40, seed=1)
    with Store(tmp_path / "store", write=True) as store:
        ingest([manifest.path("data")], store, options={"mapping": str(manifest.mapping)}, progress=False)
    buf = io.StringIO()
    assert demo_vqa(tmp_path, tmp_path / "store", None, Console(file=buf, width=160)) == 0
    text = buf.getvalue()
    assert "SYNTHETIC" in text and "Which side is the opacity on?" in text
    assert "exact-match accuracy on all" in text and (tmp_path / "vqa-phantom-model" / "config.json").is_file()
    assert (tmp_path / "vqa-phantom" / "train.json").is_file()
