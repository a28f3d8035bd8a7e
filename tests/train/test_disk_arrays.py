"""Training and evaluation read the case-level inputs from disk a batch at a time (DiskArray) and give
the model and the predictions that in-memory arrays give, to the last bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medweave.config import parse_config
from medweave.demo import PhantomManifest, generate_phantom
from medweave.demo.run import _demo_key, phantom_experiment
from medweave.encode.arrays import DiskArray


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk-arrays")
    m = generate_phantom(root / "phantom", n_patients=40, seed=4)
    _demo_key(root / "store", 4)
    return root, PhantomManifest.load(root / "phantom" / "manifest.json")


@pytest.mark.parametrize("kind,cv", [("sequential", 0), ("concat", 3)])
def test_disk_and_memory_arrays_train_the_same_model(phantom, kind, cv):
    from medweave.evaluate import evaluate_model
    from medweave.train import load_checkpoint, predict_logits
    from medweave.train.pipeline import train_experiment

    root, manifest = phantom
    raw = phantom_experiment(manifest, root / "store", kind, seed=0)
    raw["train"] = {"epochs": 4, "patience": 4, "seed": 0, "batch_size": 8, "modality_dropout": 0.2,
                    "cv_folds": cv}
    cfg = parse_config(raw, "test")
    disk = train_experiment(cfg, root / f"disk-{kind}", progress=False, arrays_on_disk=True)
    mem = train_experiment(cfg, root / f"mem-{kind}", progress=False, arrays_on_disk=False)
    assert all(isinstance(a, DiskArray) for a in disk.dataset.inputs.values())
    assert not any(isinstance(a, DiskArray) for a in mem.dataset.inputs.values())
    assert not list(root.glob(".store-arrays-*")), "the arrays folder outlives the run"
    for m in mem.dataset.modalities:
        np.testing.assert_array_equal(np.asarray(disk.dataset.inputs[m]), mem.dataset.inputs[m])
    m_disk, _ = load_checkpoint(root / f"disk-{kind}")
    m_mem, c_mem = load_checkpoint(root / f"mem-{kind}")
    sd, sm = m_disk.state_dict(), m_mem.state_dict()
    assert sd.keys() == sm.keys()
    for k in sd:
        assert torch.equal(sd[k], sm[k]), k
    assert disk.fit["history"] == mem.fit["history"] and disk.temperatures == mem.temperatures
    # predictions of the on-disk dataset through its batches equal the in-memory ones
    a, b = predict_logits(m_disk, disk.dataset, batch_size=7), predict_logits(m_mem, mem.dataset, batch_size=7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # evaluate (on-disk inputs) scores exactly the in-memory predictions of its test split
    res = evaluate_model(root / f"disk-{kind}", split="test", n_boot=50, progress=False)
    test = np.flatnonzero(mem.cohort.table["split"].to_numpy() == "test")
    from medweave.evaluate.run import score

    ref = score(m_mem, c_mem, mem.dataset.subset(test), n_boot=50)
    assert res["cases"] == len(test) > 0
    assert res["metrics"] == ref
    assert not list(root.glob(".store-arrays-*"))


def test_multiclass_targets_take_either_spelling_of_a_whole_number():
    """Classes saved as "1.0" (the whole cohort's column held floats) read a split's integer 1, and
    classes saved as "1" read 1.0; a class not there as either spelling is -1."""
    import pandas as pd

    from medweave.cohort import Cohort
    from medweave.fuse import HeadSpec
    from medweave.train.pipeline import targets_for

    cfg = parse_config({"name": "t", "data": {"paths": ["x"], "store": "s"}, "cohort": {"targets": ["grade"]},
                        "model": {"kind": "sequential", "modalities": ["table"]},
                        "heads": [{"name": "grade", "target": "grade", "kind": "multiclass"}]}, "test")
    for values, dtype in (([1, 2, 0, None], object), ([1.0, 2.0, 0.0, None], object), ([1, 2, 0, None], "Int64")):
        c = Cohort(pd.DataFrame({"case_id": list("abcd"), "grade": pd.Series(values, dtype=dtype)}), [], ["grade"])
        for classes in (["1.0", "2.0"], ["1", "2"]):
            got = targets_for(cfg, c, [HeadSpec("grade", "multiclass", 2, classes)])["grade"]
            assert got.tolist() == [0, 1, -1, -1], (values, classes)
    # a binary target the catalog holds as integers (an Int64 column, NA for a missing one)
    binary = parse_config({"name": "t", "data": {"paths": ["x"], "store": "s"}, "cohort": {"targets": ["y"]},
                           "model": {"kind": "sequential", "modalities": ["table"]}}, "test")
    c = Cohort(pd.DataFrame({"case_id": list("abc"), "y": pd.Series([1, None, 0], dtype="Int64")}), [], ["y"])
    got = targets_for(binary, c, [HeadSpec("y", "binary")])["y"]
    assert got[0] == 1 and np.isnan(got[1]) and got[2] == 0
