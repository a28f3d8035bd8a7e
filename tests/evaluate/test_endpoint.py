"""medweave's own server, started on a loopback port, scored through the openai backend: the same
answers as the builtin backend in-process, on the tiny set and on VQA-RAD."""

import pytest

from medweave.evaluate.compare import compare_runs
from medweave.evaluate.harness import load_run, run_task
from medweave.evaluate.tasks import load_task
from medweave.generate import load_backend
from medweave.serve.testing import start_server, stop_server


@pytest.fixture(scope="module")
def endpoint(tiny_vqa_model, tmp_path_factory):
    proc, url = start_server(None, None, ["--vqa-model", str(tiny_vqa_model)],
                             log=tmp_path_factory.mktemp("endpoint") / "server.log")
    yield url + "/v1"
    stop_server(proc)


def _same(tmp_path, task, tiny_vqa_model, endpoint, **kw):
    with load_backend("builtin", model=str(tiny_vqa_model)) as b:
        a = run_task(task, b, tmp_path / "builtin", n_boot=100, progress=False, **kw)
    with load_backend("openai", base_url=endpoint, concurrency=2) as o:
        h = run_task(task, o, tmp_path / "http", n_boot=100, progress=False, **kw)
    ra, rh = load_run(tmp_path / "builtin")["records"], load_run(tmp_path / "http")["records"]
    assert [r["extracted"] for r in ra] == [r["extracted"] for r in rh]
    assert a["metrics"] == h["metrics"] and h["failed"] == 0
    cmp = compare_runs(str(tmp_path / "builtin"), str(tmp_path / "http"), n_boot=100)
    assert cmp["same_answers"] == cmp["common_samples"] and cmp["metrics"]["overall_acc"]["mcnemar"]["p"] == 1.0
    return a


def test_endpoint_equals_builtin_on_the_tiny_set(tmp_path, tiny_set, tiny_vqa_model, endpoint):
    (tmp_path / "t.yaml").write_text(f"name: tiny\nlayout: vqa-rad\ndata: {tiny_set / 'train.json'}\n"
                                     "prompt: \"{question}\\nAnswer the question using a single word or phrase.\"\n"
                                     "metrics: [overall_acc, closed_acc, open_acc]\n")
    res = _same(tmp_path, load_task(tmp_path / "t.yaml"), tiny_vqa_model, endpoint)
    assert res["metrics"]["overall_acc"]["value"] > 0.9


@pytest.mark.slow
def test_endpoint_equals_builtin_on_vqa_rad(tmp_path, tiny_vqa_model, endpoint):
    from medweave.settings import shared_data_dir

    if not (shared_data_dir() / "vqa-rad" / "trainset.json").is_file():
        pytest.skip(f"shared VQA-RAD data absent ({shared_data_dir()})")
    _same(tmp_path, load_task("vqa-rad-testlike"), tiny_vqa_model, endpoint, limit=12)
    # the tiny model learnt from blob squares: its picture gate abstains on every VQA-RAD picture, and
    # an abstention is no answer (extracted "", scored wrong), the same in-process and over HTTP
    for run in ("builtin", "http"):
        recs = load_run(tmp_path / run)["records"]
        assert all(r["output"].startswith("[abstained]") and r["extracted"] == "" and not r["error"] for r in recs)
