"""The answer decoder: a small word-level GRU that writes an open answer word by word, so it can give
answers that no training question had ("mr flair" from the words of "mri flair" and "mr t2").

Why (measured on the test-like split, seeds 0-2; README "Answers never seen in training"): 24% of the
held-out open questions (43-45 of 183) have a reference answer that is not among the training answers,
so a classifier over the training answers can never give them; 17-18 of those are made only of words
that training answers use, which a decoder over those words can in principle write; 0-2 are a span of
the question and 7-9 a phrase of the shipped report corpus, too few to build on.

- Words: the tokens of the normalised training answers of open questions (``normalize.tokens``), plus
  an end mark. Answers longer than ``MAX_WORDS`` words are left out of its training.
- Conditioning: the answerer's standardised 224 view of the picture and the question embedding,
  projected to ``hidden`` units (the GRU's first state and, at every step, an input beside the word
  and beside the GRU's output where the next word is read, so each word depends on the picture and
  question directly, not only through the words before it).
- Decoding: beam search (width ``BEAM``); an answer's score is its sequence probability (end mark
  included), which the answerer's gate compares with the classifier's own probability
  (``gate_answers``; the gate's setting is chosen on an inner split of the training side:
  ``pipeline.choose_decoder_gate``).
- Yes/no questions are never the decoder's (``gate_answers``): a question that is yes/no in its
  grammatical form (``yes_no_form``), or whose classifier answer is yes/no, keeps the classifier's
  answer whatever P(closed) says. The decoder is only trained on open answers, and before this rule
  it answered yes/no questions the closed head had taken as open ("Are structures associated with the
  midbrain located in this image?" -> "pons"), costing closed accuracy 0.4-1.4 points (README).
"""

from __future__ import annotations

import re

import numpy as np

from .normalize import tokens

MAX_WORDS = 12
BEAM = 5
END = "</s>"
GATE_MARGINS = (-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.5)  # the grid the inner split chooses from
# English auxiliary (and modal) verbs that open a yes/no question ("Is there ...", "Does the ...", "Can you ...")
AUXILIARIES = frozenset("am is are was were do does did have has had can could will would shall should "
                        "may might must".split())
ELLIPTICAL = frozenset({"any", "anything"})  # "Any evidence of ...?": "Is there any ...?" with the verb left out
ALTERNATIVES = frozenset({"or", "vs", "versus"})  # "Is this an MRI or a CT?" asks for one of the words, not yes/no
_WORD = re.compile(r"[a-z]+")


def build_decoder(n_words: int, in_dim: int, hidden: int, q_dim: int):
    """The network: conditioning projection, word embedding, GRU and word logits. The last ``q_dim``
    inputs (the question embedding) are standardised by the training rows' mean and sd, kept as
    buffers: e5 vectors are L2-normalised (per-dimension sd about 0.02) and would be drowned beside
    the standardised picture otherwise."""
    import torch
    from torch import nn

    class AnswerDecoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cond = nn.Sequential(nn.Dropout(0.2), nn.Linear(in_dim, hidden), nn.GELU())
            self.start = nn.Linear(hidden, hidden)
            self.embed = nn.Embedding(n_words + 1, 128)  # row n_words: the start mark
            self.gru = nn.GRU(128 + hidden, hidden, batch_first=True)
            self.out = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * hidden, n_words))
            self.register_buffer("q_mean", torch.zeros(q_dim))
            self.register_buffer("q_std", torch.ones(q_dim))

        def condition(self, x: "torch.Tensor"):
            q = (x[:, in_dim - q_dim:] - self.q_mean) / self.q_std
            c = self.cond(torch.cat([x[:, :in_dim - q_dim], q], 1))
            return c, torch.tanh(self.start(c)).unsqueeze(0)

        def step(self, words: "torch.Tensor", c: "torch.Tensor", h: "torch.Tensor"):
            """(log-probabilities of the next word (n, words), next state) after ``words`` (n, t)."""
            e = self.embed(words)
            cc = c.unsqueeze(1).expand(-1, e.shape[1], -1)
            o, h = self.gru(torch.cat([e, cc], 2), h)
            return torch.log_softmax(self.out(torch.cat([o, cc], 2)), -1), h

    return AnswerDecoder()


def decoder_inputs(img: np.ndarray, q: np.ndarray, img_mean: np.ndarray, img_std: np.ndarray,
                   views: int) -> np.ndarray:
    """The decoder's input rows: the standardised first picture view beside the question embedding."""
    width = img_mean.shape[0] // views
    xi = (np.atleast_2d(img)[:, :width] - img_mean[:width]) / img_std[:width]
    return np.concatenate([xi, np.atleast_2d(q)], 1).astype(np.float32)


def fit_decoder(x: np.ndarray, answers: list[str], hidden: int, epochs: int, q_dim: int, seed: int = 0,
                lr: float = 2e-3, batch_size: int = 64) -> tuple[list[str], dict]:
    """(word list, state dict) of a decoder trained by teacher forcing on input rows ``x`` (whose last
    ``q_dim`` columns are the question embedding) and their answers (open questions only; the caller
    selects them)."""
    import torch
    from torch.nn import functional as F

    seqs = [tokens(a) for a in answers]
    keep = [i for i, s in enumerate(seqs) if 0 < len(s) <= MAX_WORDS]
    if not keep:
        raise ValueError("answer decoder: no open training answer of 1 to "
                         f"{MAX_WORDS} words to learn from")
    words = sorted({w for i in keep for w in seqs[i]}) + [END]
    index = {w: j for j, w in enumerate(words)}
    start, pad = len(words), -100
    length = max(len(seqs[i]) for i in keep) + 1
    target = np.full((len(keep), length), pad, np.int64)
    inp = np.full((len(keep), length), start, np.int64)
    for r, i in enumerate(keep):
        ids = [index[w] for w in seqs[i]] + [index[END]]
        target[r, :len(ids)] = ids
        inp[r, 1:len(ids)] = ids[:-1]
    torch.manual_seed(seed)
    net = build_decoder(len(words), x.shape[1], hidden, q_dim)
    q = x[keep, x.shape[1] - q_dim:]
    net.q_mean.copy_(torch.from_numpy(q.mean(0)))
    net.q_std.copy_(torch.from_numpy(q.std(0) + 1e-3))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    xt, it, tt = torch.from_numpy(x[keep]), torch.from_numpy(inp), torch.from_numpy(target)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(keep), generator=gen)
        for b in range(0, len(keep), batch_size):
            j = perm[b:b + batch_size]
            c, h = net.condition(xt[j])
            logp, _ = net.step(it[j], c, h)
            loss = F.nll_loss(logp.reshape(-1, len(words)), tt[j].reshape(-1), ignore_index=pad)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return words, {k: v.detach().clone() for k, v in net.state_dict().items()}


def decode(net, words: list[str], x: np.ndarray, beam: int = BEAM,
           max_words: int = MAX_WORDS) -> tuple[list[str], np.ndarray]:
    """(answer per row, its sequence probability) by beam search; an answer is its words joined by
    spaces (normalised form, as the classifier's vocabulary)."""
    import torch

    n, end, start = len(x), len(words) - 1, len(words)
    if n == 0:
        return [], np.zeros(0)
    with torch.inference_mode():
        c, h = net.condition(torch.from_numpy(np.asarray(x, np.float32)))
        c = c.repeat_interleave(beam, 0)
        h = h.repeat_interleave(beam, 1)
        seq = torch.full((n * beam, 1), start, dtype=torch.long)
        score = torch.full((n, beam), -np.inf)
        score[:, 0] = 0.0  # one live beam at the start
        best_s = torch.full((n,), -np.inf)
        best_seq = [[] for _ in range(n)]
        for t in range(max_words + 1):
            logp, h = net.step(seq[:, -1:], c, h)
            logp = logp[:, -1].reshape(n, beam, -1)
            if t == max_words:  # only the end mark is allowed now
                mask = torch.full_like(logp, -np.inf)
                mask[..., end] = 0.0
                logp = logp + mask
            cand = (score.unsqueeze(2) + logp).reshape(n, -1)
            top, arg = cand.topk(beam, 1)
            src, word = arg // len(words), arg % len(words)
            flat = (src + torch.arange(n).unsqueeze(1) * beam).reshape(-1)
            seq = torch.cat([seq[flat], word.reshape(-1, 1)], 1)
            h = h[:, flat]
            finished = word == end
            for r, k in zip(*torch.nonzero(finished & (top > best_s.unsqueeze(1)), as_tuple=True)):
                if top[r, k] > best_s[r]:
                    best_s[r] = top[r, k]
                    best_seq[r] = seq[r * beam + k, 1:-1].tolist()
            score = torch.where(finished, torch.full_like(top, -np.inf), top)
            if bool((score.max(1).values <= best_s).all()):  # no live beam can still beat the best ended one
                break
    texts = [" ".join(words[w] for w in s) for s in best_seq]
    return texts, np.exp(best_s.numpy().astype(np.float64))


def yes_no_form(question: str) -> bool:
    """Whether a question is yes/no in its grammatical form, a rule of English fixed in advance (no
    data chooses it): it opens with an auxiliary verb (``AUXILIARIES``: "Is there ...", "Does the ...",
    "Can you see ..."), also after a leading phrase set off by a comma ("Besides the mass, are there
    ..."), or is an elliptical "Any ...?" question; and it offers no alternative (``ALTERNATIVES``: "Is
    this an MRI or a CT?" asks for one of two words). "Is there epidural or subdural hematoma?" is thus
    not counted as yes/no: the rule errs towards letting the decoder answer, never towards a wrong yes/no."""
    clauses = [_WORD.findall(c) for c in str(question).lower().split(",")]
    words = [w for c in clauses for w in c]
    if not words or ALTERNATIVES & set(words):
        return False
    first = clauses[0][0] if clauses[0] else ""
    after_comma = next((c[0] for c in clauses[1:2] if c), "")
    return first in AUXILIARIES or first in ELLIPTICAL or after_comma in AUXILIARIES


def gate_answers(answers: list[str], probs: np.ndarray, p_closed: np.ndarray, decoded: list[str],
                 p_decoded: np.ndarray, margin: float, novel_only: bool, vocab: set[str],
                 yes_no: np.ndarray) -> np.ndarray:
    """Per row, whether the decoded answer replaces the classifier's: the question is taken as open
    (P(closed) < 0.5), it is not yes/no in form (``yes_no``: ``yes_no_form`` of each question) and the
    classifier's answer is not yes/no, the decoder wrote something else than the classifier, its sequence
    probability beats the classifier's probability by ``margin``, and (``novel_only``) it is not a
    training answer."""
    yes_no = np.asarray(yes_no, dtype=bool)
    if yes_no.shape != (len(answers),):
        raise ValueError(f"gate_answers: {len(answers)} answers but yes_no has shape {yes_no.shape}")
    use = np.zeros(len(answers), dtype=bool)
    for i, (a, d) in enumerate(zip(answers, decoded)):
        use[i] = (bool(d) and p_closed[i] < 0.5 and not yes_no[i] and a not in ("yes", "no") and d != a
                  and p_decoded[i] > probs[i] + margin and not (novel_only and d in vocab))
    return use
