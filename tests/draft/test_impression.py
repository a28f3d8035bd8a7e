"""Impression drafters on the real Open-i summarisation reports: grounded in training reports only,
citing what they used; the command line end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medweave.draft import DRAFTERS, load_split
from medweave.draft.impression import Rerank, edit_impression
from medweave.draft.model import load_drafter, save_drafter
from medweave.draft.text import compress, lcs_f, rouge_tokens
from medweave.retrieve.kb import Scope

CLI = [sys.executable, "-m", "medweave.cli"]


@pytest.fixture(scope="module")
def summ(shared_data) -> Path:
    d = shared_data / "openi-summ"
    if not (d / "train.jsonl").is_file():
        pytest.skip(f"openi-summ not found in {shared_data}")
    return d


@pytest.fixture(scope="module")
def small(summ, tmp_path_factory) -> Path:
    """The first 240 training and 40 validate reports (fast fits)."""
    out = tmp_path_factory.mktemp("summ-small")
    for split, n in (("train", 240), ("validate", 40)):
        lines = (summ / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def rerank(small):
    return Rerank(k=10, max_iter=40).fit(load_split(small, "train"))


def test_knowledge_base_is_exactly_the_training_part(summ):
    """No leakage: the drafter's knowledge base holds the lines of train.jsonl and nothing else (not the
    validate reports, not the same reports in iu-xray-reports), and its drafts cite only those."""
    train, valid = load_split(summ, "train"), load_split(summ, "validate")
    d = DRAFTERS["consensus"]().fit(train)
    assert [e.id for e in d.kb.entries] == [r.id for r in train]
    assert all(e.split == "train" and e.text == r.findings for e, r in zip(d.kb.entries, train))
    train_ids = {r.id for r in train}
    for draft in d.draft([r.findings for r in valid[:60]]):
        assert draft.sources and {s["id"] for s in draft.sources} <= train_ids
    assert not {r.id for r in valid} & train_ids


def test_citations_point_at_the_reports_used(small):
    train = load_split(small, "train")
    by_id = {r.id: r for r in train}
    findings = [r.findings for r in load_split(small, "validate")]
    for d in DRAFTERS["nearest"]().fit(train).draft(findings):
        assert len(d.sources) == 1 and by_id[d.sources[0]["id"]].impression == d.text
    for d in DRAFTERS["consensus"]().fit(train).draft(findings):
        assert d.sources and all(by_id[s["id"]].impression == d.text for s in d.sources)
    mc = DRAFTERS["most-common"]().fit(train)
    assert all(by_id[s["id"]].impression == mc.text for s in mc.draft(["x"])[0].sources)


def test_leave_one_out_scope_never_cites_the_report_itself(small):
    train = load_split(small, "train")
    d = DRAFTERS["nearest"]().fit(train)
    scopes = [Scope(("train",), exclude_ids=frozenset([r.id])) for r in train[:30]]
    for r, draft in zip(train, d.draft([r.findings for r in train[:30]], scopes)):
        assert draft.sources[0]["id"] != r.id


def test_rerank_draws_on_retrieved_edited_and_extracted_candidates(small, rerank):
    train = load_split(small, "train")
    by_id = {r.id: r for r in train}
    valid = load_split(small, "validate")
    drafts = rerank.draft([r.findings for r in valid])
    assert len(drafts) == len(valid)
    for d, r in zip(drafts, valid):
        ids = {s["id"] for s in d.sources}
        assert ids and ids <= set(by_id) | {"findings"}
        if d.kind == "retrieved":
            assert by_id[d.sources[0]["id"]].impression == d.text
        if "findings" in ids:  # an extract: its words come from the findings
            assert set(rouge_tokens(d.text)) & set(rouge_tokens(r.findings))
    # the learned choice is at least as good as the plain nearest neighbour on these reports
    nearest = DRAFTERS["nearest"]().fit(train).draft([r.findings for r in valid])
    score = lambda ds: sum(lcs_f(rouge_tokens(r.impression), rouge_tokens(d.text)) for d, r in zip(ds, valid))  # noqa
    assert score(drafts) >= score(nearest) - 1.0


def test_edits_respect_the_findings():
    edits = dict((w, t) for t, w in edit_impression(
        "Cardiomegaly. Small right pleural effusion.", "Heart size normal. Small left pleural effusion.",
        {"Pleural Effusion"}))
    assert edits["dropped sentences the findings do not support"] == "Small right pleural effusion."
    assert "left" in edits["laterality from the findings"].lower()
    stable = dict((w, t) for t, w in edit_impression("Stable cardiomegaly.", "The heart is enlarged.",
                                                     {"Cardiomegaly"}))
    assert stable["no comparison in the findings: 'stable' dropped"] == "Cardiomegaly."
    assert compress("There is a small left pleural effusion.") == "Small left pleural effusion."
    assert compress("Calcified granulomas are present.") == "Calcified granulomas."


def test_save_load_gives_the_same_drafts(small, rerank, tmp_path):
    findings = [r.findings for r in load_split(small, "validate")][:15]
    before = [d.text for d in rerank.draft(findings)]
    save_drafter(rerank, tmp_path / "m", {"note": "test"})
    back, meta = load_drafter(tmp_path / "m")
    assert meta["method"] == "rerank" and meta["note"] == "test"
    assert [d.text for d in back.draft(findings)] == before
    with pytest.raises(FileNotFoundError, match="medweave draft fit"):
        load_drafter(tmp_path / "nothing")


@pytest.mark.slow
def test_cli_fit_impression_file_and_score(small, tmp_path):
    model = tmp_path / "drafter"
    fit = subprocess.run([*CLI, "draft", "fit", "--data", str(small), "--out", str(model), "--method", "nearest",
                          "--method", "consensus", "--json"], capture_output=True, text=True, timeout=600)
    assert fit.returncode == 0, fit.stderr
    info = json.loads(fit.stdout)
    assert info["method"] in ("nearest", "consensus") and set(info["methods"]) == {"nearest", "consensus"}
    one = subprocess.run([*CLI, "draft", "impression", "--model", str(model), "--findings",
                          "Small left pleural effusion. Heart size normal.", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    res = json.loads(one.stdout)
    assert res["prediction"] and res["sources"][0]["id"].startswith("train:") and res["sources"][0]["findings"]
    # a whole file with one bad line: the others are drafted, the bad one says why, the exit code is 1
    lines = (small / "validate.jsonl").read_text().splitlines()[:6]
    lines.insert(2, json.dumps({"idx": 99, "inputs": ""}))
    lines.insert(4, "{not json")
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    run = subprocess.run([*CLI, "draft", "impression", "--model", str(model), "--input", str(tmp_path / "in.jsonl"),
                          "--out", str(tmp_path / "out.jsonl")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "2 bad line(s)" in run.stdout
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and "inputs" in rows[2]["error"] and "not valid JSON" in rows[4]["error"]
    good = [r for r in rows if "prediction" in r]
    assert len(good) == 6 and all(r["sources"] and "target" in r for r in good)
    score = subprocess.run([*CLI, "draft", "score", str(tmp_path / "out.jsonl"), "--no-coco", "--bootstrap", "100",
                            "--json"], capture_output=True, text=True, timeout=120)
    rep = json.loads(score.stdout)
    assert rep["n"] == 6 and len(rep["skipped_lines"]) == 2 and 0 <= rep["rougeL"]["value"] <= 100
    bad = subprocess.run([*CLI, "draft", "impression", "--model", str(model)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--findings" in bad.stderr
