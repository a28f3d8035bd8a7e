"""The harness with a real model (the builtin VQA answerer trained on the tiny set): tasks as data, runs,
the response cache, bad input, compare, probes."""

import json
import shutil
from pathlib import Path

import pytest

from medweave.evaluate.compare import compare_runs
from medweave.evaluate.harness import load_run, run_task
from medweave.evaluate.samples import TaskError
from medweave.evaluate.tasks import load_task
from medweave.generate import load_backend

TASK = """name: tiny
layout: vqa-rad
data: {data}
metrics: [overall_acc, closed_acc, open_acc, closed_acc_yesno, open_recall]
breakdown: [organ]
"""


def write_task(folder: Path, data: Path, extra: str = "") -> Path:
    p = folder / "task.yaml"
    p.write_text(TASK.format(data=data) + extra)
    return p


@pytest.fixture(scope="module")
def backend(tiny_vqa_model):
    with load_backend("builtin", model=str(tiny_vqa_model)) as b:
        yield b


def test_builtin_run_equals_the_vqa_scores_and_is_cached(backend, tiny_set, tiny_vqa_model, tmp_path):
    from medweave.evaluate.vqa import evaluate_vqa

    task = load_task(write_task(tmp_path, tiny_set / "train.json"))
    res = run_task(task, backend, tmp_path / "run", n_boot=200, progress=False)
    ref = evaluate_vqa(tiny_vqa_model, tiny_set / "train.json", n_boot=200)
    for m in task.metrics:
        assert res["metrics"][m]["value"] == pytest.approx(ref[m]["value"]) and res["metrics"][m]["n"] == ref[m]["n"]
    run = load_run(tmp_path / "run")
    assert run["run"]["counts"]["sent"] == 24 and run["run"]["counts"]["cache_hits"] == 0
    rec = run["records"][0]
    assert {"prompt", "images", "output", "extracted", "scores", "latency_s"} <= set(rec)
    assert rec["images"][0] == __import__("hashlib").sha256((tiny_set / "images" / "img00.png").read_bytes()).hexdigest()
    assert res["metrics"]["overall_acc"]["clusters"] == 12  # clustered by picture
    assert run["run"]["task"]["name"] == "tiny" and run["run"]["backend"]["fingerprint"].startswith("builtin:")
    again = run_task(task, backend, tmp_path / "run", n_boot=200, progress=False)
    info = load_run(tmp_path / "run")["run"]
    assert info["counts"]["sent"] == 0 and info["counts"]["cache_hits"] == 24
    assert again["metrics"] == res["metrics"]
    assert info["counts"]["cache"]["repeated"] == 0


def test_missing_and_undecodable_pictures_fail_their_samples_only(backend, tiny_set, tmp_path):
    data = tmp_path / "set"
    shutil.copytree(tiny_set, data)
    (data / "images" / "img03.png").unlink()
    (data / "images" / "img05.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    task = load_task(write_task(tmp_path, data / "train.json"))
    res = run_task(task, backend, tmp_path / "run", n_boot=50, progress=False)
    assert res["failed"] == 4 and res["samples"] == 24
    errors = "\n".join(res["errors"])
    assert "train:6" in errors and "img03.png" in errors and "not found" in errors
    assert "cannot be decoded" in errors
    assert res["metrics"]["overall_acc"]["n"] == 24  # failed samples count, scored 0
    assert load_run(tmp_path / "run")["run"]["counts"]["cache"]["responses"] == 20  # failures never cached


@pytest.mark.parametrize("text, needle", [
    ("name: t\nlayout: vqa-rad\ndata: x.json\nmetrics: [overall_acc]\npromt: '{question}'\n", "unknown key 'promt'"),
    ("name: t\nlayout: vqa-radd\ndata: x.json\n", "unknown layout 'vqa-radd'; allowed values: findings-impression"),
    ("name: t\nlayout: vqa-rad\ndata: x.json\nmetrics: [overal_acc]\n", "unknown metric 'overal_acc'"),
    ("name: t\nlayout: vqa-rad\ndata: x.json\nextract: yes-no\n", "unknown extractor 'yes-no'"),
    ("name: t\nlayout: vqa-rad\ndata: x.json\nsplit: {name: testlik}\n", "unknown split 'testlik'"),
    ("name: t\nlayout: vqa-rad\ndata: x.json\nprobes: {pairs: {}}\n", "unknown probe 'pairs'"),
    ("name: t\nlayout: vqa-rad\n", "key 'data' is required"),
    ("name: t\nlayout: [vqa\n", "cannot be parsed as YAML"),
    ("name: t\nlayout: vqa-rad\ndata: x.json\ngeneration: {max_token: 3}\n", "max_token"),
])
def test_task_file_errors_name_the_key(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(TaskError, match=None) as exc:
        load_task(p)
    assert needle in str(exc.value) and str(p) in str(exc.value)


def test_unknown_task_and_missing_data_are_named(tmp_path):
    with pytest.raises(TaskError, match="shipped: .*vqa-rad-testlike"):
        load_task("vqa-rad-testlik")
    task = load_task(write_task(tmp_path, tmp_path / "nope.json"))
    with pytest.raises(TaskError, match="nope.json not found"):
        task.load_samples()


def test_shipped_tasks_load_and_testlike_matches_the_vqa_split():
    from medweave.evaluate.tasks import builtin_tasks
    from medweave.settings import shared_data_dir

    for path in builtin_tasks().values():
        assert load_task(path).name == path.stem
    data = shared_data_dir() / "vqa-rad" / "trainset.json"
    if not data.is_file():
        pytest.skip(f"shared VQA-RAD data absent ({data})")
    from medweave.vqa import load_vqa
    from medweave.vqa.splits import make_split

    samples = load_task("vqa-rad-testlike").load_samples()
    vqa = load_vqa(data)
    _, held = make_split("testlike", vqa.questions, 0.15, 0)
    assert [s.question for s in samples] == [vqa.questions[i].question for i in held]
    assert all(s.meta["phrase_type"] in ("freeform", "para") for s in samples)


def test_compare_and_report(backend, tiny_set, tmp_path):
    task = load_task(write_task(tmp_path, tiny_set / "train.json", "prompt: '{question}'\n"))
    run_task(task, backend, tmp_path / "a", n_boot=50, progress=False)
    task2 = task.model_copy(update={"prompt": "{question}\nAnswer the question using a single word or phrase."})
    run_task(task2, backend, tmp_path / "b", n_boot=50, progress=False)
    res = compare_runs(str(tmp_path / "a"), str(tmp_path / "b"), n_boot=50)
    assert res["common_samples"] == 24 and res["same_answers"] == 24
    m = res["metrics"]["overall_acc"]
    assert m["value"] == 0 and m["mcnemar"]["p"] == 1.0 and m["mcnemar"]["a_only"] == 0
    with pytest.raises(TaskError, match="not a run folder"):
        compare_runs(str(tmp_path / "a"), str(tmp_path))


def test_probes_against_the_builtin_answerer(backend, tiny_set, tmp_path):
    task = load_task(write_task(tmp_path, tiny_set / "train.json"))
    res = run_task(task, backend, tmp_path / "run", n_boot=50, progress=False,
                   probes=["image", "paired", "prompt", "fewshot"])
    image = {r["variant"]: r for r in res["probes"]["image"]["rows"]}
    assert image["real"]["metrics"]["overall_acc"]["value"] > image["blank"]["metrics"]["overall_acc"]["value"]
    assert image["other_same_organ"]["n"] == 24
    paired = res["probes"]["paired"]
    assert paired["random_pair_acc"] == 0.25 and paired["by_kind"]["organ"]["pairs"] == 12
    prompt = res["probes"]["prompt"]["rows"]
    assert len(prompt) == 7 and all(r["agreement"] == 1.0 for r in prompt)  # the builtin reads the question only
    fewshot = {r["variant"]: r for r in res["probes"]["fewshot"]["rows"]}
    assert set(fewshot) == {"zero-shot", "1 relevant", "1 irrelevant", "3, relevant last", "3, relevant first"}
    recs = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    shots = [r for r in recs if r["variant"] == "probe:fewshot:3, relevant last"][0]
    assert [m["role"] for m in shots["prompt"]] == ["user", "assistant"] * 3 + ["user"]
    info = load_run(tmp_path / "run")["run"]
    assert info["counts"]["cache"]["repeated"] == 0
