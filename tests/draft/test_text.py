"""The drafters' text tools: the bit-parallel LCS against the textbook dynamic programme and
against rouge-score's own ROUGE-L."""

from __future__ import annotations

import random

import pytest

from medweave.draft.text import lcs_f, lcs_length, rouge_tokens


def _lcs_dp(a, b) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(cur[j], prev[j + 1]))
        prev = cur
    return prev[-1]


def test_bit_parallel_lcs_equals_the_dynamic_programme():
    rng = random.Random(0)
    for _ in range(3000):
        a = tuple(rng.choice("abcdef") for _ in range(rng.randint(0, 70)))  # past 64 tokens too
        b = [rng.choice("abcdefg") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _lcs_dp(a, b), (a, b)
    assert lcs_length([], ["x"]) == lcs_length(("x",), []) == 0


def test_lcs_f_is_rouge_scores_rouge_l():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(1)
    words = ["No", "acute", "cardiopulmonary", "abnormality.", "Small", "left", "pleural", "effusion,", "stable",
             "heart", "size", "normal.", "1.", "2.", "the", "lungs", "are", "clear"]
    for _ in range(300):
        ref = " ".join(rng.choice(words) for _ in range(rng.randint(1, 25)))
        pred = " ".join(rng.choice(words) for _ in range(rng.randint(1, 25)))
        want = scorer.score(ref, pred)["rougeL"].fmeasure
        assert lcs_f(rouge_tokens(ref), rouge_tokens(pred)) == pytest.approx(want, abs=1e-12)
