"""The answer decoder (``VqaConfig.decoder``, ``medweave.vqa.decoder``): it writes answers that no
training question had, its gate is chosen on the training side only, it is saved and loaded with the
model, it never answers a question that is yes/no in form, and a bad option is a clear error."""

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from medweave.vqa.decoder import gate_answers, yes_no_form
from medweave.vqa.model import Answerer, VqaConfig
from medweave.vqa.pipeline import CACHE_NAME, answer_set, train_vqa
from medweave.vqa.data import load_vqa
from medweave.vqa.features import open_cache
from medweave.vqa.pipeline import embed_set

SIDES = {"left": slice(8, 36), "middle": slice(34, 62), "right": slice(60, 88)}
ORGANS = ("chest", "head", "abdomen")
HELD = ("right", "head")  # the one combination no training answer names


def _picture(side: str, organ: str, seed: int) -> np.ndarray:
    """A grey square with a bright blob at one of three places; head pictures have bars at the top and
    bottom, abdomen pictures at the left and right edges."""
    a = (30 + np.random.default_rng(seed).integers(0, 20, (96, 96))).astype(np.uint8)
    a[34:62, SIDES[side]] = 230
    if organ == "head":
        a[2:8, :], a[-8:-2, :] = 200, 200
    elif organ == "abdomen":
        a[:, 2:8], a[:, -8:-2] = 200, 200
    return a


def _composed_set(folder):
    """The open question's answer names the side the question asks about and the organ the picture
    shows ("left chest"); training holds eight of the nine combinations, so each word is seen with
    several others, but "right head" is never an answer. Every picture also has a closed question."""
    (folder / "images").mkdir(parents=True)
    recs = []
    i = 0
    for side in SIDES:
        for organ in ORGANS:
            for k in range(4):
                name = f"img{i:02d}.png"
                Image.fromarray(_picture(side, organ, i)).save(folder / "images" / name)
                held = (side, organ) == HELD
                recs.append({"qid": len(recs), "image_name": name, "question": f"Where is the {side} sided opacity?",
                             "answer": f"{side} {organ}", "answer_type": "OPEN", "question_type": "POS",
                             "image_organ": organ.upper(), "held": held})
                recs.append({"qid": len(recs), "image_name": name, "question": "Is the opacity on the left?",
                             "answer": "Yes" if side == "left" else "No", "answer_type": "CLOSED",
                             "question_type": "POS", "image_organ": organ.upper(), "held": held})
                i += 1
    train = [{k: v for k, v in r.items() if k != "held"} for r in recs if not r["held"]]
    held = [{k: v for k, v in r.items() if k != "held"} for r in recs if r["held"]]
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "held.json").write_text(json.dumps(held))
    return folder


@pytest.fixture(scope="module")
def decoder_model(tmp_path_factory):
    data = _composed_set(tmp_path_factory.mktemp("composed"))
    out = data / "model"
    model, _ = train_vqa(data / "train.json", out, VqaConfig(seeds=1, epochs=30, views=1, decoder=64,
                                                             decoder_epochs=150, fact_questions=0),
                         images=data / "images")
    return data, out, model


def test_decoder_writes_an_answer_no_training_question_had(decoder_model):
    data, out, model = decoder_model
    held = load_vqa(data / "held.json", data / "images")
    assert "right head" not in model.vocab and {"left head", "right chest"} <= set(model.vocab)
    with open_cache(out / CACHE_NAME) as cache:
        img, qe = embed_set(held, cache, model.image_encoders())
    opens = [i for i, q in enumerate(held.questions) if not q.closed]
    texts, probs = model.decode(img[opens], qe[opens])
    assert sum(t == "right head" for t in texts) >= len(opens) // 2, texts
    # through the gate (opened wide here: the inner split of this tiny set may keep it closed)
    plain = model.predict(img[opens], qe[opens], decoder=False)
    texts_open = [held.questions[i].question for i in opens]
    gated = model.gated(plain, img[opens], qe[opens], margin=-1.0, novel_only=True, questions=texts_open)
    assert all(p.answer in model.vocab and not p.decoded for p in plain)  # the classifier cannot say it
    assert any(p.answer == "right head" and p.decoded for p in gated)
    # closed questions are never answered by the decoder
    closed = [i for i, q in enumerate(held.questions) if q.closed]
    texts_closed = [held.questions[i].question for i in closed]
    plain_closed = model.predict(img[closed], qe[closed], decoder=False)
    got = model.gated(plain_closed, img[closed], qe[closed], -1.0, False, questions=texts_closed)
    assert not any(p.decoded for p in got)
    # ... not even where the closed head takes the yes/no question as open and the classifier's answer is
    # a word (the failure this rule fixes: "Are structures ... located in this image?" -> "pons"): the
    # question's form alone keeps the decoder out
    taken_open = [replace(p, p_closed=0.0, closed=False, answer="opacity", prob=0.0) for p in plain_closed]
    got = model.gated(taken_open, img[closed], qe[closed], -1.0, False, questions=texts_closed)
    assert not any(p.decoded for p in got)
    # the same rows asked in an open form are the decoder's again
    got = model.gated(taken_open, img[closed], qe[closed], -1.0, False,
                      questions=["Where is the opacity?"] * len(closed))
    assert all(p.decoded for p in got)
    # and a row answered among its question's named choices keeps its choice ("right or left?")
    chosen = [replace(p, choices=("opacity", "effusion")) for p in taken_open]
    got = model.gated(chosen, img[closed], qe[closed], -1.0, False,
                      questions=["Is the opacity or the effusion larger?"] * len(closed))
    assert not any(p.decoded for p in got) and all(p.answer == "opacity" for p in got)


@pytest.mark.parametrize("question, yes_no", [
    ("Are structures associated with the midbrain located in this image?", True),
    ("Is there an infarct?", True),
    ("does the patient have a pneumothorax", True),
    ("Can you see the kidneys in this image?", True),
    ("Is/Are there calcifications?", True),
    ("Besides the mass in the temporal horn, are there other enhancements in the image?", True),
    ("Any abnormal findings in the lower lung fields?", True),
    ("Is this an MRI or a CT?", False),
    ("Is this a pneumonia vs. pleural effusion?", False),
    ("Where is the lesion?", False),
    ("What is/are the hypodense mass near/in the liver?", False),
    ("Which organ is abnormal, the liver or the spleen?", False),
    ("In the left lung, what is seen?", False),
    ("", False),
])
def test_yes_no_form(question, yes_no):
    assert yes_no_form(question) is yes_no


def test_gate_never_replaces_a_yes_no_answer():
    # three rows the closed head takes as open, the decoder far more confident than the classifier
    answers, probs, p_closed = ["pons", "yes", "pons"], np.array([0.1, 0.1, 0.1]), np.array([0.2, 0.2, 0.2])
    decoded, p_dec = ["midbrain", "midbrain", "midbrain"], np.array([0.9, 0.9, 0.9])
    use = gate_answers(answers, probs, p_closed, decoded, p_dec, 0.0, False, {"pons"},
                       np.array([True, False, False]))
    assert use.tolist() == [False, False, True]  # yes/no in form; classifier said yes; an open question
    with pytest.raises(ValueError, match="yes_no has shape"):
        gate_answers(answers, probs, p_closed, decoded, p_dec, 0.0, False, {"pons"}, np.array([True]))


def test_predict_with_an_open_gate_needs_the_question_texts(decoder_model, tmp_path):
    data, out, model = decoder_model
    opened = Answerer.load(out)
    opened.cfg = replace(opened.cfg, decoder_margin=-1.0)
    held = load_vqa(data / "held.json", data / "images")
    with open_cache(out / CACHE_NAME) as cache:
        img, qe = embed_set(held, cache, opened.image_encoders())
    with pytest.raises(ValueError, match="needs the question texts"):
        opened.predict(img, qe)
    assert len(opened.predict(img, qe, decoder=False)) == len(held.questions)
    with pytest.raises(ValueError, match="question texts"):
        opened.predict(img, qe, questions=["Where is it?"])


def test_gate_is_chosen_on_the_training_side_and_saved(decoder_model):
    data, out, model = decoder_model
    gate = model.meta["decoder_gate"]
    assert gate["inner_train"] + gate["inner_held"] == model.meta["n_train"]
    assert len(gate["grid"]) == 16 and model.cfg.decoder_margin == gate["margin"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["decoder_words"] == model.decoder_words and "right" in saved["decoder_words"]
    assert saved["config"]["decoder_margin"] == gate["margin"]


def test_save_load_round_trip_gives_identical_answers(decoder_model, tmp_path):
    data, out, model = decoder_model
    loaded = Answerer.load(out)
    held = load_vqa(data / "held.json", data / "images")
    with open_cache(out / CACHE_NAME) as cache:
        img, qe = embed_set(held, cache, model.image_encoders())
        a = answer_set(model, held, cache)
        b = answer_set(loaded, held, cache)
    assert [(p.answer, p.prob, p.decoded) for p in a] == [(p.answer, p.prob, p.decoded) for p in b]
    assert model.decode(img, qe)[0] == loaded.decode(img, qe)[0]
    np.testing.assert_allclose(model.decode(img, qe)[1], loaded.decode(img, qe)[1])
    # the same model with its gate forced open: identical too after a save and load
    model.cfg = replace(model.cfg, decoder_margin=-1.0)
    model.save(tmp_path / "open")
    again = Answerer.load(tmp_path / "open")
    texts = [q.question for q in held.questions]
    assert ([p.answer for p in model.predict(img, qe, questions=texts)]
            == [p.answer for p in again.predict(img, qe, questions=texts)])
    assert any(p.decoded for p in again.predict(img, qe, questions=texts))


def test_bad_decoder_option_is_a_clear_error(tmp_path, decoder_model):
    with pytest.raises(ValueError, match="decoder is -1"):
        VqaConfig(decoder=-1)
    with pytest.raises(ValueError, match="decoder_epochs 0"):
        VqaConfig(decoder=8, decoder_epochs=0)
    _, out, model = decoder_model
    plain = Answerer.load(out)
    plain.decoder_words, plain.decoder_state = [], {}
    with pytest.raises(ValueError, match="no answer decoder"):
        plain.decode(np.zeros((1, plain.img_mean.shape[0]), np.float32), np.zeros((1, 384), np.float32))
    # a folder whose config names a decoder that its weights lack
    broken = tmp_path / "broken"
    model.save(broken)
    cfg = json.loads((broken / "config.json").read_text())
    del cfg["decoder_words"]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="decoder words"):
        Answerer.load(broken)


def test_cli_rejects_a_bad_decoder_option(tmp_path):
    from .conftest import medweave

    proc = medweave("vqa", "train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--decoder", "-1",
                    check=False)
    assert proc.returncode == 2 and "decoder is -1" in proc.stderr


def test_ask_answers_through_the_open_gate(decoder_model, tmp_path):
    from medweave.vqa.pipeline import ask

    data, out, model = decoder_model
    model.cfg = replace(model.cfg, decoder_margin=-1.0)
    model.save(tmp_path / "open")
    held = load_vqa(data / "held.json", data / "images")
    q = next(q for q in held.questions if not q.closed)
    res = ask(Answerer.load(tmp_path / "open"), held.image_path(q.image), q.question)
    assert res["answer"] == "right head" and res["type"] == "open"


def test_the_decoder_reads_the_question_standardised_on_its_training_rows():
    """As the answerer's networks do (``question_scale``): the decoder keeps its open training rows'
    question mean and sd as buffers and standardises the question part of every input row with them."""
    import torch

    from medweave.vqa.decoder import build_decoder, fit_decoder

    rng = np.random.default_rng(0)
    q_dim, pic = 16, 8
    q = rng.normal(0.01, 0.02, (40, q_dim)).astype(np.float32)  # e5-like: per-dimension sd about 0.02
    x = np.concatenate([rng.normal(size=(40, pic)).astype(np.float32), q], 1)
    words, state = fit_decoder(x, ["left lung", "right lung"] * 20, hidden=8, epochs=1, q_dim=q_dim)
    np.testing.assert_allclose(state["q_mean"].numpy(), q.mean(0), atol=1e-6)
    np.testing.assert_allclose(state["q_std"].numpy(), q.std(0) + 1e-3, atol=1e-6)
    net = build_decoder(len(words), x.shape[1], 8, q_dim)
    net.load_state_dict(state)
    seen = {}
    net.cond.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0]))
    net.eval()
    with torch.inference_mode():
        net.condition(torch.from_numpy(x))
    read = seen["inp"][:, pic:].numpy()
    assert np.abs(read.mean(0)).max() < 1e-4 and np.allclose(read.std(0), 1.0, atol=0.1)
