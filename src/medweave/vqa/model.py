"""The answerer: an ensemble of small fusion networks over frozen picture and question embeddings,
with an answer-type head and a same-picture memory of training questions.

- Fusion: picture (one 1280-d view) and question (384-d), each standardised on the training rows
  (``question_scale``; a model saved before it reads its questions raw), each projected to ``hidden``
  units; the answer head reads [picture, question, picture * question] and classifies over the
  training answer vocabulary (normalised answers). The picture embedding holds ``views`` views side by
  side (224 and 320 pixels); ensemble member k reads view k % views, and the ensemble averages them.
- Question words (``question_words`` = width > 0; off by default): the networks' question input is the
  standardised e5 vector and, beside it, the question's hashed unigrams and bigrams (``vqa.lexical``,
  L2-normalised, times ``WORDS_SCALE``), so the fusion and both type heads read the exact words; the
  memory, the prior, similar cases, the context and the gate keep the e5 vector alone. Such a model
  needs the question texts wherever it answers (``predict(..., questions=)``).
- Answer and question type: heads on the question predict closed vs open and the question type;
  answer probabilities are reweighted by them (answers seen as closed / open, answers seen with each
  question type in training).
- Memory: training (picture, question, answer) triples. When the asked picture *is* a training picture
  (embedding cosine >= ``same_image_cos``) and a training question about it is close
  (cosine >= ``question_cos``), their answers are blended in. A blank or unseen picture matches no
  training picture, so the memory never answers from the question text alone.
- Picture prior (``picture_prior`` = beta > 0): the answers that training questions about the asked
  picture itself had (``same_image``) are boosted after the memory's blend, each by
  1 + beta * exp((cosine - 1) / ``picture_prior_temperature``) for the closest such question, then the
  probabilities renormalised. Unlike the memory, which needs a near-identical question (cosine >= 0.9)
  and blends its answers in whatever the networks say, the prior only reorders the networks' own
  candidates, so a free-form question ("Which organ is abnormally large?") can still take the answer its
  templated twin about the same picture had ("What is the enlarged organ?": "Spleen"). A blank, noisy or unseen picture matches no
  training picture, so it changes nothing there. Chosen on inner splits of the training side
  (``benchmarks/vqa_prior.py``).
- Retrieved context (``context`` = k > 0; off by default, the MMed-RAG idea): the k training cases
  closest in picture and question (``neighbours``, the search behind ``similar_cases`` and the agents'
  ``similar_questions`` tool) give an extra input, their answers' distribution weighted by similarity
  (softmax of the score over ``context_temperature``) and the best score. Only the memory is searched,
  which holds the training side alone, and never a row asking the asked question (same picture, same
  text: ``asked_rows``). In training each row's context leaves out itself, every row asking the same
  question about the same picture, and its paraphrase group (``splits.paraphrase_groups``: a held-out
  question's paraphrases are held out with it), so training sees what a held-out question sees.
- Answer decoder (``decoder`` = H > 0; off by default: ``medweave.vqa.decoder``): a word-level GRU over
  the training answers' words writes an open answer, so it can give answers no training question had.
  It replaces the classifier's answer only where a gate lets it (the question taken as open and not
  yes/no in form, the classifier's answer not yes/no, the decoder's sequence probability above the classifier's by ``decoder_margin``, and with
  ``decoder_novel_only`` not a training answer); the gate is chosen on an inner split of the training
  side (``pipeline.choose_decoder_gate``) and stays closed (``decoder_margin`` None) unless it wins there.
- Picture augmentation (``picture_augment`` = K > 0; off by default: ``medweave.vqa.augment``): each epoch
  reads a training row's picture as its clean embedding or one of K cached augmented copies; the answer
  side (memory, prior, gate, context) keeps the clean one.
- Picture gate (``vqa.gate``; ``picture_gate``, calibrated in ``fit`` on the training pictures alone and
  saved in ``config.json``): a picture whose nearest training picture is less alike than the gate's
  threshold (blank, constant, noise, or unlike every training picture) gets no answer but an abstention
  with its reason (``Prediction.abstained``, answer ""), which every score counts as wrong. A model saved
  before the gate answers as it did (gate off, said by ``gate_status``).
"""

from __future__ import annotations

import json
import numbers
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from .features import torch_threads
from .choices import ChoiceIndex, calibrate, restrict_to_choices
from .data import main_question_type
from .normalize import normalize_answer

MODEL_FORMAT = "medweave-vqa/3"
FINETUNED_FORMAT = "medweave-vqa/4"  # /3 plus the fine-tuned picture encoder (``encoder.*`` tensors)


# VqaConfig fields that change no weights: read at answer time (the choice rule's calibration is saved at
# fit time, but only the rule reads it), so one fitted model scores any value of them
# (benchmarks/vqa_prior.py --grid, vqa_tune.py's memory weight)
ANSWER_TIME_FIELDS = ("picture_prior", "picture_prior_temperature", "memory_weight", "question_cos",
                      "memory_temperature", "same_image_cos", "choice_answers")


@dataclass
class VqaConfig:
    """Training choices. epochs, hidden, dropout, image_dropout, lr, weight_decay, label_smoothing,
    fact_weight and memory_weight were re-chosen by ``benchmarks/vqa_tune.py`` on inner test-like splits
    of the training sides of split seeds 0-2 (a 1-member, 1-view answerer; coordinate search from the
    earlier values, ties to them; README "The training choices re-chosen"): only lr moved there, 1e-3 ->
    5e-4, and the full answerer (4 members, 2 views) with it scored 0.743 +- 0.012 on the outer test-like
    seeds 0-2 against 0.746 +- 0.018 with 1e-3, so lr stays 1e-3 and every value is the earlier one.
    batch_size, the ensemble (seeds, views), the memory's cosines and temperature were picked earlier on the
    old question-held-out split and not searched again; the picture prior's on inner test-like splits
    (``benchmarks/vqa_prior.py``)."""

    hidden: int = 512
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3            # vqa_tune.py's inner screen chose 5e-4; the full answerer did not confirm it
    weight_decay: float = 1e-2
    dropout: float = 0.3
    image_dropout: float = 0.2
    label_smoothing: float = 0.1
    seeds: int = 4               # ensemble members; member k reads picture view k % views
    views: int = 2               # picture views side by side in the embedding (224 and 320 pixels; 1: 224 only)
    memory_weight: float = 0.5
    same_image_cos: float = 0.99
    question_cos: float = 0.9
    memory_temperature: float = 0.02
    threads: int = 1
    fit_workers: int = 0         # processes fitting the members side by side (0: one per core when it pays; 1: none)
    fact_questions: int = 2      # per known organ/modality/plane fact: true and hallucinated questions each
    fact_weight: float = 0.5     # their loss weight beside a real question's 1.0
    finetune_blocks: int = 0     # > 0: fine-tune that many last blocks of the 224 view first (encode.finetune)
    finetune_epochs: int = 15
    finetune_augmentations: int = 4
    context: int = 0             # > 0: that many retrieved training cases' answers are an input (module notes)
    context_temperature: float = 0.05
    decoder: int = 0             # > 0: a word-level answer decoder of that many hidden units (vqa.decoder)
    decoder_epochs: int = 40
    decoder_margin: float | None = None  # the gate chosen on an inner split (None: the decoder never answers)
    decoder_novel_only: bool = True      # the gate lets through only answers that are not training answers
    question_scale: bool = True  # standardise the question embedding on the training rows, as the picture
    picture_prior: float = 2.0   # > 0: answers given about the asked picture itself in training are boosted
    picture_prior_temperature: float = 0.1  # how the boost falls with the question's distance (module notes)
    question_words: int = 0      # > 0: hashed question unigrams+bigrams of that width beside e5 (vqa.lexical)
    picture_augment: int = 0     # K > 0: each epoch reads a training picture as one of {clean, K augmented copies}
    picture_augment_clean: float | None = None  # P(clean) in that draw (None: uniform over the K + 1)
    choice_answers: bool = True  # a question naming its choices ("right or left?") takes one of them (vqa.choices)

    def __post_init__(self) -> None:
        if self.views not in (1, 2):
            raise ValueError(f"views is {self.views}; allowed values: 1 (224 pixels) or 2 (224 and 320 pixels)")
        # the training choices: (name, integer?, test, the allowed values in words)
        for name, integral, ok, allowed in (
                ("epochs", True, lambda v: v >= 1, "an integer >= 1"),
                ("hidden", True, lambda v: v >= 1, "an integer >= 1"),
                ("batch_size", True, lambda v: v >= 1, "an integer >= 1"),
                ("seeds", True, lambda v: v >= 1, "an integer >= 1 (ensemble members)"),
                ("fit_workers", True, lambda v: v >= 0,
                 "an integer >= 0 (0: one process per core when the fit is large enough; 1: in this process)"),
                ("lr", False, lambda v: v > 0, "a number > 0"),
                ("weight_decay", False, lambda v: v >= 0, "a number >= 0"),
                ("dropout", False, lambda v: 0 <= v < 1, "a number >= 0 and < 1"),
                ("image_dropout", False, lambda v: 0 <= v < 1, "a number >= 0 and < 1"),
                ("label_smoothing", False, lambda v: 0 <= v < 1, "a number >= 0 and < 1"),
                ("fact_weight", False, lambda v: v >= 0, "a number >= 0 (0: generated questions not learnt)"),
                ("memory_weight", False, lambda v: 0 <= v <= 1, "a number from 0 (no memory) to 1")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if integral else numbers.Real) \
                    or not ok(value):
                raise ValueError(f"{name} is {value!r}; allowed values: {allowed}")
        if self.context < 0:
            raise ValueError(f"context is {self.context}; allowed values: 0 (no retrieved context) or k >= 1")
        if self.picture_prior < 0 or self.picture_prior_temperature <= 0:
            raise ValueError(f"picture_prior is {self.picture_prior}, picture_prior_temperature "
                             f"{self.picture_prior_temperature}; allowed values: picture_prior >= 0 (0: off), "
                             "picture_prior_temperature > 0")
        if not isinstance(self.choice_answers, bool):
            raise ValueError(f"choice_answers is {self.choice_answers!r}; allowed values: true or false")
        if not isinstance(self.question_words, int) or isinstance(self.question_words, bool) \
                or self.question_words < 0:
            raise ValueError(f"question_words is {self.question_words!r}; allowed values: 0 (off) or a width >= 1 "
                             "(hashed question unigrams and bigrams, e.g. 1024)")
        if not isinstance(self.picture_augment, int) or isinstance(self.picture_augment, bool) \
                or self.picture_augment < 0:
            raise ValueError(f"picture_augment is {self.picture_augment!r}; allowed values: 0 (off) or K >= 1 "
                             "augmented copies per training picture (e.g. 4)")
        if self.picture_augment_clean is not None and (isinstance(self.picture_augment_clean, bool) or not isinstance(
                self.picture_augment_clean, numbers.Real) or not 0 <= self.picture_augment_clean <= 1):
            raise ValueError(f"picture_augment_clean is {self.picture_augment_clean!r}; allowed values: None (clean and "
                             "the K copies equally likely) or a probability from 0 to 1")
        if self.picture_augment and self.finetune_blocks:
            raise ValueError(f"picture_augment is {self.picture_augment} with finetune_blocks {self.finetune_blocks}: "
                             "the augmented copies are of the frozen encoders; use one or the other")
        if self.decoder < 0 or self.decoder_epochs < 1:
            raise ValueError(f"decoder is {self.decoder}, decoder_epochs {self.decoder_epochs}; allowed values: "
                             "decoder 0 (no answer decoder) or hidden units >= 1, decoder_epochs >= 1")


def _build_net(cfg: VqaConfig, n_answers: int, img_dim: int, q_dim: int, n_qtypes: int):
    """The fusion network: returns (answer logits, closed-type logit, question-type logits). With
    ``cfg.context`` it also reads the retrieved context (answer distribution + best score): projected
    beside the picture and question, and copied onto the logits with a learned weight. Without it the
    network (and its seeded initialisation) is exactly the plain one."""
    import torch
    from torch import nn

    class FusionNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h = cfg.hidden
            parts = 4 if cfg.context else 3
            self.image = nn.Sequential(nn.Dropout(cfg.image_dropout), nn.Linear(img_dim, h), nn.GELU())
            self.question = nn.Sequential(nn.Linear(q_dim, h), nn.GELU())
            self.answer = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(parts * h, h), nn.GELU(),
                                        nn.Dropout(cfg.dropout), nn.Linear(h, n_answers))
            self.kind = nn.Linear(q_dim, 1)
            self.qtype = nn.Linear(q_dim, n_qtypes)
            if cfg.context:
                self.context = nn.Sequential(nn.Linear(n_answers + 1, h), nn.GELU())
                self.copy = nn.Parameter(torch.ones(1))

        def forward(self, img: "torch.Tensor", q: "torch.Tensor", ctx: "torch.Tensor | None" = None):
            a, b = self.image(img), self.question(q)
            if not cfg.context:
                return self.answer(torch.cat([a, b, a * b], dim=1)), self.kind(q).squeeze(1), self.qtype(q)
            logits = self.answer(torch.cat([a, b, a * b, self.context(ctx)], dim=1)) + self.copy * ctx[:, :n_answers]
            return logits, self.kind(q).squeeze(1), self.qtype(q)

    return FusionNet()


def _fit_one(cfg: VqaConfig, seed: int, img, q, y, closed, qtype, weight, real, n_answers: int, n_qtypes: int,
             ctx=None, copies=None) -> dict:
    """Train one ensemble member (per-row answer-loss weights ``weight``; ``real`` marks the set's own
    questions; ``ctx``: per-row retrieved context with ``cfg.context``; ``copies``: with
    ``cfg.picture_augment``, (augmented pictures (K, pictures, width) standardised as ``img``, each row's
    picture), from which each epoch draws a row's picture); returns its state dict."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    net = _build_net(cfg, n_answers, img.shape[1], q.shape[1], n_qtypes)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xi, xq = torch.from_numpy(img), torch.from_numpy(q)
    yt, ct = torch.from_numpy(y).long(), torch.from_numpy(closed.astype(np.float32))
    wt, tt = torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(qtype).long()
    rt = torch.from_numpy(real.astype(np.float32))
    xc = torch.from_numpy(ctx.astype(np.float32)) if ctx is not None else None
    gen = torch.Generator().manual_seed(seed)
    if copies is not None:  # its own generator: the clean path's draws stay those of a fit without it
        xa, pic = torch.from_numpy(copies[0]), torch.from_numpy(np.asarray(copies[1], dtype=np.int64))
        agen = torch.Generator().manual_seed(AUGMENT_SEED + seed)
    net.train()
    for _ in range(cfg.epochs):
        x = xi
        if copies is not None:
            x = _draw_pictures(xi, xa, pic, cfg.picture_augment_clean, agen)
        perm = torch.randperm(len(yt), generator=gen)
        for b in range(0, len(yt), cfg.batch_size):
            j = perm[b:b + cfg.batch_size]
            logits, kind, qt = net(x[j], xq[j], xc[j] if xc is not None else None)
            # the answer head learns from every row (generated ones at their weight); the answer-type
            # and question-type heads only from the set's own questions, whose mix they must learn
            real = rt[j]
            answer = F.cross_entropy(logits, yt[j], label_smoothing=cfg.label_smoothing, reduction="none")
            types = (F.binary_cross_entropy_with_logits(kind, ct[j], reduction="none")
                     + F.cross_entropy(qt, tt[j], reduction="none"))
            loss = (answer * wt[j]).sum() / wt[j].sum() + (types * real).sum() / real.sum().clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


FIT_PARALLEL_MIN = 100_000  # row-epochs of a whole fit (about 20 s on one core) below which workers do not pay their start


def fit_workers(cfg: VqaConfig, rows: int) -> int:
    """How many processes fit the ensemble members (``cfg.fit_workers``; 0: one per usable core, at most
    one per member, when the fit is large enough (rows x epochs x members >= ``FIT_PARALLEL_MIN``) to pay
    each worker's start, about 3 s of importing torch; else 1, in this process)."""
    if cfg.fit_workers:
        return min(cfg.fit_workers, cfg.seeds)
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg.seeds < 2 or cores < 2 or rows * cfg.epochs * cfg.seeds < FIT_PARALLEL_MIN:
        return 1
    return min(cores, cfg.seeds)


def _fit_members(cfg: VqaConfig, data: tuple) -> list[dict]:
    """The ensemble members' state dicts, member s fitted by ``_fit_member(cfg, data, s)``: in this
    process, or side by side in ``fit_workers`` separate interpreters (``vqa.fitworker``), member s in
    worker s mod workers. A member's fit depends only on its seed, so the weights are the same either
    way (tests/vqa/test_fit_workers.py)."""
    workers = fit_workers(cfg, len(data[2]))
    if workers < 2:
        return [_fit_member(cfg, data, s) for s in range(cfg.seeds)]
    import tempfile

    from .fitworker import run_workers, write_job

    with tempfile.TemporaryDirectory(prefix="medweave-fit-") as tmp:
        write_job(Path(tmp), cfg, data)
        return run_workers(Path(tmp), cfg, [list(range(w, cfg.seeds, workers)) for w in range(workers)])


def _fit_member(cfg: VqaConfig, data: tuple, s: int) -> dict:
    """Ensemble member ``s``: its picture view of the rows (and of the augmented copies), its seed."""
    xi, xq, y, closed, t, weight, real, n_answers, n_qtypes, ctx, copies = data
    with torch_threads(cfg.threads):
        return _fit_one(cfg, s, _view(xi, s, cfg.views), xq, y, closed, t, weight, real, n_answers, n_qtypes, ctx,
                        None if copies is None else (np.ascontiguousarray(_view(copies[0], s, cfg.views)), copies[1]))


AUGMENT_SEED = 7919  # offsets the picture draws' generator from the member's own


def _draw_pictures(clean, copies, pic, p_clean, gen):
    """(rows, width): each row's picture for one epoch, the clean one (``clean`` row) or one of the K
    copies of its picture (``copies`` (K, pictures, width), ``pic`` each row's picture): uniform over the
    K + 1 with ``p_clean`` None, else the clean one with probability ``p_clean`` and a copy otherwise."""
    import torch

    k, n = copies.shape[0], len(pic)
    if p_clean is None:
        draw = torch.randint(0, k + 1, (n,), generator=gen)
    else:
        draw = torch.randint(1, k + 1, (n,), generator=gen)
        draw[torch.rand(n, generator=gen) < p_clean] = 0
    return torch.where((draw == 0)[:, None], clean, copies[(draw - 1).clamp(min=0), pic])


@dataclass
class Prediction:
    """One answer with its probability, the answer type assumed and P(closed)."""

    answer: str
    prob: float
    closed: bool
    p_closed: float
    from_memory: float = 0.0
    decoded: bool = False  # written by the answer decoder (vqa.decoder), not picked among training answers
    abstained: bool = False  # the picture gate (vqa.gate) found no readable content: no answer ("")
    reason: str = ""         # why it abstained
    nearest_picture_cos: float = float("nan")  # cosine to the nearest training picture (the gate's signal)
    choices: tuple[str, ...] = ()  # the question's named choices the answer was picked among (vqa.choices)


@dataclass
class Answerer:
    """A trained VQA model: vocabulary, type masks, ensemble weights, training memory."""

    cfg: VqaConfig
    vocab: list[str]
    type_masks: np.ndarray  # (2, vocab): answers seen as closed, as open
    qtypes: list[str]        # main question types (PRES, POS, MODALITY, ...)
    qtype_masks: np.ndarray  # (qtypes, vocab): answers seen with each question type
    img_mean: np.ndarray
    img_std: np.ndarray
    members: list[dict]
    mem_img: np.ndarray          # (n, 1280) L2-normalised training picture embeddings, one per question
    mem_q: np.ndarray            # (n, 384) training question embeddings
    mem_answer: np.ndarray       # (n,) vocabulary index
    cases: list[dict] = field(default_factory=list)  # per memory row: image, question, answer, organ
    meta: dict = field(default_factory=dict)
    encoder_state: dict = field(default_factory=dict)  # the fine-tuned tail of the 224 view ({}: frozen)
    decoder_words: list[str] = field(default_factory=list)  # the answer decoder's words ([]: no decoder)
    decoder_state: dict = field(default_factory=dict)
    q_mean: np.ndarray | None = None  # with cfg.question_scale: the question standardisation (None: read raw)
    q_std: np.ndarray | None = None
    picture_gate: dict = field(default_factory=dict)  # vqa.gate calibration ({}: gate off, a model saved before it)
    _nets: list = field(default_factory=list, repr=False)
    _encoders: list = field(default_factory=list, repr=False)
    _decoder: list = field(default_factory=list, repr=False)
    _pictures: list = field(default_factory=list, repr=False)  # [distinct memory pictures, row -> picture]

    def image_encoders(self) -> list:
        """The picture views this model reads, in order: registered names, or the fine-tuned encoder
        (versioned by its weights, so the cache never mixes its vectors with another's) and the 320 view."""
        from .features import IMAGE_ENCODERS

        if not self.encoder_state:
            return list(IMAGE_ENCODERS[:self.cfg.views])
        if not self._encoders:
            from ..encode.finetune import FineTunedLite0

            self._encoders = [FineTunedLite0(self.encoder_state, self.cfg.finetune_blocks),
                              *IMAGE_ENCODERS[1:self.cfg.views]]
        return self._encoders

    # -- training -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, img_emb: np.ndarray, q_emb: np.ndarray, answers: list[str], closed: np.ndarray,
            cases: list[dict], cfg: VqaConfig | None = None,
            facts: tuple[np.ndarray, np.ndarray, list[str], list[str]] | None = None,
            groups: Sequence[int] | None = None, picture_stats: np.ndarray | None = None,
            fact_texts: Sequence[str] | None = None,
            picture_copies: tuple[np.ndarray, Sequence[int]] | None = None) -> "Answerer":
        """Train on per-question picture embeddings, question embeddings, answers and answer types
        (question types come from ``cases[i]["question_type"]``).

        ``facts``: (picture embeddings, question embeddings, yes/no answers, question types) of
        generated closed questions (``facts.fact_questions``), trained on with weight
        ``cfg.fact_weight``; they are not part of the memory of training cases.

        ``groups``: per training row, a group id (rows of one paraphrase group share one; -1: alone);
        with ``cfg.context`` a row's retrieved context never holds a row of its group (module notes).

        ``picture_stats``: per training row, its picture's pixel statistics (``gate.pixel_stats``), which
        the picture gate is calibrated on beside the embeddings (None: the embedding signal alone).

        With ``cfg.question_words`` the networks also read the question words (``vqa.lexical``): the
        training rows' texts are ``cases[i]["question"]``, the generated ones' ``fact_texts``.

        ``picture_copies``: with ``cfg.picture_augment`` = K, (augmented copies (pictures, >= K, width) of
        the training pictures, ``vqa.augment``; per row, the set's own then the generated ones, its
        picture's index); each epoch reads a row's picture as its clean embedding or one of its K copies.
        """
        cfg = cfg or VqaConfig()
        if facts is None or not len(facts[2]):
            facts = (np.zeros((0, img_emb.shape[1]), np.float32), np.zeros((0, q_emb.shape[1]), np.float32), [], [])
        f_img, f_q, f_ans, f_types = facts
        norm = [normalize_answer(a) for a in answers] + [normalize_answer(a) for a in f_ans]
        types = [main_question_type(c.get("question_type", "")) for c in cases] + [main_question_type(t) for t in f_types]
        vocab, qtypes = sorted(set(norm)), sorted(set(types))
        index, tindex = {a: i for i, a in enumerate(vocab)}, {t: i for i, t in enumerate(qtypes)}
        y = np.array([index[a] for a in norm], dtype=np.int64)
        t = np.array([tindex[x] for x in types], dtype=np.int64)
        closed_all = np.concatenate([np.asarray(closed, dtype=bool), np.ones(len(f_ans), dtype=bool)])
        type_masks = np.zeros((2, len(vocab)), dtype=bool)
        type_masks[0, y[closed_all]] = True
        type_masks[1, y[~closed_all]] = True
        qtype_masks = np.zeros((len(qtypes), len(vocab)), dtype=bool)
        qtype_masks[t, y] = True
        if img_emb.shape[1] % cfg.views:
            raise ValueError(f"picture embeddings of width {img_emb.shape[1]} do not split into {cfg.views} views")
        mean, std = img_emb.mean(0), img_emb.std(0) + 1e-3
        xi = ((np.concatenate([img_emb, f_img]) - mean) / std).astype(np.float32)
        q_mean = q_std = None
        if cfg.question_scale:
            # e5 vectors are L2-normalised (per-dimension sd about 0.02) while a standardised picture
            # dimension has sd 1: read raw, the question starts drowned (the plain MLP's fault, 9dc096b)
            q_mean, q_std = q_emb.mean(0).astype(np.float32), (q_emb.std(0) + 1e-3).astype(np.float32)
        xq = np.concatenate([q_emb, f_q]).astype(np.float32)
        if q_mean is not None:
            xq = ((xq - q_mean) / q_std).astype(np.float32)
        texts = [c.get("question") for c in cases]  # the question words and the choice rule read them
        has_texts = len(cases) == len(answers) and all(isinstance(x, str) for x in texts)
        if cfg.question_words:
            if not has_texts:
                raise ValueError(f"question_words is {cfg.question_words}: every training case needs its question "
                                 "text (cases[i]['question'])")
            if len(f_ans) and (fact_texts is None or len(fact_texts) != len(f_ans)):
                raise ValueError(f"question_words is {cfg.question_words}: the {len(f_ans)} generated questions need "
                                 f"their texts (fact_texts has {None if fact_texts is None else len(fact_texts)})")
            xq = _with_words(xq, [*texts, *(fact_texts or [])], cfg.question_words)
        weight = np.concatenate([np.ones(len(answers)), np.full(len(f_ans), cfg.fact_weight)])
        copies = None
        if cfg.picture_augment:
            if picture_copies is None:
                raise ValueError(f"picture_augment is {cfg.picture_augment}: fit needs the training pictures' "
                                 "augmented copies (picture_copies; vqa.augment.picture_copies)")
            aug, pic = np.asarray(picture_copies[0], np.float32), np.asarray(picture_copies[1], np.int64)
            if aug.ndim != 3 or aug.shape[1] < cfg.picture_augment or aug.shape[2] != img_emb.shape[1] \
                    or len(pic) != len(xi) or (len(pic) and not 0 <= pic.min() <= pic.max() < len(aug)):
                raise ValueError(f"picture_copies: {aug.shape} copies and {len(pic)} row pictures; expected "
                                 f"(pictures, >= {cfg.picture_augment}, {img_emb.shape[1]}) and {len(xi)} rows")
            copies = (((aug[:, :cfg.picture_augment] - mean) / std).astype(np.float32).transpose(1, 0, 2), pic)
        n = len(answers)
        model = cls(cfg, vocab, type_masks, qtypes, qtype_masks, mean.astype(np.float32), std.astype(np.float32),
                    [], _l2(img_emb), q_emb.astype(np.float32), y[:n], cases,
                    {"n_train": n, "n_fact_questions": len(f_ans)}, q_mean=q_mean, q_std=q_std)
        model.picture_gate = calibrate_gate(model.mem_img, picture_stats)  # the training pictures alone (vqa.gate)
        if cfg.choice_answers and has_texts:
            # whether this set's choice questions are answered with a named choice (vqa.choices)
            model.meta["choice_training"] = calibrate(model.choice_index, texts, answers)
        ctx = None
        if cfg.context:
            # leave-self-out (and leave-group-out) retrieval: no row's context holds the row itself
            own = model.training_exclusion(groups)
            ctx = np.concatenate([model.context_features(img_emb, q_emb, own)[0],
                                  model.context_features(f_img, f_q)[0]]).astype(np.float32)
        t0 = time.perf_counter()
        real = np.arange(len(y)) < len(answers)
        model.members = _fit_members(cfg, (xi, xq, y, closed_all, t, weight, real, len(vocab), len(qtypes), ctx, copies))
        if cfg.decoder:
            from .decoder import decoder_inputs, fit_decoder

            t1 = time.perf_counter()
            open_rows = np.flatnonzero(~np.asarray(closed, dtype=bool))
            x = decoder_inputs(img_emb[open_rows], q_emb[open_rows], model.img_mean, model.img_std, cfg.views)
            with torch_threads(cfg.threads):
                model.decoder_words, model.decoder_state = fit_decoder(
                    x, [answers[i] for i in open_rows], cfg.decoder, cfg.decoder_epochs, q_emb.shape[1])
            model.meta["decoder_fit_seconds"] = time.perf_counter() - t1
        model.meta["fit_seconds"] = time.perf_counter() - t0
        return model

    # -- answering ------------------------------------------------------------------------------
    def _networks(self):
        if not self._nets:
            for state in self.members:
                n_ans, img_dim = len(self.vocab), self.img_mean.shape[0] // self.cfg.views
                net = _build_net(self.cfg, n_ans, img_dim, self.mem_q.shape[1] + self.cfg.question_words,
                                 len(self.qtypes))
                net.load_state_dict(state)
                net.eval()
                self._nets.append(net)
        return self._nets

    def _question_input(self, q_emb: np.ndarray, questions: Sequence[str] | None = None) -> np.ndarray:
        """The question as the networks read it: the embedding (standardised with ``cfg.question_scale``)
        and, with ``cfg.question_words``, the words of the question texts ``questions`` beside it."""
        q = np.atleast_2d(q_emb).astype(np.float32)
        q = q if self.q_mean is None else ((q - self.q_mean) / self.q_std).astype(np.float32)
        if not self.cfg.question_words:
            return q
        if questions is None:
            raise ValueError(f"this model reads the question words (question_words={self.cfg.question_words}), so "
                             "it needs the question texts: questions=[...] beside the embeddings")
        if isinstance(questions, str) or len(questions) != len(q):
            raise ValueError(f"questions holds {1 if isinstance(questions, str) else len(questions)} "
                             f"{'string' if isinstance(questions, str) else 'texts'} for {len(q)} question "
                             "embeddings; expected one text per row")
        return _with_words(q, questions, self.cfg.question_words)

    def question_type_probs(self, img_emb: np.ndarray, q_emb: np.ndarray,
                            context: np.ndarray | None = None, questions: Sequence[str] | None = None) -> np.ndarray:
        """(n, qtypes): the ensemble's mean question-type probabilities (columns in ``qtypes`` order;
        ``questions``: the texts, which a model with ``cfg.question_words`` needs)."""
        import torch

        xi = torch.from_numpy(((np.atleast_2d(img_emb) - self.img_mean) / self.img_std).astype(np.float32))
        xq = torch.from_numpy(self._question_input(q_emb, questions))
        xc = None
        if self.cfg.context:
            if context is None:
                context = self.context_features(img_emb, q_emb)[0]
            xc = torch.from_numpy(np.asarray(context, dtype=np.float32))
        out = 0.0
        with torch.inference_mode(), torch_threads(self.cfg.threads):
            for k, net in enumerate(self._networks()):
                out = out + torch.softmax(net(_view(xi, k, self.cfg.views), xq, xc)[2], 1).numpy()
        return out / len(self.members)

    def classifier_probs(self, img_emb: np.ndarray, q_emb: np.ndarray, context: np.ndarray | None = None,
                         questions: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(answer probabilities reweighted by answer type and question type, P(closed)) from the
        network ensemble: an answer keeps P(closed) of its weight if it was seen as a closed answer,
        1 - P(closed) if seen as open, and is scaled by the probability of the question types it was
        seen with (an answer never given to a modality question does not answer one). ``context``: the
        rows' context features (``context_features``); a context model retrieves them when not given.
        ``questions``: the rows' texts, which a model with ``cfg.question_words`` needs."""
        import torch

        xi = torch.from_numpy(((img_emb - self.img_mean) / self.img_std).astype(np.float32))
        xq = torch.from_numpy(self._question_input(q_emb, questions))
        xc = None
        if self.cfg.context:
            if context is None:
                context = self.context_features(img_emb, q_emb)[0]
            xc = torch.from_numpy(np.asarray(context, dtype=np.float32))
        probs, p_closed, p_type = 0.0, 0.0, 0.0
        with torch.inference_mode(), torch_threads(self.cfg.threads):
            for k, net in enumerate(self._networks()):
                logits, kind, qtype = net(_view(xi, k, self.cfg.views), xq, xc)
                probs = probs + torch.softmax(logits, 1).numpy()
                p_closed = p_closed + torch.sigmoid(kind).numpy()
                p_type = p_type + torch.softmax(qtype, 1).numpy()
        probs, p_closed, p_type = (x / len(self.members) for x in (probs, p_closed, p_type))
        weight = self.type_masks[0][None] * p_closed[:, None] + self.type_masks[1][None] * (1 - p_closed[:, None])
        probs = probs * weight * (p_type @ self.qtype_masks)
        return probs / np.maximum(probs.sum(1, keepdims=True), 1e-12), p_closed

    @cached_property
    def choice_index(self) -> ChoiceIndex:
        """The vocabulary's words for choice questions (``vqa.choices``), built once per model."""
        return ChoiceIndex(self.vocab)

    def choices_hold(self) -> bool:
        """Whether choice questions are answered with a named choice (``vqa.choices``): the option is on
        and the training set's own choice questions followed the rule (``meta["choice_training"]``,
        written by ``fit``; a model fitted without question texts has none and answers unrestricted)."""
        return bool(self.cfg.choice_answers and self.meta.get("choice_training", {}).get("holds"))

    def picture_cos(self, img_emb: np.ndarray) -> np.ndarray:
        """(n, memory) cosine of each asked picture to each training row's picture, computed once per
        distinct training picture (a picture is asked about by ~8 training questions) and spread."""
        if not self._pictures:
            distinct, rows = np.unique(self.mem_img, axis=0, return_inverse=True)
            self._pictures.extend([np.ascontiguousarray(distinct.T), rows.reshape(-1)])
        distinct_t, rows = self._pictures
        return (_l2(img_emb) @ distinct_t)[:, rows]

    def same_image(self, img_emb: np.ndarray) -> np.ndarray:
        """(n, memory) boolean: which training rows show the asked picture itself."""
        return self.picture_cos(img_emb) >= self.cfg.same_image_cos

    def memory_probs(self, img_emb: np.ndarray, q_emb: np.ndarray, same: np.ndarray | None = None,
                     sim_q: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(answer distribution from same-picture close questions, blend weight per question);
        ``same`` / ``sim_q``: ``same_image`` and the question cosines to the memory, when already known."""
        same = self.same_image(img_emb) if same is None else same
        sim_q = q_emb @ self.mem_q.T if sim_q is None else sim_q
        w = same * (sim_q >= self.cfg.question_cos) * np.exp((sim_q - 1.0) / self.cfg.memory_temperature)
        dist = np.zeros((len(q_emb), len(self.vocab)))
        rows = np.flatnonzero(same.any(0))  # only the memory rows of asked pictures weigh anything
        np.add.at(dist.T, self.mem_answer[rows], w[:, rows].T)
        mass = dist.sum(1, keepdims=True)
        dist = np.where(mass > 0, dist / np.maximum(mass, 1e-12), 0.0)
        return dist, self.cfg.memory_weight * (1.0 - np.exp(-mass[:, 0] / 0.5))

    def picture_prior_scores(self, img_emb: np.ndarray, q_emb: np.ndarray, same: np.ndarray | None = None,
                             sim_q: np.ndarray | None = None) -> np.ndarray:
        """(n, vocab) in [0, 1]: per answer, how close a training question *about the asked picture
        itself* (``same_image``) that had this answer is to the asked one: the largest
        exp((cosine - 1) / ``picture_prior_temperature``) over those rows (0: no such row). A blank,
        noisy or unseen picture matches no training picture, so every score is 0 there (``same`` /
        ``sim_q``: as in ``memory_probs``)."""
        img_emb, q_emb = np.atleast_2d(img_emb), np.atleast_2d(q_emb)
        same = self.same_image(img_emb) if same is None else same
        cos = np.minimum(q_emb @ self.mem_q.T if sim_q is None else sim_q, 1.0)
        k = np.where(same, np.exp((cos - 1.0) / self.cfg.picture_prior_temperature), 0.0)
        out = np.zeros((len(img_emb), len(self.vocab)))
        rows = np.flatnonzero(same.any(0))  # only the memory rows of asked pictures
        np.maximum.at(out.T, self.mem_answer[rows], k[:, rows].T)
        return out

    def predict(self, img_emb: np.ndarray, q_emb: np.ndarray, context: np.ndarray | None = None,
                decoder: bool = True, questions: Sequence[str] | None = None, gate: bool = True,
                picture_stats: np.ndarray | None = None) -> list[Prediction]:
        """Answers for rows of picture and question embeddings (``context``: see ``classifier_probs``).
        With an answer decoder whose gate is open (``cfg.decoder_margin`` set) its answer replaces the
        classifier's where the gate lets it (``decoder.gate_answers``: never for a question that is yes/no
        in form, so such a model needs the rows' question texts, ``questions``); ``decoder=False``: never.
        The picture gate (``vqa.gate``) then turns the answer about an unreadable picture into an
        abstention (``Prediction.abstained``, answer ""); ``gate=False``: every row answered (probes).
        ``picture_stats``: the rows' pixel statistics (``gate.pixel_stats``) where the pixels are at hand
        (None: the gate reads the embedding alone). A model with ``cfg.question_words`` reads the
        question texts too, so it needs ``questions`` always (a clear error without them)."""
        img_emb, q_emb = np.atleast_2d(img_emb), np.atleast_2d(q_emb)
        probs, p_closed = self.classifier_probs(img_emb, q_emb, context, questions)
        pic_cos = self.picture_cos(img_emb)  # shared by the gate, the memory and the prior
        same, sim_q = pic_cos >= self.cfg.same_image_cos, q_emb @ self.mem_q.T
        mem, lam = self.memory_probs(img_emb, q_emb, same, sim_q)
        probs = (1 - lam[:, None]) * probs + lam[:, None] * mem
        if self.cfg.picture_prior:
            probs = probs * (1.0 + self.cfg.picture_prior * self.picture_prior_scores(img_emb, q_emb, same, sim_q))
            probs = probs / np.maximum(probs.sum(1, keepdims=True), 1e-12)
        chosen: list = [None] * len(probs)
        if questions is not None and self.choices_hold():
            probs, chosen = restrict_to_choices(probs, questions, self.choice_index)
        best = probs.argmax(1)
        preds = [Prediction(self.vocab[b], float(probs[i, b]), bool(p_closed[i] >= 0.5), float(p_closed[i]),
                            float(lam[i]), choices=tuple(self.vocab[j] for j in chosen[i] or ()))
                 for i, b in enumerate(best)]
        if decoder and self.decoder_words and self.cfg.decoder_margin is not None:
            if questions is None:
                raise ValueError("this model's answer decoder never answers a yes/no question, so it needs the "
                                 "question texts: predict(..., questions=[...]) (or decoder=False)")
            preds = self.gated(preds, img_emb, q_emb, self.cfg.decoder_margin, self.cfg.decoder_novel_only,
                               questions=questions)
        nearest = pic_cos.max(1) if pic_cos.shape[1] else np.full(len(preds), np.nan)
        for i, p in enumerate(preds):
            p.nearest_picture_cos = float(nearest[i])
        return self.gate_predictions(preds, nearest, picture_stats) if gate else preds

    def gate_predictions(self, preds: list[Prediction], nearest: np.ndarray,
                         stats: np.ndarray | None = None) -> list[Prediction]:
        """``preds`` with an abstention (answer "", probability 0, the reason) wherever the picture gate
        (``vqa.gate``: ``picture_gate``; nothing without one) finds the picture unreadable."""
        from dataclasses import replace as _replace

        from .gate import reason, unreadable

        stats = None if stats is None else np.atleast_2d(np.asarray(stats, dtype=np.float32))
        off = unreadable(nearest, self.picture_gate, stats)
        return [_replace(p, answer="", prob=0.0, decoded=False, abstained=True,
                         reason=reason(float(nearest[i]), self.picture_gate, None if stats is None else stats[i]))
                if off[i] else p for i, p in enumerate(preds)]

    def needs_pixels(self, img_emb: np.ndarray) -> bool:
        """Whether the gate would read the picture's pixel statistics: a calibration holding them and a
        picture that is not a training picture (a training picture passes them by construction)."""
        return bool(self.picture_gate.get("pixel")) and bool(
            (self.picture_cos(img_emb).max(1) < self.cfg.same_image_cos).any())

    def gate_status(self) -> str:
        """The picture gate's state for an answer's metadata (``vqa.gate.status``)."""
        from .gate import status

        return status(self.picture_gate)

    def decode(self, img_emb: np.ndarray, q_emb: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(the answer decoder's answer per row, its sequence probability); an error without a decoder."""
        from .decoder import build_decoder, decode, decoder_inputs

        if not self.decoder_words:
            raise ValueError("this model has no answer decoder (train it with decoder > 0: --decoder H)")
        x = decoder_inputs(img_emb, q_emb, self.img_mean, self.img_std, self.cfg.views)
        if not self._decoder:
            net = build_decoder(len(self.decoder_words), x.shape[1], self.cfg.decoder, self.mem_q.shape[1])
            net.load_state_dict(self.decoder_state)
            net.eval()
            self._decoder.append(net)
        with torch_threads(self.cfg.threads):
            return decode(self._decoder[0], self.decoder_words, x)

    def gated(self, preds: list[Prediction], img_emb: np.ndarray, q_emb: np.ndarray, margin: float,
              novel_only: bool, decoded: tuple[list[str], np.ndarray] | None = None, *,
              questions: Sequence[str]) -> list[Prediction]:
        """The classifier's predictions with the decoder's answer where the gate (``margin``,
        ``novel_only``: ``decoder.gate_answers``) lets it through (``decoded``: given, else decoded here);
        ``questions``: the rows' question texts (a question yes/no in form keeps the classifier's answer). A
        row answered among its question's named choices (``Prediction.choices``, ``vqa.choices``) keeps its
        answer too: the decoder writes free text, and "right or left?" is answered by one of the two."""
        from dataclasses import replace as _replace

        from .decoder import gate_answers, yes_no_form

        if len(questions) != len(preds):
            raise ValueError(f"{len(preds)} predictions but {len(questions)} question texts")
        texts, p_dec = decoded if decoded is not None else self.decode(img_emb, q_emb)
        use = gate_answers([p.answer for p in preds], np.array([p.prob for p in preds]),
                           np.array([p.p_closed for p in preds]), texts, p_dec, margin, novel_only, set(self.vocab),
                           np.array([yes_no_form(q) for q in questions], dtype=bool))
        return [_replace(p, answer=texts[i], prob=float(p_dec[i]), decoded=True)
                if use[i] and not p.choices else p for i, p in enumerate(preds)]

    def similar_cases(self, img_emb: np.ndarray, q_emb: np.ndarray, k: int = 3,
                      exclude: np.ndarray | None = None) -> list[dict]:
        """The k training cases closest in picture and question (mean of the two cosines), with their
        answers (``neighbours``; ``exclude``: memory rows never returned)."""
        idx, score = neighbours(img_emb, q_emb, self.mem_img, self.mem_q, k,
                                None if exclude is None else np.atleast_2d(exclude), self.picture_cos(img_emb))
        return [{**self.cases[i], "score": float(sc)} for i, sc in zip(idx[0], score[0]) if i >= 0]

    def asked_rows(self, img_emb: np.ndarray, q_emb: np.ndarray) -> np.ndarray:
        """(n, memory) boolean: the training rows that ask the asked question itself (the same picture
        and the same text), which retrieved context never holds."""
        return self.same_image(img_emb) & ((np.atleast_2d(q_emb) @ self.mem_q.T) >= SAME_TEXT_COS)

    def training_exclusion(self, groups: Sequence[int] | None = None) -> np.ndarray:
        """(memory, memory) boolean: what each training row's context leaves out in training — the row
        itself, every row asking the same question about the same picture, and its group's rows."""
        n = len(self.mem_answer)
        own = self.asked_rows(self.mem_img, self.mem_q)
        own[np.arange(n), np.arange(n)] = True
        if groups is not None:
            g = np.asarray(groups)
            if len(g) != n:
                raise ValueError(f"groups has {len(g)} entries for {n} training rows")
            own |= (g[:, None] == g[None, :]) & (g[:, None] >= 0)
        return own

    def context_features(self, img_emb: np.ndarray, q_emb: np.ndarray,
                         exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features (n, vocab + 1), memory rows (n, k), scores (n, k)) of the retrieved context: the
        ``cfg.context`` training cases closest in picture and question, never a row that asks the asked
        question (``asked_rows``) nor one ``exclude`` marks; features are their answers' distribution
        weighted by softmax(score / ``context_temperature``) and the best score (row -1: none left)."""
        img_emb, q_emb = np.atleast_2d(img_emb), np.atleast_2d(q_emb)
        if not len(img_emb):
            return np.zeros((0, len(self.vocab) + 1), np.float32), np.zeros((0, 0), int), np.zeros((0, 0))
        own = self.asked_rows(img_emb, q_emb)
        if exclude is not None:
            own = own | exclude
        idx, score = neighbours(img_emb, q_emb, self.mem_img, self.mem_q, max(self.cfg.context, 1), own)
        answers = np.where(idx >= 0, self.mem_answer[np.maximum(idx, 0)], -1)
        return context_vectors(answers, score, len(self.vocab), self.cfg.context_temperature), idx, score

    def context_from_answers(self, answers: Sequence[Sequence[str]],
                             scores: Sequence[Sequence[float]]) -> np.ndarray:
        """Context features from given neighbours (their answers and similarity scores per row: the
        examples a harness put in the prompt); an answer outside the vocabulary carries no mass."""
        k = max([len(a) for a in answers] + [1])
        index = {a: i for i, a in enumerate(self.vocab)}
        ans = np.full((len(answers), k), -1)
        sc = np.full((len(answers), k), -np.inf)
        for r, (row_a, row_s) in enumerate(zip(answers, scores)):
            for j, (a, v) in enumerate(zip(row_a, row_s)):
                ans[r, j], sc[r, j] = index.get(normalize_answer(a), -1), float(v)
        return context_vectors(ans, sc, len(self.vocab), self.cfg.context_temperature)

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write ``weights.safetensors`` (ensemble + memory arrays) and ``config.json``."""
        from safetensors.numpy import save_file

        from ..atomic import begin_folder, file_sha256, write_text, write_with

        out = begin_folder(out_dir, "config.json")  # config.json marks a complete model: removed first, written last
        tensors = {"img_mean": self.img_mean, "img_std": self.img_std, "type_masks": self.type_masks.astype(np.uint8),
                   "qtype_masks": self.qtype_masks.astype(np.uint8),
                   "mem_img": self.mem_img.astype(np.float32), "mem_q": self.mem_q, "mem_answer": self.mem_answer}
        for m, state in enumerate(self.members):
            tensors.update({f"member{m}.{k}": v.numpy() for k, v in state.items()})
        tensors.update({f"encoder.{k}": np.asarray(v) for k, v in self.encoder_state.items()})
        tensors.update({f"decoder.{k}": v.numpy() for k, v in self.decoder_state.items()})
        if self.q_mean is not None:
            tensors.update({"q_mean": self.q_mean, "q_std": self.q_std})
        write_with(out / "weights.safetensors",
                   lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp)))
        config = {"format": FINETUNED_FORMAT if self.encoder_state else MODEL_FORMAT, "config": asdict(self.cfg), "vocab": self.vocab, "qtypes": self.qtypes,
                  "image_encoders": [f"{e}:1" if isinstance(e, str) else f"{e.name}:{e.version}"
                                     for e in self.image_encoders()],
                  "cases": self.cases, "meta": self.meta,
                  **({"decoder_words": self.decoder_words} if self.decoder_words else {}),
                  **({"picture_gate": self.picture_gate} if self.picture_gate else {}),
                  "weights_sha256": file_sha256(out / "weights.safetensors")}
        write_text(out / "config.json", json.dumps(config, indent=1, default=str))
        return out

    @classmethod
    def load(cls, model_dir: str | Path) -> "Answerer":
        """Read a model folder written by ``save``; a clear error when it is not one."""
        import torch
        from safetensors.numpy import load_file

        model_dir = Path(model_dir)
        cfg_path, w_path = model_dir / "config.json", model_dir / "weights.safetensors"
        if not cfg_path.is_file() or not w_path.is_file():
            raise FileNotFoundError(f"{model_dir}: not a VQA model folder (needs config.json and "
                                    "weights.safetensors from `medweave vqa train`)")
        config = json.loads(cfg_path.read_text())
        if config.get("format") not in (MODEL_FORMAT, FINETUNED_FORMAT):
            raise ValueError(f"{cfg_path}: field format is {config.get('format')!r}; expected {MODEL_FORMAT!r} "
                             f"or {FINETUNED_FORMAT!r}")
        if config.get("weights_sha256"):
            from ..atomic import file_sha256

            if file_sha256(w_path) != config["weights_sha256"]:
                raise ValueError(f"{w_path}: does not match config.json (weights_sha256): the file was changed "
                                 "after training; train the model again")
        t = load_file(str(w_path))
        known = set(VqaConfig.__dataclass_fields__)
        unknown = sorted(set(config["config"]) - known)
        if unknown:
            raise ValueError(f"{cfg_path}: unknown config keys {unknown}; allowed: {sorted(known)}")
        # a model saved before question_scale existed read its questions raw
        # (and without the picture prior)
        # (and without the picture prior); one saved before question_words read no question words,
        # one saved before picture_augment was trained without augmented copies, and one saved before
        # choice_answers answered choice questions unrestricted
        cfg = VqaConfig(**{"question_scale": False, "picture_prior": 0.0, "question_words": 0, "picture_augment": 0,
                           "choice_answers": False, **config["config"]})
        if cfg.question_scale != ("q_mean" in t and "q_std" in t):
            raise ValueError(f"{model_dir}: config question_scale is {cfg.question_scale} but the weights "
                             f"{'lack' if cfg.question_scale else 'hold'} q_mean/q_std; train the model again")
        members = [{k.split(".", 1)[1]: torch.from_numpy(v) for k, v in t.items() if k.startswith(f"member{m}.")}
                   for m in range(cfg.seeds)]
        decoder_state = {k.split(".", 1)[1]: torch.from_numpy(v) for k, v in t.items() if k.startswith("decoder.")}
        if bool(cfg.decoder) != bool(decoder_state) or bool(decoder_state) != bool(config.get("decoder_words")):
            raise ValueError(f"{model_dir}: config decoder is {cfg.decoder} but the folder holds "
                             f"{len(decoder_state)} decoder tensors and {len(config.get('decoder_words') or [])} "
                             "decoder words; train the model again")
        return cls(cfg, config["vocab"], t["type_masks"].astype(bool), config["qtypes"],
                   t["qtype_masks"].astype(bool), t["img_mean"], t["img_std"], members,
                   t["mem_img"], t["mem_q"], t["mem_answer"].astype(np.int64), config["cases"], config["meta"],
                   {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("encoder.")},
                   list(config.get("decoder_words") or []), decoder_state,
                   t.get("q_mean"), t.get("q_std"), _checked_gate(config.get("picture_gate"), cfg_path))


def calibrate_gate(mem_img: np.ndarray, stats: np.ndarray | None = None) -> dict:
    from .gate import calibrate

    return calibrate(mem_img, stats)


def _checked_gate(gate, cfg_path: Path) -> dict:
    """The saved picture-gate calibration ({} when absent: a model saved before the gate)."""
    from .gate import VERSIONS

    if not gate:
        return {}
    if not isinstance(gate, dict) or gate.get("version") not in VERSIONS or "threshold" not in gate:
        raise ValueError(f"{cfg_path}: field picture_gate is {gate!r}; expected a version of {list(VERSIONS)} "
                         "with a threshold (train the model again)")
    return dict(gate)


SAME_TEXT_COS = 0.999  # question embeddings this close are the same text (e5 gives 1.0 for equal strings)


def neighbours(img_emb: np.ndarray, q_emb: np.ndarray, mem_img: np.ndarray, mem_q: np.ndarray, k: int,
               exclude: np.ndarray | None = None, img_cos: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n, k), scores (n, k)) of the k memory rows closest to each asked (picture, question):
    score = mean of the picture cosine (``img_emb`` L2-normalised here, ``mem_img`` already) and the
    question cosine. A row ``exclude`` (n, memory) marks is never a candidate: when fewer than k are
    left, the missing places hold row -1 and score -inf. The one search behind ``similar_cases``, the
    answerer's retrieved context, the agents' ``similar_questions`` and the harness's ``context``.
    ``img_cos``: the picture cosines (n, memory), when already known (``Answerer.picture_cos``)."""
    if img_cos is None:
        img_cos = _l2(img_emb) @ np.atleast_2d(mem_img).T
    score = (img_cos + np.atleast_2d(q_emb) @ np.atleast_2d(mem_q).T) / 2
    if exclude is not None:
        score = np.where(exclude, -np.inf, score)
    k = min(k, score.shape[1])
    top = np.argsort(-score, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(score, top, axis=1)
    return np.where(np.isfinite(best), top, -1), best


def context_vectors(answers: np.ndarray, scores: np.ndarray, n_answers: int, temperature: float) -> np.ndarray:
    """(n, n_answers + 1): per row, the neighbours' answers (vocabulary indices, -1: none) weighted by
    softmax(score / temperature), then the best score (0 when there is no neighbour)."""
    out = np.zeros((len(answers), n_answers + 1), np.float32)
    for r in range(len(answers)):
        ok = (answers[r] >= 0) & np.isfinite(scores[r])
        if not ok.any():
            continue
        s = np.asarray(scores[r], dtype=np.float64)[ok]
        w = np.exp((s - s.max()) / temperature)
        np.add.at(out[r], answers[r][ok], w / w.sum())
        out[r, -1] = s.max()
    return out


WORDS_SCALE = 4.0  # the L2-normalised word vector times this: a question's ~13 unigrams and bigrams then read
#                   about +-1 each, as a standardised e5 dimension does


def _with_words(q: np.ndarray, texts: Sequence[str], width: int) -> np.ndarray:
    """The network's question input: ``q`` (n, d) and the texts' hashed words (``lexical``) side by side."""
    from .lexical import question_words

    return np.concatenate([q, WORDS_SCALE * question_words(list(texts), width)], axis=1).astype(np.float32)


def _view(x, member: int, views: int):
    """The picture view (block of columns of the last axis) that ensemble member ``member`` reads."""
    width = x.shape[-1] // views
    v = member % views
    return x[..., v * width:(v + 1) * width]


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
