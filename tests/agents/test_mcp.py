"""`medweave mcp` driven by the official MCP SDK's own client, over stdio (a real subprocess speaking on
its stdin/stdout) and over streamable HTTP (a real server on a loopback port): the tools are listed
with their schemas, each one is called on the phantom store with its trained fusion model and a real
VQA model, bad calls get structured errors naming the argument, resources are read, nothing
returned carries an identifier that de-identification removed, every call is logged de-identified,
and nothing is written outside the store."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

pytest.importorskip("mcp")

from medweave.agents.tools import LOG_NAME, RUNS_DIR, TOOLS  # noqa: E402

pytestmark = pytest.mark.slow


def _phantom_identifiers(model_dir: Path) -> list[str]:
    """Raw names, record numbers and birth dates the phantom's files carry (de-identification removes them)."""
    demo = model_dir.parent.parent / "phantom" / "data" / "tables" / "demographics.csv"
    out = []
    with open(demo, newline="") as fh:
        for row in csv.DictReader(fh):
            out += [row["patient_id"], row["birth_date"], *row["name"].split()]
    return [x for x in out if len(x) >= 4]


def _files(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


async def exercise(session, tiny_set: Path) -> dict:
    """List the tools and call each one; returns what came back, by tool."""
    listed = await session.list_tools()
    by_name = {t.name: t for t in listed.tools}
    assert set(by_name) == set(TOOLS)
    for t in listed.tools:
        assert t.description and len(t.description) > 40
        assert t.input_schema["type"] == "object" and t.input_schema.get("additionalProperties") is False
    assert by_name["predict"].input_schema["required"] == ["case_id"]
    assert by_name["similar_cases"].input_schema["properties"]["k"]["type"] == "integer"

    async def ok(name, args):
        res = await session.call_tool(name, args)
        assert not res.is_error, (name, res.content[0].text)
        assert json.loads(res.content[0].text) == res.structured_content
        return res.structured_content

    out = {"find_cases": await ok("find_cases", {"present": ["image", "text"], "limit": 3})}
    assert out["find_cases"]["total"] >= 3 and len(out["find_cases"]["cases"]) == 3
    case = out["find_cases"]["cases"][0]["case_id"]
    out["show_case"] = await ok("show_case", {"case_id": case})
    assert out["show_case"]["presence"]["image"]["present"] is True and out["show_case"]["reports"]
    out["predict"] = await ok("predict", {"case_id": case})
    p = out["predict"]["heads"]["disease"]
    assert 0 <= p <= 1 and set(out["predict"]["explanation"]["contributions"]) == set(out["show_case"]["presence"])
    out["answer_question"] = await ok("answer_question", {"question": "Is the opacity on the left?", "case_id": case})
    # the tiny VQA model learnt from blob squares: a phantom chest picture is unlike all of them, so its
    # picture gate abstains (no answer, the reason given); a picture like its training ones is answered
    aq = out["answer_question"]
    assert aq["abstained"] is True and aq["answer"] == "" and "no readable content" in aq["reason"]
    import base64

    own = base64.b64encode((tiny_set / "images" / "img00.png").read_bytes()).decode()
    aq = await ok("answer_question", {"question": "Which side is the opacity on?", "image_base64": own})
    assert aq["abstained"] is False and aq["answer"] == "left" and 0 <= aq["confidence"] <= 1
    out["similar_questions"] = await ok("similar_questions", {"question": "Is the opacity on the left?",
                                                              "case_id": case, "k": 3})
    sq = out["similar_questions"]
    assert len(sq["similar"]) == 3 and all(h["answer"] and "image" not in h for h in sq["similar"])
    assert sq["yes_share"] is None or 0 <= sq["yes_share"] <= 1
    out["picture_facts"] = await ok("picture_facts", {"case_id": case, "question": "Is this an image of the chest?"})
    pf = out["picture_facts"]
    assert pf["named"] == {"organ": ["CHEST"]} and pf["checks"]["modality"] is None
    assert pf["facts"]["organ"]["value"] in ("CHEST", "HEAD") and 0 <= pf["checks"]["organ"] <= 1
    out["similar_cases"] = await ok("similar_cases", {"case_id": case, "k": 3})
    assert len(out["similar_cases"]["similar"]) == 3 and all(h["case_id"] != case for h in out["similar_cases"]["similar"])
    out["draft_report"] = await ok("draft_report", {"case_id": case, "section": "impression"})
    assert out["draft_report"]["sentences"] and all(s["section"] == "IMPRESSION" for s in out["draft_report"]["sentences"])
    assert all(s["cites_cases"] for s in out["draft_report"]["sentences"])
    out["summarize_cohort"] = await ok("summarize_cohort", {})
    assert out["summarize_cohort"]["cases"] == sum(out["summarize_cohort"]["splits"].values())
    out["run_evaluation"] = await ok("run_evaluation", {"kind": "vqa", "task": "vqa-rad", "limit": 6,
                                                        "data": str(tiny_set / "train.json"),
                                                        "images": str(tiny_set / "images")})
    run_id = out["run_evaluation"]["run_id"]
    assert out["run_evaluation"]["samples"] == 6 and "closed_acc" in out["run_evaluation"]["metrics"]
    ev = await ok("run_evaluation", {"kind": "model", "split": "test"})
    assert ev["metrics"]["split"] == "test" and ev["metrics"]["cases"] == out["summarize_cohort"]["splits"]["test"]
    auroc = ev["metrics"]["metrics"]["disease"]["auroc"]
    assert 0 <= auroc["lo"] <= auroc["value"] <= auroc["hi"] <= 1

    # bad calls: structured errors naming the argument
    async def bad(name, args):
        res = await session.call_tool(name, args)
        assert res.is_error
        return res.structured_content["error"]

    e = await bad("predict", {"case_id": 17})
    assert e["argument"] == "case_id" and e["kind"] == "invalid_argument"
    e = await bad("predict", {"case_id": "no-such-case"})
    assert e["argument"] == "case_id" and e["kind"] == "not_found" and "find_cases" in e["message"]
    e = await bad("similar_cases", {"case_id": case, "k": "five"})
    assert e["argument"] == "k"
    e = await bad("find_cases", {"colour": "red"})
    assert e["argument"] == "colour" and "unknown argument" in e["message"]
    e = await bad("find_cases", {"present": ["smell"]})
    assert e["argument"] == "present" and "image" in e["message"]
    e = await bad("run_evaluation", {"kind": "vqa", "task": "vqa-rad", "data": "/etc/passwd"})
    assert e["argument"] == "data"
    e = await bad("diagnose_everything", {})
    assert e["kind"] == "unknown_tool"

    # resources
    templates = {t.uri_template for t in (await session.list_resource_templates()).resource_templates}
    assert templates == {"medweave://cases/{case_id}", "medweave://runs/{run_id}/metrics"}
    listed_res = {str(r.uri) for r in (await session.list_resources()).resources}
    assert "medweave://model-card" in listed_res and f"medweave://runs/{run_id}/metrics" in listed_res
    card = json.loads((await session.read_resource("medweave://model-card")).contents[0].text)
    assert card["fusion_model"]["modalities"] == list(out["show_case"]["presence"]) and card["vqa_model"]
    shown = json.loads((await session.read_resource(f"medweave://cases/{case}")).contents[0].text)
    assert shown["case_id"] == case and shown["presence"] == out["show_case"]["presence"]
    metrics = json.loads((await session.read_resource(f"medweave://runs/{run_id}/metrics")).contents[0].text)
    assert metrics["samples"] == 6
    from mcp import MCPError

    with pytest.raises(MCPError, match="unknown case"):
        await session.read_resource("medweave://cases/no-such-case")
    out["_case"] = case
    return out


def _check_outputs(out: dict, phantom_model: Path) -> None:
    text = json.dumps(out)
    leaked = [x for x in _phantom_identifiers(phantom_model) if x in text]
    assert not leaked, f"identifiers removed by de-identification came back: {leaked[:5]}"
    assert "phantom/data" not in text and ".dcm" not in text


def _check_log(store: Path, since: int) -> list[dict]:
    lines = (store / LOG_NAME).read_text().splitlines()[since:]
    recs = [json.loads(x) for x in lines]
    assert {r["tool"] for r in recs} >= set(TOOLS) | {"diagnose_everything"}
    assert all("arguments" in r and "seconds" in r for r in recs)
    bad = [r for r in recs if not r["ok"]]
    assert any(r["error"]["argument"] == "case_id" for r in bad)
    return recs


def _log_len(store: Path) -> int:
    f = store / LOG_NAME
    return len(f.read_text().splitlines()) if f.is_file() else 0


def _args(phantom_model, tiny_vqa_model, tiny_set):
    store = phantom_model.parent.parent / "store"
    return store, ["--store", str(store), "--model", str(phantom_model), "--vqa-model", str(tiny_vqa_model),
                   "--data-root", str(tiny_set)]


def test_mcp_over_stdio(phantom_model, tiny_vqa_model, tiny_set, tmp_path):
    from mcp import Client, StdioServerParameters

    store, args = _args(phantom_model, tiny_vqa_model, tiny_set)
    before_model, before_set, n0 = _files(phantom_model), _files(tiny_set), _log_len(store)
    params = StdioServerParameters(command=sys.executable, args=["-m", "medweave.cli", "mcp", *args],
                                   cwd=str(tmp_path))

    async def main():
        async with Client(params, read_timeout_seconds=300) as client:
            assert client.server_info.name == "medweave" and "find_cases" in client.instructions
            return await exercise(client, tiny_set)

    out = anyio.run(main)
    _check_outputs(out, phantom_model)
    _check_log(store, n0)
    assert _files(phantom_model) == before_model and _files(tiny_set) == before_set
    assert list(tmp_path.iterdir()) == []  # the working folder stays empty: runs go into the store
    assert (store / RUNS_DIR / out["run_evaluation"]["run_id"] / "metrics.json").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mcp_over_streamable_http(phantom_model, tiny_vqa_model, tiny_set, tmp_path):
    from mcp import Client

    store, args = _args(phantom_model, tiny_vqa_model, tiny_set)
    n0, port = _log_len(store), _free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "medweave.cli", "mcp", *args, "--transport", "http",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        end = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < end, "MCP HTTP server not ready"
                time.sleep(0.3)

        async def main():
            async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=300) as client:
                return await exercise(client, tiny_set)

        out = anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    _check_outputs(out, phantom_model)
    recs = _check_log(store, n0)
    q = [r for r in recs if r["tool"] == "answer_question"][0]
    assert q["arguments"]["question"] == "Is the opacity on the left?"


def test_mcp_refuses_a_non_loopback_address(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medweave.cli", "mcp", "--store", str(tmp_path), "--transport",
                           "http", "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "loopback" in proc.stderr
