"""The simplest baselines every VQA figure is printed beside (``benchmarks/vqa.py``).

- ``plain-mlp``: one two-layer MLP over the same frozen embeddings the answerer reads — the picture's
  first view (standardised) and the question, concatenated — classifying over the training answers;
  no answer-type or question-type heads, no ensemble, no memory, no generated questions.
- ``question-only``: no picture at all; the most common training answer among the ``k`` training
  questions closest to the asked one (e5 cosine). What a model that ignores the picture can reach.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .features import torch_threads
from .normalize import normalize_answer


def plain_mlp(train_img: np.ndarray, train_q: np.ndarray, answers: list[str], held_img: np.ndarray,
              held_q: np.ndarray, views: int = 2, hidden: int = 512, epochs: int = 60, batch_size: int = 128,
              lr: float = 1e-3, dropout: float = 0.3, seed: int = 0, threads: int = 1) -> list[str]:
    """Answers of a plain two-layer MLP on [picture view 0, question] trained on the training rows."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    width = train_img.shape[1] // views
    mean, std = train_img[:, :width].mean(0), train_img[:, :width].std(0) + 1e-3

    def inputs(img, q):
        return torch.from_numpy(np.concatenate([(img[:, :width] - mean) / std, q], axis=1).astype(np.float32))

    norm = [normalize_answer(a) for a in answers]
    vocab = sorted(set(norm))
    index = {a: i for i, a in enumerate(vocab)}
    y = torch.tensor([index[a] for a in norm])
    x = inputs(train_img, train_q)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, len(vocab)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    with torch_threads(threads):
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=gen)
            for b in range(0, len(y), batch_size):
                j = perm[b:b + batch_size]
                loss = F.cross_entropy(net(x[j]), y[j])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.inference_mode():
            best = net(inputs(held_img, held_q)).argmax(1).numpy() if len(held_q) else np.zeros(0, int)
    return [vocab[int(b)] for b in best]


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
