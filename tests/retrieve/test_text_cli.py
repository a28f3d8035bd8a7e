"""``medweave retrieve --text``: reports of a store and of a drafter's knowledge base, as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medweave.retrieve.kb import KnowledgeBase, Scope
from medweave.store import Store

CLI = [sys.executable, "-m", "medweave.cli"]
REPORTS = {
    "pt01_a.txt": "FINDINGS:\nSmall left pleural effusion. Heart size is normal.\n\nIMPRESSION:\nSmall left effusion.\n",
    "pt02_a.txt": "FINDINGS:\nThe lungs are clear. No pneumothorax.\n\nIMPRESSION:\nNo acute cardiopulmonary process.\n",
    "pt03_a.txt": "FINDINGS:\nThe cardiac silhouette is enlarged. Lungs are clear.\n\nIMPRESSION:\nCardiomegaly.\n",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reports")
    for name, text in REPORTS.items():
        (folder / name).write_text("Chest radiograph report.\n\n" + text)
    st = folder / "store"
    res = subprocess.run([*CLI, "ingest", str(folder), "--store", str(st), "--quiet", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return st


def test_store_reports_are_entries_with_their_sections(store):
    with Store(store) as st:
        kb = KnowledgeBase.from_store(st, ["report"])
    assert len(kb) == 3
    hit = kb.search_text(["pleural effusion on the left"], 1, Scope(("all",)))[0][0]["entry"]
    assert hit.fields["sections"]["IMPRESSION"] == "Small left effusion."


def test_retrieve_text_prints_the_matching_reports(store):
    res = subprocess.run([*CLI, "retrieve", "--store", str(store), "--text", "enlarged cardiac silhouette", "-k", "2", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["searched"] == 3 and len(out["hits"]) == 2
    assert out["hits"][0]["impression"] == "Cardiomegaly." and "enlarged" in out["hits"][0]["findings"]
    plain = subprocess.run([*CLI, "retrieve", "--store", str(store), "--text", "pleural effusion", "-k", "1"],
                           capture_output=True, text=True, timeout=300)
    assert "IMPRESSION: Small left effusion." in plain.stdout
    bad = subprocess.run([*CLI, "retrieve", "--text", "x"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--store DIR or --drafter DIR" in bad.stderr
