"""`[encode] finetune_blocks` in `medweave train`: the image encoder's tail is fine-tuned on the train
split's pictures only, saved in the model folder (covered by config.json), keys the embedding cache by
its weights, and encodes every picture the saved model sees afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from medweave.config import parse_config
from medweave.demo import PhantomManifest, generate_phantom
from medweave.demo.run import _demo_key, phantom_experiment
from medweave.encode import EmbeddingCache
from medweave.encode.finetune import FinetuneConfig, PictureTargets, finetune
from medweave.encode.loaders import load_item
from medweave.store import Store


def _experiment(manifest, store_dir, blocks: int) -> dict:
    raw = phantom_experiment(manifest, store_dir, "sequential", seed=0)
    raw["model"]["modalities"] = ["table", "image"]
    raw["model"]["hidden"] = 16
    raw["train"] = {"epochs": 3, "patience": 3, "seed": 0, "batch_size": 8}
    raw["encode"] = {"finetune_blocks": blocks, "finetune_epochs": 2, "finetune_augmentations": 1}
    return raw


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from medweave.train.pipeline import train_experiment

    root = tmp_path_factory.mktemp("finetune-train")
    generate_phantom(root / "phantom", n_patients=30, seed=5)
    _demo_key(root / "store", 5)
    manifest = PhantomManifest.load(root / "phantom" / "manifest.json")
    frozen = train_experiment(parse_config(_experiment(manifest, root / "store", 0), "test"), root / "frozen",
                              progress=False)
    cfg = parse_config(_experiment(manifest, root / "store", 1), "test")
    result = train_experiment(cfg, root / "model", progress=False)
    return root, cfg, result, frozen


def _train_pictures(cohort, store_dir):
    """The train split's pictures and their cases' labels, read here from the store."""
    train = cohort.table[cohort.table["split"] == "train"]
    pictures, labels, seen = [], [], set()
    with Store(store_dir) as st:
        for ids, y in zip(train["image_items"], train["disease"]):
            for item_id in ids:
                row = st.con.execute("SELECT * EXCLUDE (labels, meta) FROM items WHERE item_id = ?",
                                     [item_id]).df().to_dict("records")[0]
                if row["content_hash"] not in seen:
                    seen.add(row["content_hash"])
                    pictures.append(load_item(st.root, row))
                    labels.append(int(y))
    return pictures, np.array(labels)


def test_the_tuning_sees_the_train_split_only(tuned):
    root, cfg, result, _ = tuned
    config = json.loads((root / "model" / "config.json").read_text())
    splits = result.cohort.table["split"].to_numpy()
    assert {"train", "valid", "test"} <= set(splits)
    pictures, labels = _train_pictures(result.cohort, root / "store")
    n_all = int(sum(len(ids) for ids in result.cohort.table["image_items"]))
    assert config["finetune"]["heads"]["pictures"] == len(pictures) < n_all
    # The same tuning run on the train split's pictures alone gives the saved weights to the last bit.
    again = finetune(pictures, PictureTargets({"disease": (labels, ["0", "1"])}),
                     FinetuneConfig(blocks_tuned=1, epochs=2, augmentations=1, seed=0))
    assert again.version == config["finetune"]["version"]
    # ... and one that also sees a valid picture does not.
    valid = result.cohort.table[splits == "valid"]
    with Store(root / "store") as st:
        row = st.con.execute("SELECT * EXCLUDE (labels, meta) FROM items WHERE item_id = ?",
                             [list(valid["image_items"].iloc[0])[0]]).df().to_dict("records")[0]
        extra = load_item(st.root, row)
    leaked = finetune(pictures + [extra], PictureTargets({"disease": (np.append(labels, 1), ["0", "1"])}),
                      FinetuneConfig(blocks_tuned=1, epochs=2, augmentations=1, seed=0))
    assert leaked.version != again.version


def test_the_tuned_tail_is_saved_and_versions_the_cache(tuned):
    root, cfg, result, frozen = tuned
    config = json.loads((root / "model" / "config.json").read_text())
    frozen_config = json.loads((root / "frozen" / "config.json").read_text())
    assert (root / "model" / "encoder.safetensors").is_file() and config["encoder_sha256"]
    assert not (root / "frozen" / "encoder.safetensors").exists() and "encoder_sha256" not in frozen_config
    enc, enc0 = config["encoders"]["image"], frozen_config["encoders"]["image"]
    assert enc["name"] == "efficientnet-lite0-ft" and enc["version"] == "1-" + config["finetune"]["version"]
    assert (enc0["name"], enc0["version"]) == ("efficientnet-lite0", "1")
    # The tuned vectors are not the frozen ones, and the cache holds both under their own keys.
    j = result.dataset.modalities.index("image")
    present = result.dataset.mask[:, j]
    a = np.asarray(result.dataset.inputs["image"][np.flatnonzero(present)])
    b = np.asarray(frozen.dataset.inputs["image"][np.flatnonzero(present)])
    assert not np.allclose(a, b, atol=1e-3)
    cache = EmbeddingCache(root / "store-embeddings.duckdb")
    try:
        assert cache.count("efficientnet-lite0-ft") == cache.count("efficientnet-lite0") > 0
    finally:
        cache.close()


def test_a_reloaded_model_encodes_with_its_tuned_encoder_and_predicts_the_same(tuned):
    from medweave.evaluate import evaluate_model
    from medweave.explain import ModelContext
    from medweave.serve.state import image_embedding
    from medweave.train import load_checkpoint, predict_logits

    root, cfg, result, _ = tuned
    model, _ = load_checkpoint(root / "model")
    before = predict_logits(model, result.dataset)["disease"]
    (root / "store-embeddings.duckdb").unlink()  # nothing cached: the reloaded model encodes afresh
    ctx = ModelContext.load(root / "model")
    assert np.allclose(np.nan_to_num(np.asarray(ctx.dataset.inputs["image"][:])),
                       np.nan_to_num(np.asarray(result.dataset.inputs["image"][:])), atol=1e-5)
    assert np.allclose(predict_logits(ctx.model, ctx.dataset)["disease"], before, atol=1e-5)
    res = evaluate_model(root / "model", split="test", n_boot=50, progress=False)
    assert res["metrics"]["disease"]["auroc"]["value"] == res["metrics"]["disease"]["auroc"]["value"]
    # An uploaded picture is compared by the tuned encoder, as the cases' own vectors were made.
    row = int(np.flatnonzero(ctx.dataset.mask[:, ctx.modalities.index("image")])[0])
    case = ctx.cohort.table.iloc[row]
    with Store(root / "store") as st:
        item = st.con.execute("SELECT * EXCLUDE (labels, meta) FROM items WHERE item_id = ?",
                              [list(case["image_items"])[0]]).df().to_dict("records")[0]
        arr = load_item(st.root, item)
    if len(case["image_items"]) == 1:
        assert np.allclose(image_embedding(arr, ctx), ctx.dataset.inputs["image"][row], atol=1e-5)


def test_a_changed_encoder_file_is_refused(tuned, tmp_path):
    from medweave.train import load_checkpoint

    root = tuned[0]
    copy = tmp_path / "model"
    shutil.copytree(root / "model", copy)
    data = bytearray((copy / "encoder.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (copy / "encoder.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="encoder_sha256"):
        load_checkpoint(copy)
    (copy / "encoder.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="encoder.safetensors"):
        load_checkpoint(copy)


def test_finetune_needs_an_image_input_and_a_valid_block_count(tuned, tmp_path):
    from medweave.train.pipeline import PipelineError, train_experiment

    root, cfg, _, _ = tuned
    raw = cfg.model_dump(mode="json")
    raw["model"]["modalities"] = ["table"]
    with pytest.raises(PipelineError, match="no 'image'"):
        train_experiment(parse_config(raw, "test"), tmp_path / "m", progress=False)
    conf = tmp_path / "exp.json"
    raw["model"]["modalities"] = ["table", "image"]
    conf.write_text(json.dumps(raw))
    res = subprocess.run([sys.executable, "-m", "medweave.cli", "train", "--config", str(conf), "--out",
                          str(tmp_path / "m2"), "--finetune-blocks", "17"], capture_output=True, text=True)
    assert res.returncode == 2 and "allowed 0..16" in res.stderr + res.stdout
