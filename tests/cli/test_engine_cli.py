"""`--engine ray` through the real commands (`medweave train`, `medweave evaluate`, `medweave eval run`),
each a subprocess that starts its own local Ray instance (`--num-cpus 2`), against `--engine local`:
the same weights, metrics and harness records. Each Ray run must leave a Ray session in its own
RAY_TMPDIR (proof that the option reached Ray); the local runs must leave none."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from medweave.vqa.testing import tiny_set, tiny_vqa_model  # noqa: F401  (a real VQA model)

CLI = [sys.executable, "-m", "medweave.cli"]

CONFIG = """name = "engine-cli"
[data]
paths = [{data}]
mapping = {mapping}
store = {store}
[cohort]
targets = ["disease"]
covariates = ["age", "sex"]
fractions = [0.5, 0.25, 0.25]
[model]
kind = "sequential"
modalities = ["table", "text"]
hidden = 16
[encoders]
text = "e5-small"
[train]
epochs = 2
batch_size = 8
seed = 1
"""

TASK = """name: tiny
layout: vqa-rad
data: {data}
metrics: [overall_acc, closed_acc, open_acc, open_recall]
"""


def medweave(*args: str, ray_dir: Path) -> dict:
    env = {**os.environ, "RAY_TMPDIR": str(ray_dir)}
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, f"medweave {' '.join(args)}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return json.loads(res.stdout)


def ray_sessions(ray_dir: Path) -> list[Path]:
    return [p for p in ray_dir.rglob("session_*") if p.is_dir() and not p.name.endswith("latest")]


@pytest.fixture
def ray_dirs():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'medweave[ray]')")
    # short paths: Ray's Unix sockets live under RAY_TMPDIR and their paths must stay under 108 bytes
    dirs = {k: Path(tempfile.mkdtemp(prefix=f"mwray-{k}-", dir="/tmp")) for k in ("local", "ray")}
    yield dirs
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_train_evaluate_and_eval_run_on_ray_equal_local(tmp_path, ray_dirs, tiny_set, tiny_vqa_model):
    from medweave.demo import generate_phantom

    m = generate_phantom(tmp_path / "phantom", n_patients=24, seed=5)
    new = generate_phantom(tmp_path / "phantom-new", n_patients=12, seed=6)
    out = {}
    for kind in ("local", "ray"):
        store = tmp_path / f"store-{kind}"  # each its own store: the Ray run ingests on Ray too
        # the same key in every store: the same pseudonyms, so the same case order (and bootstrap draws)
        for s in (store, tmp_path / f"eval-store-{kind}"):
            s.mkdir()
            (s / "secret.key").write_text("5e" * 32)
        cfg = tmp_path / f"{kind}.toml"
        cfg.write_text(CONFIG.format(data=json.dumps(str(m.path("data"))), mapping=json.dumps(str(m.mapping)),
                                     store=json.dumps(str(store))))
        eng = ["--engine", kind] + (["--num-cpus", "2"] if kind == "ray" else [])
        d = ray_dirs[kind]
        train = medweave("train", "--config", str(cfg), "--out", str(tmp_path / f"model-{kind}"), "--json", *eng,
                         ray_dir=d)
        own = medweave("evaluate", "--model", str(tmp_path / f"model-{kind}"), "--split", "all", "--bootstrap", "50",
                       "--json", *eng, ray_dir=d)
        # new data: its encoding runs on the engine given on the command line (the cache has none of it)
        fresh = medweave("evaluate", "--model", str(tmp_path / "model-local"), "--data", str(new.path("data")),
                         "--store", str(tmp_path / f"eval-store-{kind}"), "--bootstrap", "50", "--json", *eng,
                         ray_dir=d)
        (tmp_path / "task.yaml").write_text(TASK.format(data=tiny_set / "train.json"))
        run = medweave("eval", "run", "--task", str(tmp_path / "task.yaml"), "--backend", "builtin",
                       "--model", str(tiny_vqa_model), "--out", str(tmp_path / f"run-{kind}"), "--bootstrap", "50",
                       "--json", "--quiet", *eng, ray_dir=d)
        weights = json.loads((tmp_path / f"model-{kind}" / "config.json").read_text())["weights_sha256"]
        records = [json.loads(line) for line in (tmp_path / f"run-{kind}" / "samples.jsonl").read_text().splitlines()]
        out[kind] = (train, own, fresh, run, weights, records)

    assert not ray_sessions(ray_dirs["local"])
    assert ray_sessions(ray_dirs["ray"]), "no Ray session was started by the --engine ray commands"
    (t_l, own_l, fresh_l, run_l, w_l, rec_l), (t_r, own_r, fresh_r, run_r, w_r, rec_r) = out["local"], out["ray"]
    assert w_l == w_r  # the same weights, to the last bit
    for k in ("epochs_run", "best_valid_loss", "temperatures", "splits"):
        assert t_l[k] == t_r[k], k
    assert own_l["cases"] == own_r["cases"] == 24 and own_l["metrics"] == own_r["metrics"]
    assert fresh_l["cases"] == fresh_r["cases"] == 12 and fresh_l["metrics"] == fresh_r["metrics"]
    assert fresh_l["presence"] == fresh_r["presence"] and not fresh_r["encode_failures"]
    assert run_l["metrics"] == run_r["metrics"] and run_r["samples"] == 24 and not run_r["failed"]
    keep = ("id", "variant", "output", "extracted", "scores", "error", "prompt")
    assert [{k: r[k] for k in keep} for r in rec_l] == [{k: r[k] for k in keep} for r in rec_r]


def test_num_cpus_below_one_is_refused_in_the_options_words(tmp_path):
    res = subprocess.run([*CLI, "evaluate", "--model", str(tmp_path / "none"), "--engine", "ray", "--num-cpus", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "num_cpus 0" in (res.stdout + res.stderr)
