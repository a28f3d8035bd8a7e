"""Text metrics for drafts (summaries, impressions, reports), each from a maintained library and under
its own name, with exactly how it counts.

Per-report scores (mean over reports, x100), tokenised by ``rouge-score``'s own tokeniser (lower
case, every non-alphanumeric character a separator):

* ``rouge1``, ``rouge2``, ``rougeL`` — ``rouge-score`` F-measure **without stemming** (the setting of
  Van Veen et al. 2024's Open-i reference points); ``rougeL_stem`` — the same ROUGE-L with the Porter
  stemmer on (what many summarisation papers report).

Corpus scores:

* ``bleu_sacre`` — ``sacrebleu`` corpus BLEU-4 (13a tokenisation, mixed case, exponential smoothing
  off: sacrebleu's defaults), one reference per draft, x100.
* COCO caption metrics from ``pycocoevalcap`` after its PTB tokenisation (Stanford CoreNLP's
  tokeniser, run by Java; lower case, punctuation removed): ``coco_bleu1`` .. ``coco_bleu4`` (its
  BLEU, closest-reference length), ``coco_meteor`` (METEOR 1.5, Java), ``coco_rougeL`` (its ROUGE-L,
  beta 1.2), ``coco_cider`` (CIDEr-D; document frequencies from the evaluated references). All x100.
  They need a Java runtime (Debian ``default-jre-headless``); without one they are NaN and the
  report says so in ``coco_error``.
* ``distinct_share`` — the share of distinct drafts (after whitespace normalisation): 1.0 when every
  draft differs, 1/n when one text is written for everything (the degenerate drafter that BLEU
  rewards).

Intervals: percentile bootstrap over reports (1,000 resamples, seeded). For the corpus metrics the
resample is scored again from per-report statistics: BLEU from resampled n-gram counts (sacrebleu's
sufficient statistics), CIDEr as the mean of its per-report scores (document frequencies held at
those of the full set).
"""

from __future__ import annotations

import re
import shutil
from typing import Any, Sequence

import numpy as np

PER_REPORT = ("rouge1", "rouge2", "rougeL", "rougeL_stem")
COCO = ("coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4", "coco_meteor", "coco_rougeL", "coco_cider")


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if not isinstance(p, str) or not isinstance(r, str):
            raise ValueError(f"report {i}: prediction and reference must be strings, got "
                             f"{type(p).__name__} and {type(r).__name__}")


def rouge_per_report(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-report ROUGE F-measures x100: rouge1/2/L without stemming, rougeL_stem with the Porter stemmer."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    plain = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    stem = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out = {k: np.zeros(len(predictions)) for k in PER_REPORT}
    for i, (p, r) in enumerate(zip(predictions, references)):
        s = plain.score(r, p)
        out["rouge1"][i] = 100 * s["rouge1"].fmeasure
        out["rouge2"][i] = 100 * s["rouge2"].fmeasure
        out["rougeL"][i] = 100 * s["rougeL"].fmeasure
        out["rougeL_stem"][i] = 100 * stem.score(r, p)["rougeL"].fmeasure
    return out


def _bleu_stats(predictions: Sequence[str], references: Sequence[str]):
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    stats = np.asarray(bleu._extract_corpus_statistics(list(predictions), [list(references)]), dtype=float)
    return bleu, stats


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (its defaults), x100."""
    import sacrebleu

    _check(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def java_available() -> bool:
    return shutil.which("java") is not None


def coco_scores(predictions: Sequence[str], references: Sequence[str], meteor: bool = True
                ) -> tuple[dict[str, float], np.ndarray]:
    """The COCO caption metrics x100 (PTB-tokenised) and the per-report CIDEr-D scores x100."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _check(predictions, references)
    if not java_available():
        raise RuntimeError("the COCO metrics need a Java runtime (Debian package default-jre-headless): "
                           "`java` is not on PATH")
    # PTBTokenizer takes {id: [{"caption": text}]}; an empty text would vanish, so it gets a placeholder
    tok = PTBTokenizer()
    fix = lambda t: t if t.strip() else "empty"  # noqa: E731
    res = tok.tokenize({i: [{"caption": fix(p)}] for i, p in enumerate(predictions)})
    gts = tok.tokenize({i: [{"caption": fix(r)}] for i, r in enumerate(references)})
    out: dict[str, float] = {}
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"coco_bleu{n + 1}"] = 100 * float(b[n])
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        m = Meteor()
        try:
            out["coco_meteor"] = 100 * float(m.compute_score(gts, res)[0])
        finally:
            _close_meteor(m)
    else:
        out["coco_meteor"] = float("nan")
    out["coco_rougeL"] = 100 * float(Rouge().compute_score(gts, res)[0])
    cider, per = Cider().compute_score(gts, res)
    out["coco_cider"] = 100 * float(cider)
    return out, 100 * np.asarray(per, dtype=float)


def _close_meteor(m) -> None:
    """Stop pycocoevalcap's METEOR Java subprocess (it has no close method of its own)."""
    proc = getattr(m, "meteor_p", None)
    if proc is None:
        return
    with m.lock:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing what may already be closed
                pass
        proc.kill()
        proc.wait()


def distinct_share(texts: Sequence[str]) -> float:
    """Share of distinct texts (whitespace collapsed, case kept)."""
    if not texts:
        return float("nan")
    return len({re.sub(r"\s+", " ", t.strip()) for t in texts}) / len(texts)


def _ci(values: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    means = values[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def text_report(predictions: Sequence[str], references: Sequence[str], n_boot: int = 1000, seed: int = 0,
                coco: bool = True, meteor: bool = True, observations: bool = True) -> dict[str, Any]:
    """Every text metric of ``predictions`` against ``references``: {name: {"value", "lo", "hi"}}
    (see the module docstring), plus ``n`` and ``distinct_share``."""
    _check(predictions, references)
    n = len(predictions)
    if not n:
        raise ValueError("no reports to score")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))
    out: dict[str, Any] = {"n": n}
    for name, vals in rouge_per_report(predictions, references).items():
        out[name] = {"value": float(vals.mean()), **dict(zip(("lo", "hi"), _ci(vals, idx)))}
    bl, stats = _bleu_stats(predictions, references)
    boot = [bl._compute_score_from_stats(list(stats[i].sum(0))).score for i in idx]
    out["bleu_sacre"] = {"value": bleu(predictions, references),
                         **dict(zip(("lo", "hi"), map(float, np.percentile(boot, [2.5, 97.5]))))}
    if coco:
        try:
            scores, per_cider = coco_scores(predictions, references, meteor=meteor)
            for k, v in scores.items():
                out[k] = {"value": v}
            out["coco_cider"].update(zip(("lo", "hi"), _ci(per_cider, idx)))
        except (RuntimeError, OSError) as exc:
            out["coco_error"] = str(exc)
            for k in COCO:
                out[k] = {"value": float("nan")}
    if observations:
        from .observations import f1_from_matrices, present_matrix

        pm, rm = present_matrix(predictions), present_matrix(references)
        point = f1_from_matrices(pm, rm)
        boots = [f1_from_matrices(pm[i], rm[i]) for i in idx[: min(n_boot, 1000)]]
        for k, v in point.items():
            vals = np.array([b[k] for b in boots], dtype=float)
            vals = vals[~np.isnan(vals)]
            lo, hi = (np.percentile(vals, [2.5, 97.5]) * 100) if len(vals) else (float("nan"),) * 2
            out[k] = {"value": 100 * v, "lo": float(lo), "hi": float(hi)}
    out["distinct_share"] = {"value": distinct_share(predictions)}
    return out


# --- for the harness: per-sample ROUGE and corpus scorers over resampled indexes --------------------

def rouge_sample(name: str):
    """A per-sample ROUGE F-measure (0..1) for the harness: rouge1 / rouge2 / rougeL (no stemming),
    rougeL_stem (Porter stemmer)."""
    from rouge_score import rouge_scorer

    key = "rougeL" if name == "rougeL_stem" else name
    scorer = rouge_scorer.RougeScorer([key], use_stemmer=name == "rougeL_stem")
    return lambda prediction, reference: float(scorer.score(reference, prediction)[key].fmeasure)


def corpus_scorer(name: str, predictions: Sequence[str], references: Sequence[str], scale: float = 1.0):
    """For a corpus metric, a function of an index array (a resample of the reports) -> its value x100
    times ``scale`` (the harness uses 0.01: fractions like its other metrics; ``distinct_share`` is a
    share either way). The statistics are computed once; see the module docstring for the resampling."""
    fn = _corpus_scorer(name, predictions, references)
    if name == "distinct_share" or scale == 1.0:
        return fn
    return lambda idx: scale * fn(idx)


def _corpus_scorer(name: str, predictions: Sequence[str], references: Sequence[str]):
    _check(predictions, references)
    if name == "bleu_sacre":
        bl, stats = _bleu_stats(predictions, references)
        return lambda idx: float(bl._compute_score_from_stats(list(stats[idx].sum(0))).score)
    if name == "coco_cider":
        _, per = coco_scores(predictions, references, meteor=False)
        return lambda idx: float(per[idx].mean())
    if name.startswith("obs_f1_rules_"):
        from .observations import f1_from_matrices, present_matrix

        pm, rm = present_matrix(predictions), present_matrix(references)
        return lambda idx: 100 * f1_from_matrices(pm[idx], rm[idx])[name]
    if name == "distinct_share":
        texts = np.array([re.sub(r"\s+", " ", t.strip()) for t in predictions], dtype=object)
        return lambda idx: len(set(texts[idx])) / max(1, len(idx))
    raise KeyError(f"unknown corpus metric {name!r}")


# statistics a resample does not estimate (duplicates drawn by the bootstrap change it): no interval
NO_INTERVAL = {"distinct_share"}

CORPUS_METRICS = {  # as the harness reports them (fractions)
    "bleu_sacre": "sacrebleu corpus BLEU-4 (13a tokenisation), as a fraction (x100 = sacrebleu's score)",
    "coco_cider": "pycocoevalcap CIDEr-D after PTB tokenisation (needs Java)",
    "obs_f1_rules_micro14": "rule-labeller observation F1, micro over the 14 CheXpert observations",
    "obs_f1_rules_micro5": "rule-labeller observation F1, micro over the 5 common observations",
    "obs_f1_rules_macro14": "rule-labeller observation F1, macro over observations present in a reference",
    "distinct_share": "share of distinct outputs (1/n: the same text for everything); no interval",
}
