"""Train, answer and fit validation splits: the functions the ``medweave vqa`` commands call (scoring
and probes live in ``medweave.evaluate``: ``answers`` and ``vqa``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import VqaSet, load_vqa
from .facts import fact_questions, picture_facts, question_records
from ..encode.text import one_thread
from .features import IMAGE_ENCODERS, embed_image_files, embed_questions, open_cache
from .model import Answerer, Prediction, VqaConfig
from .splits import DEFAULT_SPLIT, make_split

CACHE_NAME = "embeddings.duckdb"


def embed_set(vqa: VqaSet, cache, encoders=None, with_stats: bool = False):
    """(per-question picture embeddings, question embeddings) for a VQA set; ``encoders``: the picture
    views a model reads (``Answerer.image_encoders()``; default the frozen ones). ``with_stats``: also
    the per-question pixel statistics of the pictures (``gate.pixel_stats``; cached beside them)."""
    names = vqa.image_names()
    pics = embed_image_files([vqa.image_path(n) for n in names], cache, encoders, with_stats=with_stats)
    pics, stats = pics if with_stats else (pics, None)
    row = {n: i for i, n in enumerate(names)}
    rows = [row[q.image] for q in vqa.questions]
    img = pics[rows] if vqa.questions else np.zeros((0, pics.shape[1]), np.float32)
    qe = embed_questions([q.question for q in vqa.questions], cache)
    if not with_stats:
        return img, qe
    return img, qe, stats[rows] if vqa.questions else np.zeros((0, 2), np.float32)


def picture_stats_set(vqa: VqaSet, cache) -> np.ndarray:
    """(questions, 2): each question's picture's pixel statistics (``gate.pixel_stats``), cached by
    file hash (found there when ``embed_set(..., with_stats=True)`` ran first)."""
    names = vqa.image_names()
    if not vqa.questions:
        return np.zeros((0, 2), np.float32)
    stats = embed_image_files([vqa.image_path(n) for n in names], cache, [], with_stats=True)[1]
    row = {n: i for i, n in enumerate(names)}
    return stats[[row[q.image] for q in vqa.questions]]


def _cases(vqa: VqaSet, with_qid: bool = False) -> list[dict]:
    # the qid names a retrieved case (context citations); kept out of plain models' config.json, which
    # stays as it was
    return [{"image": q.image, "question": q.question, "answer": q.answer, "organ": q.organ,
             "question_type": q.question_type, "answer_type": q.answer_type,
             **({"qid": q.qid} if with_qid else {})} for q in vqa.questions]


def context_groups(vqa: VqaSet) -> list[int]:
    """Per question, its paraphrase group (``splits.paraphrase_groups``; -1: none): what leave-group-out
    context retrieval in training leaves out beside the row itself."""
    from .splits import paraphrase_groups

    out = [-1] * len(vqa.questions)
    for g, members in enumerate(paraphrase_groups(vqa.questions)):
        for i in members:
            out[i] = g
    return out


def choose_decoder_gate(vqa: VqaSet, img: np.ndarray, qe: np.ndarray, cfg: VqaConfig, cache=None,
                        seed: int = 0, frac: float = 0.15) -> dict:
    """The answer decoder's gate, chosen on an inner split of the training side only (the ``testlike``
    kind, which falls back to the question split on a set without phrase types): an answerer with its
    decoder is trained on the inner training part, and each gate of the grid (``decoder.GATE_MARGINS``
    x novel answers only or any) is scored by exact match on the inner held-out part beside the gate
    closed. The best gate is kept only when it answers more inner questions right than the closed one
    (ties: the closed gate, then the larger margin); returns the choice and the grid."""
    from dataclasses import replace

    from ..evaluate.answers import exact_match
    from .decoder import GATE_MARGINS

    tr, he = make_split("testlike", vqa.questions, frac, seed)
    inner = fit_set(vqa.subset(tr), img[tr], qe[tr], replace(cfg, decoder_margin=None), cache, choose_gate=False)
    held = [vqa.questions[i] for i in he]
    himg = embed_set(vqa.subset(he), cache, inner.image_encoders())[0] if inner.encoder_state else img[he]
    texts = [q.question for q in held]
    plain = inner.predict(himg, qe[he], decoder=False, questions=texts)
    decoded = inner.decode(himg, qe[he])

    def right(preds) -> int:
        return int(sum(exact_match(p.answer, q.answer) for p, q in zip(preds, held)))

    base = right(plain)
    grid = []
    for novel in (True, False):
        for m in GATE_MARGINS:
            preds = inner.gated(plain, himg, qe[he], m, novel, decoded, questions=texts)
            grid.append({"margin": m, "novel_only": novel, "right": right(preds),
                         "decoded": int(sum(p.decoded for p in preds))})
    best = max(grid, key=lambda g: (g["right"], g["novel_only"], g["margin"]))
    chosen = best if best["right"] > base else None
    return {"inner_train": len(tr), "inner_held": len(he), "closed_gate_right": base, "grid": grid,
            "margin": chosen["margin"] if chosen else None,
            "novel_only": chosen["novel_only"] if chosen else cfg.decoder_novel_only}


def fit_set(vqa: VqaSet, img: np.ndarray, qe: np.ndarray, cfg: VqaConfig | None = None, cache=None,
            choose_gate: bool = True) -> Answerer:
    """An answerer trained on a VQA set whose embeddings are given, plus yes/no questions generated
    from what the set states about each picture (``facts.fact_questions``; ``cfg.fact_questions=0``: none).
    With ``cfg.decoder`` its answer decoder's gate is chosen first on an inner split of this training
    set (``choose_decoder_gate``; ``choose_gate=False``: kept as ``cfg`` says)."""
    cfg = cfg or VqaConfig()
    gate = None
    if cfg.decoder and choose_gate:
        from dataclasses import replace

        t0 = time.perf_counter()
        gate = choose_decoder_gate(vqa, img, qe, cfg, cache)
        gate["seconds"] = time.perf_counter() - t0
        cfg = replace(cfg, decoder_margin=gate["margin"], decoder_novel_only=gate["novel_only"])
    tuned = None
    if cfg.finetune_blocks:
        from ..encode.finetune import FineTunedLite0
        from .tuning import finetune_for_set

        tuned = finetune_for_set(vqa, cfg)
        img = embed_set(vqa, cache, [FineTunedLite0(tuned.state, cfg.finetune_blocks),
                                     *IMAGE_ENCODERS[1:cfg.views]])[0]
    closed = np.array([q.closed for q in vqa.questions], dtype=bool)
    generated = fact_questions(picture_facts(question_records(vqa.questions)), cfg.fact_questions)
    row = {q.image: i for i, q in enumerate(vqa.questions)}
    facts = (img[[row[q.image] for q in generated]].reshape(len(generated), img.shape[1]),
             embed_questions([q.question for q in generated], cache), [q.answer for q in generated],
             [q.question_type for q in generated])
    copies = None
    if cfg.picture_augment:  # the K augmented copies of each training picture (vqa.augment), cached
        from .augment import picture_copies

        names = vqa.image_names()
        pic = {n: i for i, n in enumerate(names)}
        copies = (picture_copies([vqa.image_path(n) for n in names], cache, IMAGE_ENCODERS[:cfg.views],
                                 cfg.picture_augment), [pic[q.image] for q in [*vqa.questions, *generated]])
    model = Answerer.fit(img, qe, [q.answer for q in vqa.questions], closed, _cases(vqa, bool(cfg.context)), cfg,
                         facts, context_groups(vqa) if cfg.context else None, picture_stats_set(vqa, cache),
                         fact_texts=[q.question for q in generated], picture_copies=copies)
    if tuned is not None:
        model.encoder_state = tuned.state
        model.meta["finetune"] = tuned.info()
    if gate is not None:
        model.meta["decoder_gate"] = gate
    return model


def train_vqa(data: str | Path, out_dir: str | Path, cfg: VqaConfig | None = None,
              images: str | Path | None = None, split: str | None = None, split_frac: float = 0.15,
              split_seed: int = 0) -> tuple[Answerer, dict]:
    """Train on a VQA-RAD layout folder (or question file) and save the model to ``out_dir``; with
    ``split``, on the training side of that validation split only (its held-out side is what
    ``medweave eval run --task vqa-rad-testlike`` asks).

    Embeddings are cached in ``out_dir/embeddings.duckdb``; evaluating on the same pictures reuses them.
    """
    t0 = time.perf_counter()
    vqa = load_vqa(data, images)
    if split is not None:
        train_idx, _ = make_split(split, vqa.questions, split_frac, split_seed)
        vqa = vqa.subset(train_idx)
    if not vqa.questions:
        raise ValueError(f"{vqa.source}: no questions to train on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or VqaConfig()
    with open_cache(out / CACHE_NAME) as cache:
        img, qe, _ = embed_set(vqa, cache, IMAGE_ENCODERS[:cfg.views], with_stats=True)  # each picture decoded once
        t_embed = time.perf_counter() - t0
        model = fit_set(vqa, img, qe, cfg, cache)
    model.meta.update({"data": vqa.source, "images": len(vqa.image_names()), "embed_seconds": t_embed,
                       "split": {"name": split, "side": "train", "frac": split_frac, "seed": split_seed} if split else None,
                       "train_seconds": time.perf_counter() - t0})
    model.save(out)
    return model, dict(model.meta)


def answer_set(model: Answerer, vqa: VqaSet, cache) -> list[Prediction]:
    """The model's answers to every question of a set."""
    if not vqa.questions:
        return []
    img, qe, stats = embed_set(vqa, cache, model.image_encoders(), with_stats=True)
    return model.predict(img, qe, questions=[q.question for q in vqa.questions], picture_stats=stats)


@dataclass
class SplitRun:
    """A model trained on one side of a validation split, with the held-out side and its embeddings."""

    split: str
    model: Answerer
    held: VqaSet
    img: np.ndarray
    qe: np.ndarray
    train_questions: int
    fit_seconds: float
    train: VqaSet | None = None  # the training side
    stats: np.ndarray | None = None  # the held-out questions' pictures' pixel statistics (gate.pixel_stats)

    def predictions(self) -> list[Prediction]:
        return self.model.predict(self.img, self.qe, questions=[q.question for q in self.held.questions],
                                  picture_stats=self.stats)


def fit_split(data: str | Path | VqaSet, split: str = DEFAULT_SPLIT, cfg: VqaConfig | None = None, cache=None, frac: float = 0.15,
              seed: int = 0) -> SplitRun:
    """Train on one side of a validation split (``testlike``, ``images`` or ``questions``) of a VQA set
    (a path, or a ``VqaSet`` already read)."""
    vqa = data if isinstance(data, VqaSet) else load_vqa(data)
    cfg = cfg or VqaConfig()
    train_idx, held_idx = make_split(split, vqa.questions, frac, seed)
    img, qe, stats = embed_set(vqa, cache, IMAGE_ENCODERS[:cfg.views], with_stats=True)
    t0 = time.perf_counter()
    model = fit_set(vqa.subset(train_idx), img[train_idx], qe[train_idx], cfg, cache)
    seconds = time.perf_counter() - t0
    held = vqa.subset(held_idx)
    held_img = embed_set(held, cache, model.image_encoders())[0] if model.encoder_state else img[held_idx]
    return SplitRun(split, model, held, held_img, qe[held_idx], len(train_idx), seconds, vqa.subset(train_idx),
                    stats[held_idx])


def ask(model: Answerer, image: str | Path, question: str, cache=None, k: int = 3) -> dict:
    """Answer one question about one picture file: answer, probability, type assumed, similar cases."""
    if not str(question).strip():
        raise ValueError("the question is empty")
    with one_thread():  # one question's products are small: more threads only wait for each other
        return _ask(model, image, question, cache, k)


def _ask(model: Answerer, image: str | Path, question: str, cache, k: int) -> dict:
    img = embed_image_files([image], cache, model.image_encoders())
    qe = embed_questions([question])  # a one-off question: not worth a cache write
    out = {}
    context = None
    if model.cfg.context:
        context, rows, scores = model.context_features(img, qe)
        out["context"] = [{**model.cases[i], "score": float(sc)} for i, sc in zip(rows[0], scores[0]) if i >= 0]
    # the pixel statistics only for a picture that is not a training picture (those pass them by construction)
    stats = embed_image_files([image], cache, [], with_stats=True)[1] if model.needs_pixels(img) else None
    pred = model.predict(img, qe, context, questions=[question], picture_stats=stats)[0]
    return {"question": question, "answer": pred.answer, "probability": pred.prob,
            "type": "closed" if pred.closed else "open", "p_closed": pred.p_closed,
            "memory_weight": pred.from_memory, **gate_fields(model, pred),
            **({"choices": list(pred.choices)} if pred.choices else {}),
            "similar_cases": model.similar_cases(img, qe, k), **out}


def gate_fields(model: Answerer, pred: Prediction) -> dict:
    """What an answer says of the picture gate (``vqa.gate``): whether it abstained and why, the
    picture's cosine to its nearest training picture, and the gate's state (off for a model saved
    before it)."""
    return {"abstained": pred.abstained, **({"reason": pred.reason} if pred.abstained else {}),
            "nearest_picture_cos": pred.nearest_picture_cos, "picture_gate": model.gate_status()}
