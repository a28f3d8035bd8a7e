"""The picture gate (``medweave.vqa.gate``): a real trained tiny answerer abstains on a blank and a
noise picture, answers real ones, saves its calibration, and a model saved before the gate answers as
before with the gate said to be off."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from medweave.evaluate.vqa import blank_image, evaluate_vqa, noise_image, run_probes
from medweave.vqa.data import load_vqa
from medweave.vqa.features import open_cache
from medweave.vqa.gate import GATE_VERSION, REASON, calibrate, unreadable
from medweave.vqa.model import Answerer
from medweave.vqa.pipeline import CACHE_NAME, ask
from medweave.vqa.testing import picture


def _l2(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_calibration_is_the_smaller_of_the_pair_median_and_the_leave_one_out_floor():
    rng = np.random.default_rng(0)
    centre = _l2(rng.normal(size=(1, 64)))
    tight = _l2(centre + 0.05 * rng.normal(size=(40, 64)))  # alike pictures: the pair median decides
    gate = calibrate(np.concatenate([tight, tight[:5]]))  # a row per question: duplicates count once
    s = tight @ tight.T
    pair = np.median(s[np.triu_indices(40, 1)])
    np.fill_diagonal(s, -np.inf)
    loo = s.max(1)
    floor = loo.min() - 0.5 * (np.median(loo) - loo.min())
    assert gate["pictures"] == 40 and gate["version"] == GATE_VERSION
    assert gate["pair_median"] == pytest.approx(pair, abs=1e-5) and gate["loo_floor"] == pytest.approx(floor, abs=1e-5)
    assert gate["threshold"] == pytest.approx(min(pair, floor), abs=1e-6) and gate["threshold"] < loo.min()
    # every training picture passes its own gate; an unrelated direction does not
    assert not unreadable((tight @ tight.T).max(1), gate).any()
    assert unreadable((_l2(rng.normal(size=(5, 64))) @ tight.T).max(1), gate).all()
    spread = _l2(rng.normal(size=(40, 64)))  # far-apart pictures: the floor under the least typical decides
    g2 = calibrate(spread)
    assert g2["threshold"] == pytest.approx(min(g2["pair_median"], g2["loo_floor"]))
    assert calibrate(tight[:1]) == {} and not unreadable(np.array([0.0]), {}).any()


def test_pixel_statistics_catch_a_constant_and_a_noise_picture_the_embedding_alone_may_pass():
    from medweave.vqa.gate import pixel_stats, reason

    real = [picture(side, "CHEST", i) for i, side in enumerate(("left", "right") * 4)]
    st = np.stack([pixel_stats(a) for a in real])
    assert (st[:, 1] > 0.8).all() and (st[:, 0] > 20).all()
    assert pixel_stats(np.full((50, 60), 77, np.uint8)).tolist() == [0.0, 0.0]
    assert abs(pixel_stats(noise_image(0))[1]) < 0.05  # independent pixels do not correlate
    assert pixel_stats(real[0] // 8)[0] == pytest.approx(st[0, 0], rel=0.05)  # a faint picture is windowed first
    rng = np.random.default_rng(0)
    emb = _l2(rng.normal(size=(1, 16)) + 0.05 * rng.normal(size=(8, 16)))
    gate = calibrate(emb, st)
    px = gate["pixel"]
    assert px["sd_threshold"] == pytest.approx(0.5 * st[:, 0].min()) and px["corr_threshold"] == pytest.approx(0.5 * st[:, 1].min())
    near = np.ones(3)  # as alike as a training picture by the embedding
    probe = np.stack([pixel_stats(noise_image(1)), pixel_stats(np.zeros((40, 40), np.uint8)), st[3]])
    assert unreadable(near, gate, probe).tolist() == [True, True, False]
    assert not unreadable(near, gate).any()  # without the pixels, the embedding alone decides
    assert "correlate" in reason(1.0, gate, probe[0]) and "intensity sd" in reason(1.0, gate, probe[1])
    v1 = {k: v for k, v in gate.items() if k != "pixel"} | {"version": 1}  # a calibration saved before the pixels
    assert not unreadable(near, v1, probe).any()


def _png(arr, path):
    Image.fromarray(arr).save(path)
    return path


def test_tiny_answerer_abstains_on_blank_and_noise_and_answers_real_pictures(tiny_model, tiny_set, tmp_path):
    model = Answerer.load(tiny_model)
    assert model.picture_gate["version"] == GATE_VERSION and model.gate_status().startswith("on:")
    assert model.picture_gate["pixel"]["corr_threshold"] > 0.3  # calibrated on the training pictures' pixels
    question = "Which side is the opacity on?"
    with open_cache(tiny_model / CACHE_NAME) as cache:
        for name, arr in (("blank", blank_image()), ("grey", np.full((96, 96), 77, np.uint8)),
                          ("noise", noise_image(3))):
            res = ask(model, _png(arr, tmp_path / f"{name}.png"), question, cache)
            assert res["abstained"] and res["answer"] == "" and res["probability"] == 0.0, name
            assert res["reason"].startswith(REASON) and res["nearest_picture_cos"] < model.picture_gate["threshold"]
        # a training picture, and new pictures drawn like the training ones (never seen), are answered
        res = ask(model, tiny_set / "images" / "img00.png", question, cache)
        assert not res["abstained"] and res["answer"] == "left" and "reason" not in res
        for seed, side in ((100, "left"), (101, "right")):
            res = ask(model, _png(picture(side, "CHEST", seed), tmp_path / f"new{seed}.png"), question, cache)
            assert not res["abstained"] and res["answer"] == side, (seed, res)


def test_the_gate_is_saved_and_a_model_saved_before_it_answers_with_the_gate_off(tiny_model, tmp_path):
    config = json.loads((tiny_model / "config.json").read_text())
    fitted = Answerer.load(tiny_model)
    assert config["picture_gate"] == fitted.picture_gate and config["picture_gate"]["threshold"] > 0
    old = tmp_path / "old-model"
    shutil.copytree(tiny_model, old)
    del config["picture_gate"]
    (old / "config.json").write_text(json.dumps(config))
    model = Answerer.load(old)
    assert model.picture_gate == {} and model.gate_status().startswith("off:")
    with open_cache(old / CACHE_NAME) as cache:
        res = ask(model, _png(blank_image(), tmp_path / "blank.png"), "Which side is the opacity on?", cache)
    assert not res["abstained"] and res["answer"] in ("left", "right") and res["picture_gate"].startswith("off:")
    config["picture_gate"] = {"version": GATE_VERSION + 1, "threshold": 0.5}
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="picture_gate"):
        Answerer.load(old)


def test_probes_and_evaluate_count_abstentions(tiny_model, tiny_set):
    model = Answerer.load(tiny_model)
    vqa = load_vqa(tiny_set / "train.json")
    with open_cache(tiny_model / CACHE_NAME) as cache:
        gated = run_probes(model, vqa, cache, n_boot=10)["ablation"]
        plain = run_probes(model, vqa, cache, n_boot=10, gate=False)["ablation"]
    n = len(vqa.questions)
    for kind in ("blank", "noise"):
        assert gated[kind]["abstained"] == {"n": n, "of": n, "share": 1.0}
        assert gated[kind]["open_acc"]["value"] == 0.0 and gated[kind]["overall_acc"]["value"] == 0.0
        assert plain[kind]["abstained"]["n"] == 0
    assert plain["blank"]["overall_acc"]["value"] > 0  # without the gate the blank picture gets yes/no guesses right
    assert gated["real"]["abstained"]["n"] == 0 and gated["real"]["overall_acc"] == plain["real"]["overall_acc"]
    res = evaluate_vqa(tiny_model, tiny_set / "train.json", n_boot=10)
    assert res["abstained"] == {"n": 0, "of": n, "share": 0.0} and res["picture_gate"].startswith("on:")
