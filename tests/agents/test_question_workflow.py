"""Workflows over questions about pictures (``cases: questions``, configs/agent-vqa-rad.yaml) with a real VQA
model trained on the tiny synthetic set: the picture and the question reach every tool that takes them,
one call serves several evidence values, open questions have no truth and are skipped, the weighted
decider's penalty pulls toward its prior and C is chosen by grouped cross-validation; `medweave agent
--questions` refuses to fit on the questions it answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from medweave.agents.tools import Toolbox
from medweave.agents.workflow import (QuestionCases, Runner, WeightedDecider, WorkflowError, fit_logistic,
                                      load_workflow, parse_workflow)
from medweave.vqa.data import load_vqa, write_vqa

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "agent-vqa-rad.yaml"


def _halves(tiny_set: Path, folder: Path) -> tuple[Path, Path]:
    """The tiny set's questions in two files by picture (images 0-5 / 6-11), pictures beside them."""
    vqa = load_vqa(tiny_set)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        (folder / "images").symlink_to(tiny_set / "images")
    a = write_vqa(folder / "fit.json", [q for q in vqa.questions if int(q.image[3:5]) < 6])
    b = write_vqa(folder / "measure.json", [q for q in vqa.questions if int(q.image[3:5]) >= 6])
    return a, b


@pytest.fixture(scope="module")
def vqa_toolbox(tiny_vqa_model, tmp_path_factory):
    from medweave.store import Store

    store = tmp_path_factory.mktemp("agent-store")
    Store(store, write=True).close()
    tb = Toolbox(store=store, vqa_model=tiny_vqa_model, log=False)
    yield tb
    tb.close()


def test_the_vqa_workflow_file_validates_and_bad_deciders_are_named():
    wf = load_workflow(CONFIG)
    assert wf.cases == "questions" and wf.decider.C == "cv" and wf.decider.prior == {"answerer": 1.0}
    data = yaml.safe_load(CONFIG.read_text())
    with pytest.raises(WorkflowError, match=r"decider.prior names \['oracle'\]"):
        parse_workflow({**data, "decider": {"kind": "weighted", "prior": {"oracle": 1.0}}})
    with pytest.raises(WorkflowError, match=r"decider\.C"):
        parse_workflow({**data, "decider": {"kind": "weighted", "C": 0}})


def test_question_cases_run_the_workflow(vqa_toolbox, tiny_set, tmp_path):
    fit, measure = _halves(tiny_set, tmp_path)
    wf = parse_workflow({**yaml.safe_load(CONFIG.read_text()), "rollouts": {"n": 2, "abstain_below": 0.5}})
    with pytest.raises(WorkflowError, match="--questions"):
        Runner(wf, vqa_toolbox)
    cases = QuestionCases(wf, {"valid": fit, "test": measure})
    runner = Runner(wf, vqa_toolbox, cases=cases)
    ids = runner.cases("test")
    assert len(ids) == 6 and len(cases.ids("test")) == 12  # the open "which side" questions have no truth
    res = runner.run(ids)
    assert res["decider"]["fitted_on"] == "valid" and res["decider"]["cases"] == 6
    assert res["decider"]["C"] in (0.001, 0.01, 0.1, 1.0, 10.0, 100.0) and res["decider"]["cv_log_loss"]
    for r in res["records"]:
        q = cases.rows[r["case_id"]][0]
        assert r["question"] == q.question and r["truth"] == q.norm_answer
        for ro in r["rollouts"]:
            called = [s for s in ro["steps"] if not s.get("reused")]
            assert sorted(s["tool"] for s in called) == ["answer_question", "picture_facts", "similar_questions"]
            assert len(ro["steps"]) == 5  # three picture_facts values from one call
            for s in ro["steps"]:
                assert s["arguments"]["image_base64"].startswith("<picture:")  # de-identified in the record
                assert s["arguments"]["question"] == q.question
                assert s["error"] is None, s
        assert r["steps"] == 6
        direct = vqa_toolbox.call("answer_question", {"question": q.question, "image_base64": cases.picture(r["case_id"])})
        p_yes = direct["confidence"] if direct["answer"] == "yes" else 1 - direct["confidence"]
        assert r["evidence"]["answerer"] == pytest.approx(p_yes)
        assert r["evidence"]["modality fact"] is None  # "Is the opacity on the left?" names no modality
    assert res["summary"]["steps_per_case"] == 6


def test_the_penalty_pulls_toward_the_prior_and_cv_picks_C():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 2))
    y = (X[:, 0] + 0.8 * rng.normal(size=80) > 0).astype(int)
    w, b = fit_logistic(X, y, 1.0)
    ref = LogisticRegression(C=1.0).fit(X, y)
    assert np.allclose(w, ref.coef_[0], atol=2e-3) and b == pytest.approx(ref.intercept_[0], abs=2e-3)
    w_tight, _ = fit_logistic(X, y, 1e-4, np.array([1.0, 0.0]))
    assert np.allclose(w_tight, [1.0, 0.0], atol=0.02)  # little freedom: the prior itself
    wf = parse_workflow({"name": "t", "question": "q?", "target": "t",
                         "evidence": [{"name": "good", "tool": "predict", "value": "p"},
                                      {"name": "noise", "tool": "similar_cases", "value": "p"}],
                         "decider": {"kind": "weighted", "C": "cv", "prior": {"good": 1.0}}})
    # features as the workflow builds them: logit and an absent indicator per evidence; noise is pure noise
    F = np.column_stack([X[:, 0] * 2, np.zeros(80), rng.normal(size=80), np.zeros(80)])
    d = WeightedDecider(wf).fit(F, y, groups=np.arange(80) // 2)
    losses = d.info["cv_log_loss"]
    assert set(losses) == {"0.001", "0.01", "0.1", "1.0", "10.0", "100.0"}
    assert d.info["C"] == min((float(c) for c, v in losses.items() if v <= min(losses.values()) + 1e-9))
    assert abs(d.info["weights"]["noise"]) < abs(d.info["weights"]["good"])


@pytest.mark.slow
def test_agent_command_over_question_files(tiny_vqa_model, tiny_set, tmp_path):
    fit, measure = _halves(tiny_set, tmp_path)
    wf = yaml.safe_load(CONFIG.read_text())
    wf["rollouts"] = {"n": 1}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(wf))
    base = [sys.executable, "-m", "medweave.cli", "agent", "--workflow", str(path), "--vqa-model", str(tiny_vqa_model),
            "--store", str(tmp_path / "store")]
    proc = subprocess.run([*base, "--questions", str(measure), "--fit-questions", str(fit), "--json",
                           "--out", str(tmp_path / "a.html")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    brief = json.loads(proc.stdout)
    assert len(brief["answers"]) == 6 and brief["summary"]["steps_per_case"] == 3
    assert all(a["truth"] in ("yes", "no") and a["answer"] in ("yes", "no") for a in brief["answers"])
    assert "picture_facts" in (tmp_path / "a.html").read_text()
    same = subprocess.run([*base, "--questions", str(measure), "--fit-questions", str(measure)], capture_output=True,
                          text=True, timeout=600)
    assert same.returncode == 2 and "fitted on the questions it answers" in same.stderr
    none = subprocess.run([*base, "--questions", str(measure)], capture_output=True, text=True, timeout=600)
    assert none.returncode == 2 and "--fit-questions" in none.stderr
