"""Findings -> impression drafters, each grounded in retrieved training reports and citing them.

Every drafter draws on a knowledge base of *training* reports only (``Scope(splits=("train",))``);
while it learns, each training report is drafted with itself left out (``exclude_ids``).

* ``most-common`` — the most common training impression, whatever the findings (the degenerate
  baseline printed beside every result).
* ``nearest`` — the impression of the most similar training findings (TF-IDF cosine by default:
  the reference point of Van Veen et al.).
* ``consensus`` — minimum-Bayes-risk choice among the impressions of the k most similar reports: the
  one with the highest similarity-weighted ROUGE-L to the others (weights ``sim ** power``), i.e. the
  wording the neighbours agree on.
* ``rerank`` — retrieve, edit, rerank. Candidates: the neighbours' impressions; *edits* of them that
  respect the findings (a sentence naming an observation the findings deny or never state is dropped;
  left/right swapped when the findings put the observation on the other side; "stable"/"unchanged"
  dropped when the findings compare with nothing); *extracts* of the findings (the sentences a
  classifier trained here finds likely to be carried into an impression, compressed "There is a small
  effusion." -> "Small effusion.", alone, beside the neighbours' consensus normal phrase, or numbered).
  A gradient-boosted regressor trained on the training reports (leave-one-out, its sentence classifier
  cross-fitted) predicts each candidate's ROUGE-L from its features (consensus score, retrieval
  similarity, kind, agreement of its observations with the findings' by the rule labeller, length,
  style of the neighbours), and the best-scored candidate is the draft. Every draft cites the
  training reports its words came from.
"""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..evaluate.observations import label as obs_label
from ..retrieve.kb import Entry, KnowledgeBase, Scope
from .data import Report
from .text import compress, is_numbered, lcs_f, numbered, rouge_tokens, split_sentences, strip_number

TRAIN = ("train",)


@dataclass
class Draft:
    """A drafted impression with the training reports it drew on (``sources``: id, score, role)."""

    text: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    method: str = ""
    kind: str = ""  # which candidate won: retrieved, edited, extract, ...

    def to_dict(self) -> dict[str, Any]:
        return {"prediction": self.text, "sources": self.sources, "method": self.method, "kind": self.kind}


def report_kb(reports: Sequence[Report], text_index: str = "tfidf", encode=None) -> KnowledgeBase:
    """A knowledge base of training reports: the text is the findings, the impression rides along."""
    entries = [Entry(id=r.id, kind="report", text=r.findings, split="train", patient_id=r.id,
                     fields={"impression": r.impression}) for r in reports]
    return KnowledgeBase(entries, text_index=text_index, encode=encode)


def _labels(text: str) -> dict[str, int]:
    hit = _LABEL_CACHE.get(text)
    if hit is None:
        hit = obs_label(text)
        if len(_LABEL_CACHE) > 100_000:
            _LABEL_CACHE.clear()
        _LABEL_CACHE[text] = hit
    return hit


_LABEL_CACHE: dict[str, dict[str, int]] = {}


def _present(labels: dict[str, int]) -> set[str]:
    return {k for k, v in labels.items() if v in (1, -1) and k != "No Finding"}


class ImpressionDrafter:
    """Base: ``fit(train_reports)``, ``draft(findings_list, scopes=None)``. The knowledge base is the
    training reports; a draft cites the entries it used."""

    name = ""

    def __init__(self, k: int = 20, text_index: str = "tfidf", seed: int = 0, encode=None):
        self.k, self.text_index, self.seed = k, text_index, seed
        self.encode = encode
        self.kb: KnowledgeBase | None = None

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "text_index": self.text_index, "seed": self.seed}

    def fit(self, train: Sequence[Report], progress: bool = False) -> "ImpressionDrafter":
        self.kb = report_kb(train, self.text_index, self.encode)
        return self

    def neighbours(self, findings: Sequence[str], scopes: Sequence[Scope] | None = None,
                   k: int | None = None) -> list[list[dict[str, Any]]]:
        scopes = scopes if scopes is not None else [Scope(TRAIN)] * len(findings)
        return self.kb.search_text(list(findings), k or self.k, list(scopes))

    def draft(self, findings: Sequence[str], scopes: Sequence[Scope] | None = None) -> list[Draft]:
        raise NotImplementedError


class MostCommon(ImpressionDrafter):
    name = "most-common"

    def fit(self, train, progress=False):
        super().fit(train)
        counts = collections.Counter(r.impression for r in train)
        self.text, n = counts.most_common(1)[0]
        self.source_ids = [r.id for r in train if r.impression == self.text][:5]
        self.count = n
        return self

    def draft(self, findings, scopes=None):
        src = [{"id": i, "role": "most common impression", "count": self.count} for i in self.source_ids]
        return [Draft(self.text, src, self.name, "most-common") for _ in findings]


class Nearest(ImpressionDrafter):
    name = "nearest"

    def draft(self, findings, scopes=None):
        out = []
        for hits in self.neighbours(findings, scopes, k=1):
            h = hits[0]
            out.append(Draft(h["entry"].fields["impression"], [_source(h, "impression of the nearest report")],
                             self.name, "retrieved"))
        return out


def _source(hit: dict[str, Any], role: str) -> dict[str, Any]:
    return {"id": hit["entry"].id, "score": round(float(hit["score"]), 4), "rank": hit["rank"], "role": role}


def _weights(hits: list[dict[str, Any]], power: float) -> np.ndarray:
    s = np.array([max(h["score"], 0.0) for h in hits], dtype=float)
    if s.max() <= 0:
        return np.ones(len(hits)) / len(hits)
    w = (s / s.max()) ** power
    return w / w.sum()


def _consensus_scores(cand_tokens: list[tuple[str, ...]], nb_tokens: list[tuple[str, ...]],
                      w: np.ndarray) -> np.ndarray:
    return np.array([sum(wj * lcs_f(nt, ct) for wj, nt in zip(w, nb_tokens)) for ct in cand_tokens])


class Consensus(ImpressionDrafter):
    """Minimum-Bayes-risk choice among the neighbours' impressions."""

    name = "consensus"

    def __init__(self, k: int = 20, power: float = 4.0, **kw):
        super().__init__(k=k, **kw)
        self.power = power

    def params(self):
        return {**super().params(), "power": self.power}

    def draft(self, findings, scopes=None):
        out = []
        for hits in self.neighbours(findings, scopes):
            imps = [h["entry"].fields["impression"] for h in hits]
            toks = [rouge_tokens(t) for t in imps]
            w = _weights(hits, self.power)
            seen: dict[str, int] = {}
            for j, t in enumerate(imps):
                seen.setdefault(t, j)
            uniq = list(seen.values())
            scores = _consensus_scores([toks[j] for j in uniq], toks, w)
            best = uniq[int(np.argmax(scores))]
            agree = [j for j, t in enumerate(imps) if t == imps[best]]
            out.append(Draft(imps[best], [_source(hits[j], "impression (neighbours' consensus)") for j in agree],
                             self.name, "retrieved"))
        return out


# --- retrieve, edit, rerank ------------------------------------------------------------------------

CANDIDATE_KINDS = ("retrieved", "edited", "extract", "extract+normal", "normal+extract", "numbered")
_STABLE = re.compile(r"\b(?:stable|unchanged|again|persistent|redemonstrated)\s+", re.I)
_COMPARE = re.compile(r"\b(?:stable|unchanged|prior|previous|interval|again|persist\w*|compar\w*|"
                                    r"redemonstrat\w*|no change|remains?|similar)\b", re.I)
_SIDE = re.compile(r"\b(left|right)\b", re.I)


def _swap_side(text: str) -> str:
    return _SIDE.sub(lambda m: ("right" if m.group(1).lower() == "left" else "left")
                     if m.group(1).islower() else ("Right" if m.group(1).lower() == "left" else "Left"), text)


def _sides(text: str, obs: str) -> set[str]:
    """Sides ('left'/'right') named in the sentences of ``text`` that mention ``obs`` positively."""
    out = set()
    for s in split_sentences(text):
        if obs in _present(_labels(s)):
            out |= {m.lower() for m in _SIDE.findall(s)}
    return out


def edit_impression(impression: str, findings: str, find_present: set[str]) -> list[tuple[str, str]]:
    """Edits of a retrieved impression that respect the findings: [(text, what was edited)]."""
    sents = split_sentences(impression)
    if not sents:
        return []
    out = []
    kept, dropped = [], False
    for s in sents:
        pres = _present(_labels(s))
        if pres and not pres <= find_present:
            dropped = True
            continue
        kept.append(s)
    if dropped and kept:
        text = " ".join(kept)
        if is_numbered(kept[0]) and len(kept) == 1:
            text = kept[0]
        out.append((text, "dropped sentences the findings do not support"))
    # laterality: an observation on the other side in the findings
    swapped = []
    changed = False
    for s in sents:
        pres = _present(_labels(s))
        sides = {m.lower() for m in _SIDE.findall(s)}
        flip = False
        for obs in pres & find_present:
            fs = _sides(findings, obs)
            if len(sides) == 1 and len(fs) == 1 and sides != fs:
                flip = True
        swapped.append(_swap_side(s) if flip else s)
        changed |= flip
    if changed:
        out.append((" ".join(swapped), "laterality from the findings"))
    if _STABLE.search(impression) and not _COMPARE.search(findings):
        text = _STABLE.sub("", impression).strip()
        if text:
            text = text[0].upper() + text[1:]
            out.append((text, "no comparison in the findings: 'stable' dropped"))
    return out


class SentenceScorer:
    """P(a findings sentence is carried into the impression): logistic regression on word 1-2-grams
    plus its position; trained on the training reports (a sentence counts as carried when at least
    half of its tokens lie on its longest common subsequence with the impression)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    @staticmethod
    def label(sentence: str, impression: str) -> int:
        st, it = rouge_tokens(sentence), rouge_tokens(impression)
        if not st or not it:
            return 0
        from .text import lcs_length

        return int(lcs_length(st, it) / len(st) >= 0.5)

    @staticmethod
    def units(reports: Sequence[Report]) -> tuple[list[str], list[int], list[int]]:
        sents, labels, groups = [], [], []
        for i, r in enumerate(reports):
            for s in split_sentences(r.findings):
                sents.append(s)
                labels.append(SentenceScorer.label(s, r.impression or ""))
                groups.append(i)
        return sents, labels, groups

    def _model(self):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
                             LogisticRegression(C=4.0, max_iter=2000, random_state=self.seed))

    def fit(self, sentences: Sequence[str], labels: Sequence[int]) -> "SentenceScorer":
        self.model = self._model().fit(list(sentences), list(labels))
        return self

    def predict(self, sentences: Sequence[str]) -> np.ndarray:
        if not sentences:
            return np.zeros(0)
        return self.model.predict_proba(list(sentences))[:, 1]

    def cross_fit(self, sentences: Sequence[str], labels: Sequence[int], groups: Sequence[int],
                  folds: int = 5) -> np.ndarray:
        """Out-of-fold probabilities (folds grouped by report, shuffled by the seed)."""
        rng = np.random.default_rng(self.seed)
        gids = np.unique(groups)
        fold_of = dict(zip(gids, rng.permutation(len(gids)) % folds))
        fold = np.array([fold_of[g] for g in groups])
        out = np.zeros(len(sentences))
        sentences = np.asarray(sentences, dtype=object)
        labels = np.asarray(labels)
        for f in range(folds):
            tr, te = fold != f, fold == f
            m = self._model().fit(list(sentences[tr]), labels[tr])
            out[te] = m.predict_proba(list(sentences[te]))[:, 1]
        return out


FEATURES = (
    "kind_retrieved", "kind_edited", "kind_extract", "kind_extract+normal", "kind_normal+extract",
    "kind_numbered", "consensus_p1", "consensus_p4", "consensus_p10", "source_sim", "source_rank",
    "dup_weight", "log_train_count", "cand_len", "findings_len", "findings_sents", "p_max", "p_sum",
    "n_p50", "n_p30", "cand_in_findings", "cand_unsupported_obs", "findings_obs_missing", "cand_no_finding",
    "findings_no_finding", "neighbours_abnormal", "neighbours_numbered", "cand_numbered", "top_sim",
)


def one_openmp_thread():
    """scikit-learn's gradient boosting in one OpenMP thread. Its threads meet at a barrier for every
    split: on a loaded machine each barrier waits for the scheduler, and the 300-tree fit on the
    Open-i training candidates took 13 min of wall time for 1-2 min of CPU; one thread takes its CPU
    time (the results are the same: its threads split the work by feature, not the sums)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


class Rerank(ImpressionDrafter):
    """Retrieve, edit, rerank (see the module docstring)."""

    name = "rerank"

    def __init__(self, k: int = 20, power: float = 4.0, thresholds: tuple[float, ...] = (0.3, 0.5),
                 max_iter: int = 300, **kw):
        super().__init__(k=k, **kw)
        self.power, self.thresholds, self.max_iter = power, tuple(thresholds), max_iter

    def params(self):
        return {**super().params(), "power": self.power, "thresholds": list(self.thresholds),
                "max_iter": self.max_iter}

    # -- candidates and features -----------------------------------------------------------------
    def candidates(self, findings: str, hits: list[dict[str, Any]], probs: np.ndarray
                   ) -> tuple[list[str], list[str], list[list[dict]], np.ndarray]:
        """(texts, kinds, sources per candidate, feature matrix) for one report."""
        imps = [h["entry"].fields["impression"] for h in hits]
        nb_tok = [rouge_tokens(t) for t in imps]
        sims = np.array([h["score"] for h in hits], dtype=float)
        find_lab = _labels(findings)
        find_present = _present(find_lab)
        texts: list[str] = []
        kinds: list[str] = []
        srcs: list[list[dict]] = []
        meta: list[tuple[float, int]] = []  # (source sim, source rank) per candidate
        index: dict[str, int] = {}

        def add(text: str, kind: str, sources: list[dict], sim: float, rank: int) -> None:
            text = text.strip()
            if not text or not rouge_tokens(text):
                return
            if text in index:
                return
            index[text] = len(texts)
            texts.append(text), kinds.append(kind), srcs.append(sources), meta.append((sim, rank))

        for j, (h, t) in enumerate(zip(hits, imps)):
            add(t, "retrieved", [_source(h, "impression")], sims[j], j + 1)
        w4 = _weights(hits, self.power)
        retrieved_n = len(texts)
        lcs_cache: dict[tuple, float] = {}

        def sim_row(ct: tuple[str, ...]) -> np.ndarray:
            out = np.empty(len(nb_tok))
            for j, nt in enumerate(nb_tok):
                key = (nt, ct)
                v = lcs_cache.get(key)
                if v is None:
                    v = lcs_cache[key] = lcs_f(nt, ct)
                out[j] = v
            return out

        cons = np.array([sim_row(rouge_tokens(t)) @ w4 for t in texts])
        # the consensus impression among those the labeller calls normal: the "normal phrase"
        normal_idx = [i for i in range(retrieved_n) if _labels(texts[i]).get("No Finding") == 1]
        normal = texts[max(normal_idx, key=lambda i: cons[i])] if normal_idx else None
        normal_src = srcs[texts.index(normal)] if normal else []
        for j, (h, t) in enumerate(zip(hits[:10], imps[:10])):
            for text, what in edit_impression(t, findings, find_present):
                add(text, "edited", [{**_source(h, "impression, edited"), "edit": what}], sims[j], j + 1)
        sents = split_sentences(findings)
        order = np.argsort(-probs) if len(sents) else []
        extracts: list[tuple[str, list[str]]] = []
        for th in self.thresholds:
            keep = [compress(sents[i]) for i in range(len(sents)) if probs[i] >= th]
            if keep:
                extracts.append((f"p>={th}", keep))
        if len(sents):
            extracts.append(("top", [compress(sents[order[0]])]))
        find_src = [{"id": "findings", "role": "sentences of the findings"}]
        for _, keep in extracts:
            add(" ".join(keep), "extract", find_src, 0.0, 0)
            if normal:
                n_plain = strip_number(normal)
                add(" ".join(keep) + " " + n_plain, "extract+normal", find_src + normal_src, 0.0, 0)
                add(n_plain + " " + " ".join(keep), "normal+extract", normal_src + find_src, 0.0, 0)
                add(numbered([n_plain, *keep]), "numbered", normal_src + find_src, 0.0, 0)
                add(numbered([*keep, n_plain]), "numbered", find_src + normal_src, 0.0, 0)
            else:
                add(numbered(keep), "numbered", find_src, 0.0, 0)
        # features
        cand_tok = [rouge_tokens(t) for t in texts]
        f_tok = set(rouge_tokens(findings))
        M = np.stack([sim_row(ct) for ct in cand_tok])
        c1, c4, c10 = M @ _weights(hits, 1.0), M @ w4, M @ _weights(hits, 10.0)
        dup = collections.defaultdict(float)
        for wj, t in zip(w4, imps):
            dup[t] += wj
        nb_abn = float(sum(wj for wj, t in zip(w4, imps) if _labels(t).get("No Finding") != 1))
        nb_num = float(sum(wj for wj, t in zip(w4, imps) if is_numbered(t)))
        p = probs if len(probs) else np.zeros(1)
        rows = []
        for i, t in enumerate(texts):
            cl = _labels(t)
            cp = _present(cl)
            kind_vec = [float(kinds[i] == k) for k in CANDIDATE_KINDS]
            rows.append(kind_vec + [
                c1[i], c4[i], c10[i], meta[i][0], meta[i][1], dup.get(t, 0.0),
                np.log1p(self._train_count.get(t, 0)), len(cand_tok[i]), len(f_tok), len(sents),
                float(p.max()), float(p.sum()), float((p >= 0.5).sum()), float((p >= 0.3).sum()),
                float(np.mean([x in f_tok for x in cand_tok[i]])), float(len(cp - find_present)),
                float(len(find_present - cp)), float(cl.get("No Finding") == 1),
                float(find_lab.get("No Finding") == 1), nb_abn, nb_num, float(is_numbered(t)), float(sims[0]),
            ])
        return texts, kinds, srcs, np.asarray(rows, dtype=np.float64)

    def fit(self, train: Sequence[Report], progress: bool = False) -> "Rerank":
        from sklearn.ensemble import HistGradientBoostingRegressor

        from ..progress import progress_bar

        super().fit(train)
        self._train_count = collections.Counter(r.impression for r in train)
        sents, labels, groups = SentenceScorer.units(train)
        self.scorer = SentenceScorer(self.seed)
        oof = self.scorer.cross_fit(sents, labels, groups)
        self.scorer.fit(sents, labels)
        per_report: list[list[float]] = [[] for _ in train]
        for p, g in zip(oof, groups):
            per_report[g].append(p)
        scopes = [Scope(TRAIN, exclude_ids=frozenset([r.id])) for r in train]
        hits_all = self.neighbours([r.findings for r in train], scopes)
        X, y = [], []
        with progress_bar("rerank: training candidates", total=len(train), unit="reports", enabled=progress) as adv:
            for r, hits, p in zip(train, hits_all, per_report):
                texts, _, _, F = self.candidates(r.findings, hits, np.asarray(p))
                ref = rouge_tokens(r.impression)
                X.append(F)
                y.extend(lcs_f(ref, rouge_tokens(t)) for t in texts)
                adv()
        self.model = HistGradientBoostingRegressor(max_iter=self.max_iter, learning_rate=0.05, max_leaf_nodes=31,
                                                   min_samples_leaf=40, early_stopping=False,
                                                   random_state=self.seed)
        with one_openmp_thread():
            self.model.fit(np.vstack(X), np.asarray(y))
        return self

    def draft(self, findings, scopes=None):
        sents = [split_sentences(f) for f in findings]
        flat = self.scorer.predict([s for ss in sents for s in ss])
        cuts = np.cumsum([0] + [len(ss) for ss in sents])
        built = [self.candidates(f, hits, flat[cuts[i]:cuts[i + 1]])
                 for i, (f, hits) in enumerate(zip(findings, self.neighbours(findings, scopes)))]
        if not built:
            return []
        with one_openmp_thread():
            pred = self.model.predict(np.vstack([b[3] for b in built]))
        out, start = [], 0
        for texts, kinds, srcs, F in built:
            best = int(np.argmax(pred[start:start + len(texts)]))
            start += len(texts)
            out.append(Draft(texts[best], srcs[best], self.name, kinds[best]))
        return out


DRAFTERS: dict[str, type[ImpressionDrafter]] = {
    "most-common": MostCommon, "nearest": Nearest, "consensus": Consensus, "rerank": Rerank,
}


def time_drafts(drafter: ImpressionDrafter, findings: Sequence[str]) -> tuple[list[Draft], float]:
    """Drafts and seconds per report."""
    t0 = time.perf_counter()
    drafts = drafter.draft(findings)
    return drafts, (time.perf_counter() - t0) / max(1, len(findings))
