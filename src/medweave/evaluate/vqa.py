"""Scores and probes of medweave's own VQA answerer on a VQA set, in one batch over its embeddings
(what ``medweave vqa evaluate`` / ``probe`` and the VQA benchmark print), scored by ``answers``.

Probes: does the answerer read the picture?

- Image ablation: the same questions answered with a blank picture, with noise, and with another
  patient's picture of the same organ; each scored like the real picture. Beside them, on the same
  questions, the question-only guess (``baselines.question_only`` over the model's training questions:
  no picture at all). A blank picture need not score zero: on a split that mirrors the VQA-RAD test a
  held-out question often has a twin about the same picture in training, so its text alone gives the
  answer away; what shows that the answerer reads the picture is the real picture far above the
  question-only guess, and the blank picture not above it (``blank_beyond_question_only``: the share of
  questions the blank picture gets right and the question-only guess does not).
- Paired probes (in the spirit of ProbMed): for each picture, what is known of it (``facts.py``: its
  organ, and its modality and plane where a training or evaluated question's answer states them) is
  asked as a true question (answer yes) and as a hallucinated one (answer no), in wording that
  training never uses. A pair counts only when both answers are right; random guessing gets 25%.

The picture gate (``vqa.gate``) withholds the answer about a picture with no readable content; a
withheld answer counts as wrong, and each ablation row says how many were withheld (``abstained``).
So with the gate a blank or noise picture scores about zero, and the real row's ``abstained`` is the
gate's false-abstention rate on the held-out pictures.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from pathlib import Path

from ..vqa.data import Question, VqaSet, load_vqa
from ..vqa.facts import hallucinated, picture_facts, probe_question, question_records
from ..vqa.features import embed_image_arrays, embed_image_files, embed_questions, open_cache
from ..vqa.baselines import question_only
from ..vqa.model import Answerer
from ..vqa.normalize import normalize_answer
from ..vqa.pipeline import CACHE_NAME, DEFAULT_SPLIT, SplitRun, answer_set, embed_set, fit_split
from .answers import vqa_scores as score

RANDOM_PAIR_ACC = 0.25


def evaluate_vqa(model_dir: str | Path, questions: str | Path, images: str | Path | None = None,
                 n_boot: int = 1000) -> dict:
    """Score a saved model on a question file in the VQA-RAD layout (all score definitions)."""
    model = Answerer.load(model_dir)
    vqa = load_vqa(questions, images)
    with open_cache(Path(model_dir) / CACHE_NAME) as cache:
        preds = answer_set(model, vqa, cache)
    res = score(vqa.questions, [p.answer for p in preds], n_boot=n_boot)
    res["questions"] = len(vqa.questions)
    res["source"] = vqa.source
    res["abstained"] = abstentions(preds)
    res["picture_gate"] = model.gate_status()
    return res


def abstentions(preds) -> dict:
    """How many answers the picture gate withheld (``vqa.gate``; each is scored as wrong)."""
    n = int(sum(p.abstained for p in preds))
    return {"n": n, "of": len(preds), "share": n / len(preds) if preds else 0.0}


def split_scores(run: SplitRun, n_boot: int = 1000) -> dict:
    """Every score of a model trained on one side of a validation split, on its held-out side."""
    preds = run.predictions()
    res = score(run.held.questions, [p.answer for p in preds], n_boot=n_boot)
    res.update({"split": run.split, "train_questions": run.train_questions, "abstained": abstentions(preds),
                "held_out_questions": len(run.held.questions), "fit_seconds": run.fit_seconds})
    return res


def validate(data: str | Path, split: str = DEFAULT_SPLIT, cfg=None, cache_path: str | Path | None = None,
             frac: float = 0.15, seed: int = 0, n_boot: int = 1000) -> dict:
    """Train on one side of a validation split and score the held-out side."""
    with open_cache(cache_path) as cache:
        run = fit_split(data, split, cfg, cache, frac, seed)
    return split_scores(run, n_boot)
ABLATIONS = ("real", "blank", "noise", "other_same_organ", "question_only", "blank_beyond_question_only")


def blank_image() -> np.ndarray:
    return np.zeros((256, 256), dtype=np.uint8)


def noise_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (256, 256), dtype=np.uint8)


def other_same_organ(vqa: VqaSet) -> dict[str, str]:
    """For each picture, another picture of the set showing the same organ (next one in name order)."""
    by_organ: dict[str, list[str]] = defaultdict(list)
    for q in vqa.questions:
        if q.image not in by_organ[q.organ]:
            by_organ[q.organ].append(q.image)
    swap = {}
    for names in by_organ.values():
        names.sort()
        for i, n in enumerate(names):
            if len(names) > 1:
                swap[n] = names[(i + 1) % len(names)]
    return swap


def _short(res: dict) -> dict:
    return {k: res[k] for k in ("overall_acc", "closed_acc", "open_acc")}


def image_ablation(model: Answerer, vqa: VqaSet, cache, n_boot: int = 1000, gate: bool = True) -> dict:
    """Scores with the real picture, a blank one, noise and another same-organ picture, each with the
    share of answers the picture gate withheld (``abstained``: on the real pictures, its false
    abstentions); ``gate=False``: every question answered, the gate switched off."""
    encs = model.image_encoders()
    img, qe, img_st = embed_set(vqa, cache, encs, with_stats=True)
    names = vqa.image_names()
    row = {n: i for i, n in enumerate(names)}
    pics, pics_st = embed_image_files([vqa.image_path(n) for n in names], cache, encs, with_stats=True)
    noise, noise_st = embed_image_arrays([noise_image(i) for i in range(len(names))], cache, encs, with_stats=True)
    blank, blank_st = embed_image_arrays([blank_image()], cache, encs, with_stats=True)
    swap = other_same_organ(vqa)
    keep = [i for i, q in enumerate(vqa.questions) if q.image in swap]
    at = [row[q.image] for q in vqa.questions]
    other = [row[swap.get(q.image, q.image)] for q in vqa.questions]
    variants = {  # (embeddings, pixel statistics) per question
        "real": (img, img_st),
        "blank": (np.repeat(blank, len(img), axis=0), np.repeat(blank_st, len(img), axis=0)),
        "noise": (noise[at], noise_st[at]),
        "other_same_organ": (pics[other], pics_st[other]),
    }
    out, answers = {}, {}
    for name, (emb, st) in variants.items():
        idx = keep if name == "other_same_organ" else list(range(len(img)))
        preds = model.predict(emb[idx], qe[idx], questions=[vqa.questions[i].question for i in idx],
                              gate=gate, picture_stats=st[idx]) if idx else []
        answers[name] = [p.answer for p in preds]
        out[name] = {**_short(score([vqa.questions[i] for i in idx], answers[name], n_boot=n_boot)),
                     "abstained": abstentions(preds)}
    # no picture at all: the most common answer of the 5 training questions closest in wording
    answers["question_only"] = question_only(model.mem_q, [model.vocab[a] for a in model.mem_answer], qe)
    out["question_only"] = _short(score(vqa.questions, answers["question_only"], n_boot=n_boot))
    out["blank_beyond_question_only"] = beyond(vqa.questions, answers["blank"], answers["question_only"], n_boot)
    return out


def beyond(questions: list[Question], probed: list[str], guess: list[str], n_boot: int = 1000) -> dict:
    """overall / closed / open share of ``questions`` that ``probed`` answers right and the question-only
    ``guess`` does not (exact match after normalisation), with bootstrap intervals like every score."""
    from .answers import exact_match, mean_with_ci

    gain = np.array([exact_match(p, q.answer) and not exact_match(g, q.answer)
                     for p, g, q in zip(probed, guess, questions)], dtype=bool)
    closed = np.array([q.closed for q in questions], dtype=bool)
    return {"overall_acc": mean_with_ci(gain, n_boot), "closed_acc": mean_with_ci(gain[closed], n_boot),
            "open_acc": mean_with_ci(gain[~closed], n_boot)}


def known_facts(model: Answerer, vqa: VqaSet) -> dict[str, dict[str, str]]:
    """Per picture of ``vqa``: {"organ", "modality", "plane"} known from the set and the training cases."""
    records = [(c["image"], c["question"], c.get("question_type", ""), c["answer"], c.get("organ", ""))
               for c in model.cases]
    facts = picture_facts(records + question_records(vqa.questions))
    return {name: facts[name] for name in vqa.image_names() if name in facts}


def probe_pairs(model: Answerer, vqa: VqaSet) -> list[tuple[str, str, Question, Question]]:
    """(picture, fact kind, true question, hallucinated question) for every known fact."""
    return [(image, kind, probe_question(kind, value, image, "yes"),
             probe_question(kind, hallucinated(kind, value, image), image, "no"))
            for image, facts in sorted(known_facts(model, vqa).items()) for kind, value in sorted(facts.items())]


def paired_probes(model: Answerer, vqa: VqaSet, cache) -> dict:
    """Pair accuracy per fact kind and overall, beside the 25% of random guessing."""
    pairs = probe_pairs(model, vqa)
    if not pairs:
        return {"pairs": 0, "random_pair_acc": RANDOM_PAIR_ACC}
    names = sorted({p[0] for p in pairs})
    probe = VqaSet([q for p in pairs for q in p[2:]], vqa.images_dir)
    img, _ = embed_set(VqaSet([Question("", n) for n in names], vqa.images_dir), cache, model.image_encoders())
    row = {n: i for i, n in enumerate(names)}
    qe = embed_questions([q.question for q in probe.questions], cache)
    preds = model.predict(img[[row[q.image] for q in probe.questions]], qe,
                          questions=[q.question for q in probe.questions])
    right = np.array([normalize_answer(p.answer) == q.answer for p, q in zip(preds, probe.questions)])
    both = right[0::2] & right[1::2]
    kinds = np.array([p[1] for p in pairs])
    out = {k: {"pairs": int((kinds == k).sum()), "pair_acc": float(both[kinds == k].mean()),
               "true_acc": float(right[0::2][kinds == k].mean()), "false_acc": float(right[1::2][kinds == k].mean())}
           for k in sorted(set(kinds))}
    out["all"] = {"pairs": len(pairs), "pair_acc": float(both.mean()), "true_acc": float(right[0::2].mean()),
                  "false_acc": float(right[1::2].mean())}
    return {"by_kind": out, "random_pair_acc": RANDOM_PAIR_ACC}


def run_probes(model: Answerer, vqa: VqaSet, cache, n_boot: int = 1000, gate: bool = True) -> dict:
    """Both probe families on one question set (``gate``: see ``image_ablation``)."""
    return {"ablation": image_ablation(model, vqa, cache, n_boot, gate), "paired": paired_probes(model, vqa, cache),
            "picture_gate": model.gate_status() if gate else "switched off for these probes"}
