"""The simplest baselines every VQA figure is printed beside (``benchmarks/vqa.py``).

- ``plain-mlp``: one two-layer MLP over the same frozen embeddings the answerer reads — the picture's
  first view and the question, each standardised on the training rows, concatenated — classifying over
  the training answers; no answer-type or question-type heads, no ensemble, no memory, no generated
  questions. Both inputs are standardised: the e5 question vector is L2-normalised (per-dimension sd
  about 0.02) while a standardised picture dimension has sd 1, so a question left raw is drowned by
  1,280 picture dimensions (the baseline then scored 0.509 on the test-like split, below the
  question-only guess). ``tune_plain_mlp`` fits it properly: batch size, learning rate, weight decay
  and epochs chosen on an inner validation split of the *training* side (same split kind), never on
  the held-out questions.
- ``question-only``: no picture at all; the most common training answer among the ``k`` training
  questions closest to the asked one (e5 cosine). What a model that ignores the picture can reach.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from .features import torch_threads
from .normalize import normalize_answer


@dataclass(frozen=True)
class MlpSettings:
    """One setting of the plain MLP's fit."""

    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    hidden: int = 512
    dropout: float = 0.3


# the inner-validation grid: every (batch size, lr, weight decay); epochs read at these checkpoints of one fit
TUNE_BATCH = (32, 128, 512)
TUNE_LR = (3e-4, 1e-3, 3e-3)
TUNE_WEIGHT_DECAY = (1e-2, 1e-1)
TUNE_EPOCHS = (10, 20, 40, 60, 100)


def _standardiser(train_img: np.ndarray, train_q: np.ndarray, views: int):
    width = train_img.shape[1] // views
    parts = [(train_img[:, :width].mean(0), train_img[:, :width].std(0) + 1e-3),
             (train_q.mean(0), train_q.std(0) + 1e-3)]

    def inputs(img, q):
        import torch

        x = [(img[:, :width] - parts[0][0]) / parts[0][1], (q - parts[1][0]) / parts[1][1]]
        return torch.from_numpy(np.concatenate(x, axis=1).astype(np.float32))

    return inputs


def _fit(x, y, n_out: int, s: MlpSettings, seed: int, threads: int,
         checkpoints: dict[int, Callable] | None = None):
    """Train the MLP; ``checkpoints``: epoch -> callback(net) called (in eval mode) after that epoch."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], s.hidden), nn.ReLU(), nn.Dropout(s.dropout), nn.Linear(s.hidden, n_out))
    opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    with torch_threads(threads):
        for epoch in range(1, s.epochs + 1):
            net.train()
            perm = torch.randperm(len(y), generator=gen)
            for b in range(0, len(y), s.batch_size):
                j = perm[b:b + s.batch_size]
                loss = F.cross_entropy(net(x[j]), y[j])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if checkpoints and epoch in checkpoints:
                net.eval()
                with torch.inference_mode():
                    checkpoints[epoch](net)
        net.eval()
    return net


def _vocab(answers: Sequence[str]):
    import torch

    norm = [normalize_answer(a) for a in answers]
    vocab = sorted(set(norm))
    index = {a: i for i, a in enumerate(vocab)}
    return vocab, torch.tensor([index[a] for a in norm])


def plain_mlp(train_img: np.ndarray, train_q: np.ndarray, answers: list[str], held_img: np.ndarray,
              held_q: np.ndarray, views: int = 2, hidden: int = 512, epochs: int = 60, batch_size: int = 128,
              lr: float = 1e-3, dropout: float = 0.3, seed: int = 0, threads: int = 1,
              weight_decay: float = 1e-2) -> list[str]:
    """Answers of a plain two-layer MLP on [picture view 0, question] (each standardised on the
    training rows) trained on the training rows."""
    import torch

    inputs = _standardiser(train_img, train_q, views)
    vocab, y = _vocab(answers)
    s = MlpSettings(epochs, batch_size, lr, weight_decay, hidden, dropout)
    net = _fit(inputs(train_img, train_q), y, len(vocab), s, seed, threads)
    with torch_threads(threads), torch.inference_mode():
        best = net(inputs(held_img, held_q)).argmax(1).numpy() if len(held_q) else np.zeros(0, int)
    return [vocab[int(b)] for b in best]


def tune_plain_mlp(train_img: np.ndarray, train_q: np.ndarray, answers: list[str], inner: tuple,
                   views: int = 2, seed: int = 0, threads: int = 1, batch_sizes=TUNE_BATCH, lrs=TUNE_LR,
                   weight_decays=TUNE_WEIGHT_DECAY, epochs=TUNE_EPOCHS) -> tuple[MlpSettings, list[dict]]:
    """The plain MLP's setting with the best exact-match accuracy on ``inner`` = (fit rows, validation
    rows), two index arrays into the *training* rows (an inner split of the training side: nothing
    held out is read). Every (batch size, lr, weight decay) is fitted once and read after each of
    ``epochs``; ties go to the earlier grid entry (weight decay, lr, batch size, epochs, each in the
    order given: the defaults try small values first). Returns the
    setting and every grid row (its settings and inner accuracy)."""
    fit_rows, val_rows = (np.asarray(r, dtype=int) for r in inner)
    if not len(fit_rows) or not len(val_rows):
        raise ValueError(f"tune_plain_mlp: the inner split has {len(fit_rows)} fit and {len(val_rows)} "
                         "validation rows; both must be non-empty")
    inputs = _standardiser(train_img[fit_rows], train_q[fit_rows], views)
    vocab, y = _vocab([answers[i] for i in fit_rows])
    x, xv = inputs(train_img[fit_rows], train_q[fit_rows]), inputs(train_img[val_rows], train_q[val_rows])
    truth = np.array([vocab.index(a) if a in vocab else -1 for a in (normalize_answer(answers[i]) for i in val_rows)])
    rows = []
    for wd in weight_decays:
        for lr in lrs:
            for bs in batch_sizes:
                scores: dict[int, float] = {}

                def reader(e: int):
                    def read(net) -> None:
                        scores[e] = float((net(xv).argmax(1).numpy() == truth).mean())
                    return read

                _fit(x, y, len(vocab), MlpSettings(max(epochs), bs, lr, wd), seed, threads,
                     {e: reader(e) for e in epochs})
                rows.extend({**asdict(MlpSettings(e, bs, lr, wd)), "inner_acc": scores[e]} for e in sorted(epochs))
    best = max(rows, key=lambda r: r["inner_acc"])  # max keeps the first of equal rows
    return MlpSettings(**{k: v for k, v in best.items() if k != "inner_acc"}), rows


def question_only(train_q: np.ndarray, answers: list[str], held_q: np.ndarray, k: int = 5) -> list[str]:
    """The most common training answer among the ``k`` nearest training questions (ties: the nearest)."""
    norm = [normalize_answer(a) for a in answers]
    out = []
    for row in np.atleast_2d(held_q) if len(held_q) else []:
        near = np.argsort(-(train_q @ row))[:k]
        counts = Counter(norm[i] for i in near)
        top = max(counts.values())
        out.append(next(norm[i] for i in near if counts[norm[i]] == top))
    return out
