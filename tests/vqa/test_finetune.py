"""Fine-tuning the picture encoder: radiology-safe augmentation, image-only heads from the answers, the
fine-tuned tail saved with the model and versioned in the embedding cache; and the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from medweave.encode.finetune import FT_NAME, FinetuneConfig, FineTunedLite0, augment, build_tail, state_hash
from medweave.vqa.baselines import plain_mlp, question_only
from medweave.vqa.data import load_vqa
from medweave.vqa.features import IMAGE_ENCODERS, embed_image_files, open_cache
from medweave.vqa.model import Answerer, VqaConfig
from medweave.vqa.pipeline import CACHE_NAME, answer_set, train_vqa
from medweave.vqa.testing import picture
from medweave.vqa.tuning import picture_targets


def test_augment_keeps_left_and_right():
    """No flip: a blob on the left stays on the left in every augmented copy (crops and rotations are small)."""
    rng = np.random.default_rng(0)
    cfg = FinetuneConfig()
    left = picture("left", "CHEST", 0)
    copies = [augment(left, rng, cfg) for _ in range(20)]
    assert all(c.shape == (3, 224, 224) and c.dtype == np.float32 for c in copies)
    assert all(c[0, :, :112].mean() > c[0, :, 112:].mean() + 0.3 for c in copies)
    assert not np.allclose(copies[0], copies[1])  # the copies differ


def test_picture_targets_from_answers(tiny_set):
    vqa = load_vqa(tiny_set)
    names, targets = picture_targets(vqa, min_pictures=1)
    y, classes = targets.single["organ"]
    assert classes == ["CHEST", "HEAD"] and len(y) == len(names) == 12
    assert [classes[i] for i in y[:4]] == ["CHEST", "CHEST", "HEAD", "HEAD"]  # img00..03 as written
    assert sorted(targets.multi_names) == ["left", "right"]
    col = targets.multi_names.index("left")
    assert targets.multi[:, col].tolist() == [1.0 if i % 2 == 0 else 0.0 for i in range(12)]


def test_tail_version_is_its_weights():
    tail = build_tail(1)
    state = {k: v.detach().numpy().copy() for k, v in tail.state_dict().items()}
    enc = FineTunedLite0(state, 1)
    moved = {k: v + (1e-3 if k.endswith("conv_head.weight") else 0) for k, v in state.items()}
    assert enc.name == FT_NAME and enc.version == "1-" + state_hash(state)
    assert FineTunedLite0(moved, 1).version != enc.version


def test_finetuned_model_saved_and_versioned(tiny_set, tmp_path):
    """A fine-tuned model: its tail in weights.safetensors, its picture vectors cached under its own
    version beside the frozen ones, the same answers after loading, and a different picture embedding
    from the frozen encoder's (the tail learned)."""
    out = tmp_path / "model"
    model, meta = train_vqa(tiny_set, out, VqaConfig(seeds=1, epochs=30, finetune_blocks=1, finetune_epochs=3,
                                                     finetune_augmentations=1))
    assert meta["finetune"]["version"] and len(meta["finetune"]["losses"]) == 3
    enc = model.image_encoders()[0]
    assert isinstance(enc, FineTunedLite0) and model.image_encoders()[1] == IMAGE_ENCODERS[1]
    loaded = Answerer.load(out)
    assert loaded.image_encoders()[0].version == enc.version
    vqa = load_vqa(tiny_set)
    with open_cache(out / CACHE_NAME) as cache:
        assert cache.count(FT_NAME) == 12  # every training picture, under the tuned version
        a = [p.answer for p in answer_set(model, vqa, cache)]
        b = [p.answer for p in answer_set(loaded, vqa, cache)]
        tuned = embed_image_files([vqa.image_path("img00.png")], cache, loaded.image_encoders())
        frozen = embed_image_files([vqa.image_path("img00.png")], cache)
    assert a == b
    assert not np.allclose(tuned[0, :1280], frozen[0, :1280], atol=1e-4)
    np.testing.assert_allclose(tuned[0, 1280:], frozen[0, 1280:], atol=1e-5)  # the 320 view stays frozen


def test_baselines_learn_what_they_can_see():
    rng = np.random.default_rng(0)
    n = 200
    side = rng.integers(0, 2, n)
    img = np.concatenate([rng.normal(0, 1, (n, 8)) + 3 * side[:, None], rng.normal(0, 1, (n, 8))], axis=1)
    q = np.tile(np.eye(4)[0], (n, 1)).astype(np.float32)
    answers = ["left" if s else "right" for s in side]
    pred = plain_mlp(img[:150], q[:150], answers[:150], img[150:], q[150:], epochs=30)
    assert np.mean([p == a for p, a in zip(pred, answers[150:])]) > 0.9
    # the question-only guess cannot see the side: it says the majority of the nearest questions
    guess = question_only(q[:150], answers[:150], q[150:], k=150)
    majority = max(set(answers[:150]), key=answers[:150].count)
    assert set(guess) == {majority}


def test_one_view_reads_the_224_encoder_only(tiny_set, tmp_path):
    model, _ = train_vqa(tiny_set, tmp_path / "m", VqaConfig(seeds=1, epochs=5, views=1))
    assert model.image_encoders() == ["efficientnet-lite0"] and model.mem_img.shape[1] == 1280
    vqa = load_vqa(tiny_set)
    with open_cache(tmp_path / "m" / CACHE_NAME) as cache:
        assert cache.count("efficientnet-lite0-320") == 0  # the 320 view is never encoded
        a = [p.answer for p in answer_set(model, vqa, cache)]
        b = [p.answer for p in answer_set(Answerer.load(tmp_path / "m"), vqa, cache)]
    assert a == b


def test_views_must_be_one_or_two():
    with pytest.raises(ValueError, match="views is 3"):
        VqaConfig(views=3)


def test_plain_mlp_reads_a_question_at_the_scale_e5_gives_it():
    # L2-normalised question vectors (small per-dimension spread, as e5's) beside 32 standardised
    # picture dimensions that carry nothing: the answer is in the question alone, and the baseline must
    # find it (with the question left raw it scored 0.81 here)
    rng = np.random.default_rng(1)
    n = 300
    kind = rng.integers(0, 3, n)
    q = rng.normal(0, 1, (n, 32)) + 8 * np.eye(32)[kind]
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    img = rng.normal(0, 1, (n, 32)).astype(np.float32)
    answers = [["yes", "no", "axial"][k] for k in kind]
    pred = plain_mlp(img[:200], q[:200], answers[:200], img[200:], q[200:], views=1, epochs=30)
    assert np.mean([p == a for p, a in zip(pred, answers[200:])]) > 0.9


def test_tune_plain_mlp_chooses_on_the_inner_split_only():
    from medweave.vqa.baselines import MlpSettings, tune_plain_mlp

    rng = np.random.default_rng(2)
    n = 240
    side = rng.integers(0, 2, n)
    img = (rng.normal(0, 1, (n, 16)) + 2 * side[:, None]).astype(np.float32)
    q = np.tile(np.eye(4)[0], (n, 1)).astype(np.float32)
    answers = ["left" if s else "right" for s in side]
    inner = (np.arange(0, 180), np.arange(180, 240))
    best, grid = tune_plain_mlp(img, q, answers, inner, views=1, batch_sizes=(16, 64), lrs=(1e-3,),
                                weight_decays=(1e-2,), epochs=(1, 5))
    assert len(grid) == 4 and isinstance(best, MlpSettings)
    top = max(r["inner_acc"] for r in grid)
    assert top > 0.9
    chosen = next(r for r in grid if (r["epochs"], r["batch_size"]) == (best.epochs, best.batch_size))
    assert chosen["inner_acc"] == top
    # the first row with the best accuracy wins (grid order)
    assert chosen is next(r for r in grid if r["inner_acc"] == top)
    with pytest.raises(ValueError, match="inner split has 0 fit"):
        tune_plain_mlp(img, q, answers, (np.arange(0), np.arange(10)), views=1)


def test_question_type_probs_are_the_ensemble_mean_over_the_question_types(tiny_set, tmp_path):
    # 40 epochs (as the CLI fixture): the tiny set has two distinct questions, which standardisation
    # (question_scale) makes antipodal, so its linear type heads need longer than 5 epochs to put both in POS
    model, _ = train_vqa(tiny_set, tmp_path / "m", VqaConfig(seeds=2, epochs=40, views=1))
    vqa = load_vqa(tiny_set)
    with open_cache(tmp_path / "m" / CACHE_NAME) as cache:
        from medweave.vqa.pipeline import embed_set

        img, qe = embed_set(vqa, cache, model.image_encoders())
    p = model.question_type_probs(img, qe)
    assert p.shape == (len(qe), len(model.qtypes))
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    # the heads learned the training questions' types
    from medweave.vqa.data import main_question_type

    truth = [model.qtypes.index(main_question_type(q.question_type)) for q in vqa.questions]
    assert np.mean(p.argmax(1) == np.array(truth)) > 0.5
