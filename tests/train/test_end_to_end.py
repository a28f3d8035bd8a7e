"""`medweave train` and `medweave evaluate` as real subprocesses, on phantom files and on NIH images:
a trained model evaluates on a new folder with the layout of its training data."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medweave.demo import generate_phantom

CLI = [sys.executable, "-m", "medweave.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=900)
    return res


def toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"


@pytest.mark.slow
def test_train_then_evaluate_phantom_and_new_folder(tmp_path):
    m = generate_phantom(tmp_path / "ph", n_patients=120, seed=3)
    # A fixed pseudonymisation key: patients' pseudonyms, and with them the hashed patient splits, are
    # the same on every run. With a fresh random key (a new store's default) each run drew another
    # split of these 120 patients, and on some draws the model stopped on a 24-patient valid split at
    # its first epochs (2 batches an epoch) and scored near chance on the test split: the failures
    # seen only in some full-suite runs (test AUROC 0.31), not an order effect.
    store = tmp_path / "store"
    store.mkdir()
    (store / "secret.key").write_text("5e" * 32)
    config = tmp_path / "exp.toml"
    config.write_text(f"""
name = "e2e"
[data]
paths = {toml_list([m.path("data")])}
mapping = {json.dumps(str(m.mapping))}
store = {json.dumps(str(store))}
[cohort]
targets = ["disease"]
covariates = ["age", "sex"]
fractions = [0.6, 0.2, 0.2]
[model]
kind = "sequential"
modalities = ["table", "image", "text", "signal"]
hidden = 32
[train]
epochs = 30
batch_size = 16
seed = 1
""")
    out = tmp_path / "model"
    res = run("train", "--config", str(config), "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["epochs_run"] >= 1 and "disease" in summary["temperatures"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["architecture"]["kind"] == "sequential" and saved["code_version"]
    assert set(saved["encoders"]) == {"image", "text", "signal"}
    assert saved["encoders"]["image"]["name"] == "efficientnet-lite0"
    assert saved["cohort"]["cases"] == 120 and saved["tabular"]["numeric"]

    ev = run("evaluate", "--model", str(out), "--json", "--bootstrap", "100")
    assert ev.returncode == 0, ev.stderr[-2000:]
    first = json.loads(ev.stdout)
    auroc = first["metrics"]["disease"]["auroc"]
    assert first["split"] == "test" and auroc["value"] > 0.7 and auroc["lo"] <= auroc["value"] <= auroc["hi"]
    again = json.loads(run("evaluate", "--model", str(out), "--json", "--bootstrap", "100").stdout)
    assert again["metrics"] == first["metrics"], "evaluation of a saved model is reproducible"

    flipped = json.loads(run("evaluate", "--model", str(out), "--json", "--bootstrap", "50",
                             "--missing", "mnar:image:0=1,1=0").stdout)
    n_neg = flipped["cases"] - flipped["metrics"]["disease"]["positives"]["value"]
    assert flipped["presence"]["image"] <= flipped["cases"] - n_neg + 1

    new = generate_phantom(tmp_path / "ph-new", n_patients=40, seed=9)
    ev_new = run("evaluate", "--model", str(out), "--data", str(new.path("data")), "--json", "--bootstrap", "50")
    assert ev_new.returncode == 0, ev_new.stderr[-2000:]
    res_new = json.loads(ev_new.stdout)
    assert res_new["split"] == "all" and res_new["cases"] == 40
    assert res_new["metrics"]["disease"]["auroc"]["value"] > 0.6

    bad = run("evaluate", "--model", str(out), "--missing", "often:image")
    assert bad.returncode == 2 and "mcar, mar, mnar" in bad.stderr


def _nih_subset(src: Path, dest: Path, rows: list[dict], split_of) -> None:
    """Copy some NIH images into `<split>/<label>/` with the metadata rows they need."""
    names = set()
    for r in rows:
        split, label, path = split_of(r)
        (dest / split / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / split / label / path.name)
        names.add(path.name)
    with open(src / "Data_Entry_2017_v2020_subset.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        keep = [r for r in reader if r["Image Index"] in names]
        fields = reader.fieldnames
    with open(dest / "Data_Entry_2017_v2020_subset.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(keep)


@pytest.mark.slow
def test_nih_model_evaluates_on_a_new_folder_with_the_same_layout(tmp_path, shared_data):
    src = shared_data / "nih-cxr14-800"
    files = [(split, label, p) for split in ("train", "valid") for label in ("0_normal", "1_abnormal")
             for p in sorted((src / split / label).glob("*.png"))]
    train_files = [f for f in files if f[0] == "train"][::5] + [f for f in files if f[0] == "valid"][::6]
    test_files = [f for f in files if f[0] == "valid"][1::6]
    _nih_subset(src, tmp_path / "nih-train", train_files, lambda f: f)
    _nih_subset(src, tmp_path / "nih-test", test_files, lambda f: ("test", f[1], f[2]))
    cfg = (Path(__file__).resolve().parents[2] / "configs" / "nih-cxr14.toml").read_text()
    cfg = cfg.replace('paths = ["${MEDWEAVE_DATA}/nih-cxr14-800"]', f'paths = ["{tmp_path / "nih-train"}"]')
    cfg = cfg.replace("epochs = 80", "epochs = 15")
    (tmp_path / "nih.toml").write_text(cfg)
    res = run("train", "--config", str(tmp_path / "nih.toml"), "--out", str(tmp_path / "m"), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    ev = run("evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "nih-test"), "--json",
             "--bootstrap", "50")
    assert ev.returncode == 0, ev.stderr[-2000:]
    out = json.loads(ev.stdout)
    assert out["cases"] == len(test_files) and out["presence"]["image"] == len(test_files)
    assert out["metrics"]["abnormal"]["n"]["value"] == len(test_files)
    assert 0.0 <= out["metrics"]["abnormal"]["auroc"]["value"] <= 1.0
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["training"]["cv_folds"] == 5 and 1 <= saved["training"]["cv_epochs"] <= 15
    own = run("evaluate", "--model", str(tmp_path / "m"), "--split", "valid", "--json")
    assert own.returncode == 2 and "trained on train + valid" in own.stderr  # no scoring on what it saw
