"""benchmarks/vqa_tune.py, the search that chose VqaConfig's training defaults: one inner fit (on
``medweave.vqa.splits.inner_split``, tested in test_splits.py) is scored at every memory weight, its settings parse and name
themselves strictly, and VqaConfig refuses training choices out of range, naming the field and value."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from medweave.vqa.data import load_vqa
from medweave.vqa.model import VqaConfig
from medweave.vqa.splits import inner_split

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tune():
    spec = importlib.util.spec_from_file_location("vqa_tune", ROOT / "benchmarks" / "vqa_tune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_inner_fit_is_scored_at_every_memory_weight(tiny_set, tune, tmp_path):
    from medweave.vqa.features import open_cache
    from medweave.vqa.pipeline import CACHE_NAME, embed_set

    vqa = load_vqa(tiny_set)
    with open_cache(tmp_path / CACHE_NAME) as cache:
        img, qe = embed_set(vqa, cache, ("efficientnet-lite0",))
        rec = tune.fit_and_score(vqa, img, qe, cache, {"epochs": 30}, 0, 1, 1)
    _, itr, ihe = inner_split(vqa.questions, 0)
    assert rec["key"] == "epochs=30" and rec["inner_held"] == len(ihe) and rec["inner_train"] == len(itr)
    assert set(rec["memory"]) == {"0.25", "0.5", "0.75"}
    for m in rec["memory"].values():
        assert m["n"] == len(ihe) == m["closed_n"] + m["open_n"]
        assert 0 <= m["right"] == m["closed_right"] + m["open_right"] <= m["n"]
    # the record reads back and counts in the totals
    path = tmp_path / "tune.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    t = tune.totals(tune.load_results(path), "epochs=30", [0])
    assert t["right"] == rec["memory"]["0.5"]["right"] and tune.totals(tune.load_results(path), "default", [0]) is None


def test_settings_parse_name_and_search(tune):
    assert tune.key_of({}) == "default" and tune.key_of({"epochs": 60}) == "default"
    assert tune.key_of({"lr": 5e-4, "hidden": 1024}) == "hidden=1024,lr=0.0005"
    assert tune.parse_setting("hidden=1024,lr=0.0005") == {"hidden": 1024, "lr": 5e-4}
    with pytest.raises(ValueError, match="'batch' is not searched"):
        tune.parse_setting("batch=64")
    with pytest.raises(ValueError, match="epochs: value 70 is off its grid"):
        tune.parse_setting("epochs=70")
    pass1 = tune.pass1_settings(list(tune.GRID))
    assert pass1[0] == {} and len(pass1) == 1 + sum(len(g) - 1 for g in tune.GRID.values())
    assert tune.pass2_settings({}) == []
    assert tune.pass2_settings({"epochs": 100, "weight_decay": 0.1}) == [
        {"epochs": 100, "weight_decay": 0.1}, {"weight_decay": 0.1}, {"epochs": 100}]


def _record(key, seed, right):
    m = {"right": right, "closed_right": right, "open_right": 0, "n": 100, "closed_n": 100, "open_n": 0}
    return {"key": key, "seed": seed, "fit_s": 1.0, "memory": {"0.25": m, "0.5": m, "0.75": m}}


def test_pass1_winners_keep_the_default_on_a_tie(tune):
    results = {}
    for key, right in [("default", 50), ("epochs=30", 50), ("epochs=100", 49), ("hidden=256", 52),
                       ("hidden=1024", 51)]:
        for seed in (0, 1):
            results[(key, seed)] = _record(key, seed, right)
    winners, missing = tune.pass1_winners(results, [0, 1])
    assert winners == {"hidden": 256} and "epochs" not in missing and "dropout" in missing


@pytest.mark.parametrize("field, value", [("epochs", 0), ("hidden", 2.5), ("batch_size", True), ("lr", 0.0),
                                          ("weight_decay", -0.1), ("dropout", 1.0), ("image_dropout", -0.2),
                                          ("label_smoothing", "0.1"), ("fact_weight", -1.0),
                                          ("memory_weight", 1.5), ("seeds", 0)])
def test_config_refuses_training_choices_out_of_range(field, value):
    with pytest.raises(ValueError, match=rf"^{field} is {value!r}; allowed values: "):
        VqaConfig(**{field: value})


def test_config_takes_every_grid_value(tune):
    for name, grid in tune.GRID.items():
        for v in grid:
            assert getattr(VqaConfig(**{name: v}), name) == v
    for w in tune.ANSWER_TIME["memory_weight"]:
        VqaConfig(memory_weight=w)
