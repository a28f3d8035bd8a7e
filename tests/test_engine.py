"""The engine switch: the same inputs give the same store (item ids, hashes, blobs, pseudonyms) and the
same embeddings with ``--engine local`` and ``--engine ray`` (a real local Ray instance, 2 CPUs);
without Ray installed, a clear message."""

from __future__ import annotations

import hashlib
import shutil
import sys
import time

import numpy as np
import pytest

from medweave.config import ConfigError, parse_config
from medweave.engine import Engine, EngineError

CFG = {"data": {"paths": ["x"]}, "cohort": {"targets": ["disease"]}, "model": {"modalities": ["image"]}}


def test_engine_names_and_address_are_checked():
    with pytest.raises(EngineError, match="unknown engine 'spark'; allowed values: local, ray"):
        Engine("spark")
    with pytest.raises(EngineError, match="use it with --engine ray"):
        Engine("local", address="10.0.0.1:6379")
    assert Engine("ray", "auto").is_ray and not Engine().is_ray


def test_engine_section_in_configs():
    cfg = parse_config({**CFG, "engine": {"kind": "ray", "address": "auto", "num_cpus": 2}})
    assert cfg.engine.build() == Engine("ray", "auto", 2)
    assert parse_config(CFG).engine.build() == Engine()
    with pytest.raises(ConfigError, match="engine.kind"):
        parse_config({**CFG, "engine": {"kind": "dask"}})
    with pytest.raises(ConfigError, match='set kind = "ray"'):
        parse_config({**CFG, "engine": {"address": "auto"}})
    with pytest.raises(ConfigError, match="unknown key 'engine.workers'"):
        parse_config({**CFG, "engine": {"kind": "ray", "workers": 3}})


def test_ray_absent_is_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray gives: ImportError
    with pytest.raises(EngineError, match=r"needs the Ray package, which is not installed: pip install 'medweave\[ray\]'"):
        Engine("ray").ray()


def test_local_engine_maps_in_order_in_this_process():
    out = list(Engine().map_ordered(lambda shared, a, b: (shared, a * b), [(1, 2), (3, 4)], shared="s"))
    assert out == [("s", 2), ("s", 12)]


def _store_contents(store_dir):
    """Everything that must match: every catalog row (run ids and times aside) and every blob's bytes."""
    from medweave.store import Store

    with Store(store_dir) as st:
        items = st.con.execute("SELECT * EXCLUDE (ingested_at, run_id) FROM items ORDER BY item_id").df()
        patients = st.con.execute("SELECT * EXCLUDE (first_seen) FROM patients ORDER BY patient_id").df()
        studies = st.con.execute("SELECT * FROM studies ORDER BY study_id").df()
        sources = st.con.execute("SELECT * EXCLUDE (run_id, done_at) FROM sources ORDER BY source_id").df()
        blobs = {rel: hashlib.sha256(st.read_blob(rel)).hexdigest()
                 for rel in items["blob"].dropna()}
    return items, patients, studies, sources, blobs


@pytest.mark.slow
def test_local_and_ray_give_the_same_store_and_embeddings(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'medweave[ray]')")
    from medweave.cohort import build_cohort
    from medweave.demo import generate_phantom
    from medweave.encode import EmbeddingCache, encode_cohort
    from medweave.ingest import ingest
    from medweave.store import Store

    manifest = generate_phantom(tmp_path / "phantom", n_patients=16, seed=3)
    stores = {"local": tmp_path / "store-local", "ray": tmp_path / "store-ray"}
    stores["local"].mkdir()
    stores["ray"].mkdir()
    (stores["local"] / "secret.key").write_text(hashlib.sha256(b"engine-test").hexdigest())
    shutil.copy(stores["local"] / "secret.key", stores["ray"] / "secret.key")
    engines = {"local": Engine(), "ray": Engine("ray", num_cpus=2)}
    reports, embeddings, seconds = {}, {}, {}
    try:
        for name, engine in engines.items():
            t0 = time.perf_counter()
            with Store(stores[name], write=True) as st:
                reports[name] = ingest([manifest.path("data")], st, options={"mapping": str(manifest.mapping)},
                                       progress=False, workers=1, engine=engine)
            with Store(stores[name]) as st:
                cohort = build_cohort(st, case_level="patient", targets=["disease"], seed=0)
                cache = EmbeddingCache(tmp_path / f"emb-{name}.duckdb")
                try:
                    embeddings[name] = encode_cohort(cohort, st, {"text": "e5-small"}, cache,
                                                     modalities=["image", "text", "signal"], progress=False,
                                                     engine=engine)
                finally:
                    cache.close()
            seconds[name] = time.perf_counter() - t0
    finally:
        if ray.is_initialized():
            ray.shutdown()
    local, remote = reports["local"], reports["ray"]
    assert local.ok and remote.ok, (local.errors, remote.errors)
    assert local.n_ok > 30 and local.n_derived == remote.n_derived
    assert (local.n_ok, local.n_items_added, local.per_adapter) == (remote.n_ok, remote.n_items_added, remote.per_adapter)
    a, b = _store_contents(stores["local"]), _store_contents(stores["ray"])
    assert len(a[0]) == local.n_items_added and len(a[4]) > 20  # items and blobs to compare
    for x, y in zip(a[:4], b[:4]):
        assert x.astype(str).equals(y.astype(str))
    assert a[4] == b[4]
    el, er = embeddings["local"], embeddings["ray"]
    assert el.case_ids == er.case_ids and not el.failures and not er.failures
    for m in ("image", "text", "signal"):
        assert el.mask[m].sum() > 3 and np.array_equal(el.mask[m], er.mask[m])
        np.testing.assert_array_equal(el.arrays[m], er.arrays[m])  # the very same floats
    print(f"local {seconds['local']:.1f} s, ray {seconds['ray']:.1f} s (ray start included)")


from medweave.vqa.testing import tiny_set, tiny_vqa_model  # noqa: E402,F401  (a real VQA model)

HARNESS_TASK = """name: tiny
layout: vqa-rad
data: {data}
metrics: [overall_acc, closed_acc, open_acc, open_recall]
"""


@pytest.mark.slow
def test_local_and_ray_give_the_same_predictions_evaluation_and_harness_run(tmp_path, tiny_set, tiny_vqa_model):
    """Batch prediction (Ray actors each loading the model folder once), ``evaluate`` with a Ray
    engine, and a harness run whose requests Ray actors answer (each building the backend once) give
    what the local engine gives: the same logits to the last bit, the same metrics, the same records."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'medweave[ray]')")
    from medweave.config import parse_config
    from medweave.demo import generate_phantom
    from medweave.evaluate import evaluate_model
    from medweave.evaluate.harness import load_run, run_task
    from medweave.evaluate.run import predict_batch
    from medweave.evaluate.tasks import load_task
    from medweave.generate import load_backend
    from medweave.train import load_checkpoint
    from medweave.train.pipeline import train_experiment

    manifest = generate_phantom(tmp_path / "phantom", n_patients=24, seed=5)
    store = tmp_path / "store"
    store.mkdir()
    (store / "secret.key").write_text("5e" * 32)
    cfg = parse_config({
        "name": "engine", "data": {"paths": [str(manifest.path("data"))], "mapping": str(manifest.mapping),
                                   "store": str(store)},
        "cohort": {"targets": ["disease"], "covariates": ["age", "sex"], "fractions": [0.5, 0.25, 0.25]},
        "model": {"kind": "sequential", "modalities": ["table", "text"], "hidden": 16},
        "encoders": {"text": "e5-small"},
        "train": {"epochs": 2, "batch_size": 8, "seed": 1}})
    trained = train_experiment(cfg, tmp_path / "model", progress=False)
    model, _ = load_checkpoint(tmp_path / "model")
    ray_engine = Engine("ray", num_cpus=2)
    (tmp_path / "task.yaml").write_text(HARNESS_TASK.format(data=tiny_set / "train.json"))
    task = load_task(tmp_path / "task.yaml")
    try:
        ds = trained.dataset
        assert len(ds) == 24
        local = predict_batch(model, ds, None, batch_size=4)
        remote = predict_batch(model, ds, ray_engine, tmp_path / "model", chunk=8, batch_size=4)  # 3 chunks
        assert set(local) == set(remote) == {"disease"}
        np.testing.assert_array_equal(local["disease"], remote["disease"])

        ev_local = evaluate_model(tmp_path / "model", split="all", n_boot=50, progress=False)
        ev_ray = evaluate_model(tmp_path / "model", split="all", n_boot=50, progress=False, engine=ray_engine)
        assert ev_local["cases"] == 24 and ev_local["metrics"] == ev_ray["metrics"]

        with load_backend("builtin", model=str(tiny_vqa_model)) as backend:
            res_local = run_task(task, backend, tmp_path / "run-local", n_boot=50, progress=False)
            res_ray = run_task(task, backend, tmp_path / "run-ray", n_boot=50, progress=False, engine=ray_engine,
                               remote=("builtin", {"model": str(tiny_vqa_model)}))
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert res_local["metrics"] == res_ray["metrics"]
    a, b = load_run(tmp_path / "run-local"), load_run(tmp_path / "run-ray")
    assert b["run"]["counts"]["sent"] == 24 and b["run"]["counts"]["failed"] == 0
    keep = ("id", "variant", "output", "extracted", "scores", "error", "prompt")
    assert [{k: r[k] for k in keep} for r in a["records"]] == [{k: r[k] for k in keep} for r in b["records"]]
