"""Choice questions: a question that names its possible answers is answered with one of them.

"Is the lesion on the patient's right or left side?", "Is this a T1 weighted, T2 weighted, or FLAIR
image?", "Was this image taken with an MRI or CT scanner?": VQA-RAD marks most such questions closed,
and since closed answers are mostly yes/no the answerer's closed head pushes them to "yes" or "no",
which cannot be right. Here the answer is restricted to the training answers the question names:

- a question is a choice question when it holds the word "or" (or "vs", "versus": the decoder's
  ``ALTERNATIVES``);
- a training answer is one of its choices when every word of the answer occurs in the question and
  one of the answer's content words (not a function word such as "in", "side") is an alternative: the
  word just before an "or", or one of the ``WINDOW`` words after it ("left side" for "... right or left
  side?", "in vasculature" for "Is the contrast in the bowels or the vasculature?"). The word two
  before the "or" is an alternative only when the word between is a head the alternatives share, one
  that occurs again within ``WINDOW`` + 1 words ("viral process or parasitic process", "T1 weighted, T2
  weighted, or FLAIR"); otherwise it is the subject the question asks about ("Is the *mass*
  hyperintense or hypointense?", "Is the *brain* atrophied or shrunk?"), which was a choice before
  65c817f and, being the only training answer named, was then given as the answer;
- yes and no stay among the choices when the question opens as a yes/no question by the decoder's words
  (``yes_no_opening``: an auxiliary other than a bare copula, "Is there ...", or an elliptical "Any
  ...?"): "Is there a fracture or a dislocation?" is answered yes or no;
- a question none of whose choices is a training answer is answered as before (a choice never seen in
  training cannot be scored by a classifier over training answers);
- the rule holds only for a set whose own training questions follow it (``calibrate``, at training
  time, saved with the model): at least ``MIN_ACTED`` training questions it would act on, and at least
  ``MIN_SHARE`` of them answered with one of their named choices. VQA-RAD's training file: 87 of 94.
  PathVQA's: 17 of 54, since its questions are generated from textbook captions and ask "are these
  hormones basophilic, eosinophilic, or nonstaining?" to be answered yes or no; there the answerer
  leaves them alone.

The words are those of ``normalize_answer`` (lower case, punctuation to spaces, articles dropped), so
the answers and the question are compared alike. Chosen on inner test-like splits of the training side
(README, "Choice questions"); ``VqaConfig.choice_answers`` turns it off.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .decoder import ALTERNATIVES, AUXILIARIES, ELLIPTICAL
from .normalize import normalize_answer

WINDOW = 2
MIN_ACTED = 5     # training questions the rule acts on, at least, before it is trusted
MIN_SHARE = 0.5   # and the share of them it would answer with the reference's own choice
FUNCTION_WORDS = frozenset({"in", "on", "of", "to", "at", "side", "sided", "is", "are", "it", "this", "image"})
# the question-form words are the decoder's (one rule of English for both): a choice is offered by an
# ALTERNATIVES word; "A or B" is still asked as yes or no after an auxiliary that is not a bare copula
# ("Does ...", "Can ..."), after a copula with "there" ("Is there ...") and in an elliptical "Any ...?"
COPULAS = frozenset({"am", "is", "are", "was", "were"})


class ChoiceIndex:
    """The answer vocabulary's words, for finding the choices a question names."""

    def __init__(self, vocab: Sequence[str]):
        self.vocab = list(vocab)
        self.words: list[tuple[str, ...]] = []
        self.content: list[frozenset[str]] = []
        self.yes_no: list[int] = []
        for j, answer in enumerate(vocab):
            norm = normalize_answer(answer)
            if norm in ("yes", "no"):
                self.yes_no.append(j)
                self.words.append(())
                self.content.append(frozenset())
                continue
            toks = tuple(norm.split())
            self.words.append(toks)
            self.content.append(frozenset(toks) - FUNCTION_WORDS)

    def choices(self, question: str) -> list[int] | None:
        """Indices of the training answers ``question`` names as its choices (with yes and no where it
        opens as a yes/no question); None when it is no choice question or names no training answer."""
        toks = normalize_answer(question).split()
        ors = [k for k, w in enumerate(toks) if w in ALTERNATIVES]
        if not ors:
            return None
        near: set[str] = set()
        for k in ors:
            near.update(toks[max(0, k - 1):k])
            near.update(toks[k + 1:k + 1 + WINDOW])
            if k >= 2 and shared_head(toks, k - 1):
                near.add(toks[k - 2])
        near -= FUNCTION_WORDS | ALTERNATIVES
        asked = set(toks)
        out = [j for j, (words, content) in enumerate(zip(self.words, self.content))
               if content and content & near and asked.issuperset(words)]
        if not out:
            return None
        if yes_no_opening(toks):
            out += self.yes_no
        return out


def shared_head(toks: Sequence[str], k: int) -> bool:
    """Whether ``toks[k]``, the word before an "or", is a head its alternatives share: it occurs again
    within ``WINDOW`` + 1 words on either side ("viral process or parasitic process")."""
    lo, hi = max(0, k - WINDOW - 1), k + WINDOW + 3
    return toks[k] in toks[lo:k] + toks[k + 2:hi]


def yes_no_opening(toks: Sequence[str]) -> bool:
    """Whether a question's words open it as a yes/no question even where it names alternatives (module
    notes): "Does ...", "Can ...", "Is there ...", "Any ...", but not "Is the lesion ...", which asks
    for one of the alternatives."""
    first, second = (list(toks) + ["", ""])[:2]
    return (first in AUXILIARIES and first not in COPULAS) or (first in COPULAS and second == "there") \
        or first in ELLIPTICAL


def restrict_to_choices(probs: np.ndarray, questions: Sequence[str], index: ChoiceIndex
                        ) -> tuple[np.ndarray, list[list[int] | None]]:
    """``probs`` (rows: questions, columns: the vocabulary) with each choice question's row restricted to
    its choices and renormalised (a row whose choices all have probability 0 is left as it was), and
    each row's choices (None: the row was not restricted)."""
    if len(questions) != len(probs):
        raise ValueError(f"{len(questions)} question texts for {len(probs)} rows; expected one text per row")
    out = probs.copy()
    chosen: list[list[int] | None] = []
    for i, q in enumerate(questions):
        cand = index.choices(q)
        if cand is not None:
            mass = out[i, cand].sum()
            if mass > 1e-12:
                row = np.zeros_like(out[i])
                row[cand] = out[i, cand] / mass
                out[i] = row
            else:
                cand = None
        chosen.append(cand)
    return out, chosen


def calibrate(index: ChoiceIndex, questions: Sequence[str], answers: Sequence[str]) -> dict:
    """How the rule fares on a training set: ``acted``, the training questions it acts on, ``named``,
    those whose answer is one of the choices it finds, and ``holds``, whether it is trusted (module
    notes)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} question texts for {len(answers)} answers; expected one each")
    acted = named = 0
    for q, a in zip(questions, answers):
        cand = index.choices(q)
        if cand is None:
            continue
        acted += 1
        named += normalize_answer(a) in {normalize_answer(index.vocab[j]) for j in cand}
    return {"acted": acted, "named": named, "holds": acted >= MIN_ACTED and named >= MIN_SHARE * acted}
