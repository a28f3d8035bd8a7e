"""Reports from pictures: retrieve the reports of similar pictures, predict findings with a model's
classification heads, and assemble a draft in which every sentence cites the case(s) it came from;
sentences that contradict the predicted findings are flagged.

The knowledge base is built from a store: one entry per report (text item) that has pictures, its
vector the mean embedding of them (the image encoder of the model, by default EfficientNet-Lite0;
cached), its split the split of its case in the model's cohort. A report's pictures are those of its
study; where no picture shares its study id (reports and DICOM files ingested from separate files, as
in the phantom), those of its patient. Drafting a
case searches under ``Scope.for_case(splits, patient, items)``: the case's own report, its patient's
other reports and every report outside the allowed splits are never candidates.

How a draft is assembled (``grounded``):

1. The k most similar pictures' reports are the candidates (``nearest`` takes the first one as it is).
2. Each candidate scores its consensus with the others (similarity-weighted ROUGE-L of its findings)
   times its agreement with the predicted findings: per head, P(finding) where the candidate states
   the head's observations (rule labeller), 1 - P where it does not.
3. The best candidate's sentences are the draft; a sentence cites its candidate and every other
   neighbour whose report holds the same sentence (ROUGE-L F >= 0.9).
4. A finding predicted present (P >= 0.5) that the draft does not state is added from the most similar
   neighbour that states it, citing that neighbour.
5. Each sentence whose observations contradict a prediction is flagged: it states an observation
   whose head gives P < 0.5, or denies one whose head gives P >= 0.5.

Heads map to observations by name (a head called ``cardiomegaly`` or ``pleural_effusion`` is that
CheXpert observation) or through ``head_observations``; the phantom's ``disease`` head stands for
pneumonia, consolidation and lung opacity (``DEFAULT_HEAD_OBSERVATIONS``).
"""

from __future__ import annotations

import collections
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..evaluate.observations import OBSERVATIONS, label as obs_label
from ..retrieve.kb import Entry, KnowledgeBase, Scope, report_sections
from .text import lcs_f, rouge_tokens, split_sentences

DEFAULT_HEAD_OBSERVATIONS: dict[str, tuple[str, ...]] = {
    "disease": ("Pneumonia", "Consolidation", "Lung Opacity"),  # the phantom's target
}


class ReportDraftError(ValueError):
    pass


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def head_map(heads: Sequence[str], extra: dict[str, Sequence[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """Which observations each head predicts (by name, the defaults, or ``extra``); unmapped heads are left out."""
    by_norm = {_norm(o): o for o in OBSERVATIONS}
    out = {}
    for h in heads:
        if extra and h in extra:
            out[h] = tuple(extra[h])
        elif _norm(h) in by_norm:
            out[h] = (by_norm[_norm(h)],)
        elif h in DEFAULT_HEAD_OBSERVATIONS:
            out[h] = DEFAULT_HEAD_OBSERVATIONS[h]
    for h, obs in out.items():
        bad = [o for o in obs if o not in OBSERVATIONS]
        if bad:
            raise ReportDraftError(f"head {h!r}: unknown observation {bad[0]!r}; allowed: {', '.join(OBSERVATIONS)}")
    return out


def build_report_kb(store, cohort, encoder: str = "efficientnet-lite0", cache=None, progress: bool = False
                    ) -> KnowledgeBase:
    """One entry per report whose study has a picture (see the module docstring)."""
    from ..encode import encode_items

    texts = store.items("modality = 'text'")
    images = store.items("modality = 'image'")
    by_study = collections.defaultdict(list)
    by_patient = collections.defaultdict(list)
    for r in images.to_dict("records"):
        if r["study_id"] is not None:
            by_study[r["study_id"]].append(r)
        by_patient[r["patient_id"]].append(r)

    def pictures(r: dict) -> tuple[list[dict], str]:
        """The report's pictures: those of its study, else (no shared study id, as when reports and
        DICOM files are ingested from separate files) those of its patient."""
        if by_study.get(r["study_id"]):
            return by_study[r["study_id"]], "study"
        return by_patient.get(r["patient_id"], []), "patient"

    level = cohort.meta.get("case_level", "patient")
    case_of: dict[str, tuple[str, str]] = {}
    for row in cohort.table.itertuples():
        key = row.case_id
        case_of[key] = (row.case_id, row.split)
        if level == "patient":
            case_of[row.patient_id] = (row.case_id, row.split)
    rows = [(r, *pictures(r)) for r in texts.to_dict("records")]
    rows = [x for x in rows if x[1]]
    vecs = encode_items([i for _, pics, _ in rows for i in pics], encoder, Path(store.root), cache,
                        progress=progress)
    entries, ids, arr = [], [], []
    for r, pics, link in rows:
        got = [vecs[i["content_hash"]] for i in pics if i["content_hash"] in vecs]
        look = r["patient_id"] if level == "patient" else r["study_id"]
        if not got or look not in case_of:
            continue
        meta = r["meta"] if isinstance(r["meta"], dict) else _json(r["meta"])
        sec = report_sections(r["text"] or "", (meta or {}).get("sections"))
        findings, impression = sec.get("FINDINGS", ""), sec.get("IMPRESSION", "")
        if not findings and not impression:
            continue
        case_id, split = case_of[look]
        e = Entry(id=r["item_id"], kind="report", text=findings, split=str(split), patient_id=r["patient_id"],
                  case_id=str(case_id), item_id=r["item_id"], study_id=r["study_id"], modality="text",
                  fields={"impression": impression, "images": [i["item_id"] for i in pics], "link": link})
        entries.append(e)
        ids.append(e.id)
        arr.append(np.mean(got, axis=0))
    if not entries:
        raise ReportDraftError("the store has no report whose study also has a picture: nothing to draft from")
    kb = KnowledgeBase(entries, text_index="tfidf")
    kb.add_vectors("image", ids, np.stack(arr))
    return kb


def _json(v):
    import json

    try:
        return json.loads(v) if isinstance(v, str) else v
    except (TypeError, ValueError):
        return None


@dataclass
class Sentence:
    section: str  # FINDINGS | IMPRESSION
    text: str
    cites: list[str]  # entry ids (report items) the sentence came from
    cite_cases: list[str]
    flag: str | None = None
    added_for: str | None = None  # a predicted finding this sentence was added for


@dataclass
class ReportDraft:
    sentences: list[Sentence]
    predicted: dict[str, float]
    sources: list[dict[str, Any]]
    method: str
    case_id: str | None = None
    scope: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        parts = []
        for sec in ("FINDINGS", "IMPRESSION"):
            s = [x.text for x in self.sentences if x.section == sec]
            if s:
                parts.append(f"{sec}: " + " ".join(s))
        return "\n".join(parts)

    @property
    def flagged(self) -> list[Sentence]:
        return [s for s in self.sentences if s.flag]

    def to_dict(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "method": self.method, "text": self.text,
                "sentences": [asdict(s) for s in self.sentences], "predicted": self.predicted,
                "sources": self.sources, "scope": self.scope}


def _present(text: str) -> set[str]:
    return {k for k, v in obs_label(text).items() if v in (1, -1) and k != "No Finding"}


def _flag(sentence: str, predicted: dict[str, float], hmap: dict[str, tuple[str, ...]]) -> str | None:
    lab = obs_label(sentence)
    notes = []
    for head, p in predicted.items():
        obs = hmap.get(head, ())
        stated = [o for o in obs if lab.get(o) in (1, -1)]
        denied = [o for o in obs if lab.get(o) == 0]
        if stated and p < 0.5:
            notes.append(f"states {', '.join(stated)} but {head} is predicted absent (P = {p:.2f})")
        elif denied and not stated and p >= 0.5:
            notes.append(f"denies {', '.join(denied)} but {head} is predicted present (P = {p:.2f})")
    return "; ".join(notes) or None


class ReportDrafter:
    """Drafts reports for a store's cases (or a new picture) from its knowledge base and a model's heads."""

    METHODS = ("nearest", "consensus", "grounded")

    def __init__(self, kb: KnowledgeBase, predict=None, heads: Sequence[str] = (), k: int = 5,
                 splits: Sequence[str] = ("train",), head_observations: dict[str, Sequence[str]] | None = None,
                 power: float = 4.0):
        self.kb, self.predict, self.k, self.splits, self.power = kb, predict, k, tuple(splits), power
        self.hmap = head_map(heads, head_observations)

    def _hits(self, vector: np.ndarray, scope: Scope) -> list[dict[str, Any]]:
        hits = self.kb.search_vector("image", vector, self.k, scope)[0]
        if not hits:
            raise ReportDraftError(f"no report in the allowed splits ({', '.join(self.splits)}) to draft from")
        return hits

    def draft(self, vector: np.ndarray, predicted: dict[str, float] | None = None, method: str = "grounded",
              case_id: str | None = None, patient_id: str | None = None, item_ids: Sequence[str] = ()) -> ReportDraft:
        if method not in self.METHODS:
            raise ReportDraftError(f"unknown method {method!r}; allowed values: {', '.join(self.METHODS)}")
        scope = Scope.for_case(self.splits, patient_id, item_ids)
        hits = self._hits(vector, scope)
        predicted = dict(predicted or {})
        sources = [{"id": h["entry"].id, "case_id": h["entry"].case_id, "split": h["entry"].split,
                    "score": round(float(h["score"]), 4), "rank": h["rank"], "findings": h["entry"].text,
                    "impression": h["entry"].fields.get("impression", "")} for h in hits]
        if method == "nearest":
            best = 0
        else:
            toks = [rouge_tokens(h["entry"].text + " " + h["entry"].fields.get("impression", "")) for h in hits]
            s = np.array([max(h["score"], 0.0) for h in hits])
            w = (s / s.max()) ** self.power if s.max() > 0 else np.ones(len(hits))
            w = w / w.sum()
            cons = np.array([sum(wj * lcs_f(t2, t1) for wj, t2 in zip(w, toks)) for t1 in toks])
            agree = np.ones(len(hits))
            if method == "grounded" and predicted:
                for i, h in enumerate(hits):
                    pres = _present(h["entry"].text + " " + h["entry"].fields.get("impression", ""))
                    for head, p in predicted.items():
                        obs = set(self.hmap.get(head, ()))
                        if obs:
                            agree[i] *= p if pres & obs else (1 - p)
            best = int(np.argmax(cons * agree))
        sentences = self._sentences(hits, best)
        if method == "grounded":
            self._add_predicted(sentences, hits, predicted)
            for s in sentences:
                s.flag = _flag(s.text, predicted, self.hmap)
        return ReportDraft(sentences, predicted, sources, method, case_id,
                           {"splits": list(self.splits), "excluded_patient": patient_id is not None,
                            "excluded_items": len(item_ids)})

    def _sentences(self, hits, best: int) -> list[Sentence]:
        base = hits[best]["entry"]
        out = []
        for sec, text in (("FINDINGS", base.text), ("IMPRESSION", base.fields.get("impression", ""))):
            for sent in split_sentences(text):
                st = rouge_tokens(sent)
                cites = [base.id]
                cases = [base.case_id]
                for h in hits:
                    e = h["entry"]
                    if e.id == base.id:
                        continue
                    other = split_sentences(e.text) + split_sentences(e.fields.get("impression", ""))
                    if any(lcs_f(rouge_tokens(o), st) >= 0.9 for o in other):
                        cites.append(e.id)
                        cases.append(e.case_id)
                out.append(Sentence(sec, sent, cites, cases))
        return out

    def _add_predicted(self, sentences: list[Sentence], hits, predicted: dict[str, float]) -> None:
        have = _present(" ".join(s.text for s in sentences))
        for head, p in predicted.items():
            obs = set(self.hmap.get(head, ()))
            if p < 0.5 or not obs or have & obs:
                continue
            for h in hits:
                e = h["entry"]
                found = [x for x in split_sentences(e.text) if _present(x) & obs]
                if found:
                    # the finding first, drop denials of it from the base draft
                    sentences[:] = [s for s in sentences
                                    if not any(obs_label(s.text).get(o) == 0 for o in obs)]
                    sentences.insert(0, Sentence("FINDINGS", found[0], [e.id], [e.case_id], added_for=head))
                    have |= _present(found[0])
                    break


def check_citations(draft: ReportDraft, kb: KnowledgeBase) -> list[str]:
    """Problems with a draft's citations: a cited entry that does not exist, is outside the allowed splits,
    or belongs to the drafted case's own patient/items; empty when every citation is sound."""
    problems = []
    allowed = set(draft.scope.get("splits", ()))
    for s in draft.sentences:
        if not s.cites:
            problems.append(f"sentence {s.text!r} cites nothing")
        for c in s.cites:
            pos = kb.position.get(c)
            if pos is None:
                problems.append(f"sentence {s.text!r} cites {c!r}, which is not in the knowledge base")
                continue
            e = kb.entries[pos]
            if e.split not in allowed:
                problems.append(f"sentence {s.text!r} cites {c!r} of split {e.split!r} (allowed: {sorted(allowed)})")
            if draft.case_id is not None and e.case_id == draft.case_id:
                problems.append(f"sentence {s.text!r} cites the drafted case itself ({c!r})")
    return problems


# --- a store and a fusion model together -------------------------------------------------------------

class StoreReportDrafter:
    """A fusion model (its cohort, splits and heads) with the report knowledge base of its store.

    Predictions read the picture only (every other modality masked, as for a new picture), so the
    predicted findings never restate the case's own report."""

    def __init__(self, model_dir: str | Path, store_dir: str | Path | None = None, k: int = 5,
                 splits: Sequence[str] = ("train",), head_observations: dict[str, Sequence[str]] | None = None,
                 progress: bool = False):
        from ..encode import EmbeddingCache
        from ..explain import ModelContext
        from ..store import Store

        self.ctx = ModelContext.load(model_dir, store_dir=store_dir, progress=progress)
        if "image" not in self.ctx.modalities:
            raise ReportDraftError(f"{model_dir}: the model has no image modality (modalities: "
                                   f"{', '.join(self.ctx.modalities)}); drafting from pictures needs one")
        self.encoder = self.ctx.config.get("encoders", {}).get("image", {}).get("name", "efficientnet-lite0")
        sd = Path(self.ctx.store_dir)
        with Store(sd) as st:
            cache = EmbeddingCache(sd.parent / (sd.name + "-embeddings.duckdb"))
            try:
                self.kb = build_report_kb(st, self.ctx.cohort, self.encoder, cache, progress)
            finally:
                cache.close()
        heads = [s.name for s in self.ctx.model.head_specs if s.kind == "binary"]
        self.drafter = ReportDrafter(self.kb, heads=heads, k=k, splits=splits, head_observations=head_observations)

    def image_only_predictions(self, image_vec: np.ndarray) -> dict[str, float]:
        import torch

        from ..fuse import head_probs

        ds = self.ctx.dataset
        x, mask, _ = ds.tensors(np.array([0]))
        x = {m: torch.full_like(v, float("nan")) for m, v in x.items()}
        x["image"] = torch.from_numpy(np.asarray(image_vec, dtype=np.float32)[None])
        mask = torch.zeros_like(mask)
        mask[0, self.ctx.modalities.index("image")] = True
        with torch.no_grad():
            out = self.ctx.model(x, mask)
        temps = self.ctx.config.get("temperatures", {})
        return {s.name: float(head_probs(s, out["logits"][s.name], temps.get(s.name, 1.0))[0])
                for s in self.ctx.model.head_specs if s.kind == "binary"}

    def case_vector(self, case_id: str) -> np.ndarray:
        row = self.ctx.row(case_id)
        j = self.ctx.modalities.index("image")
        if not self.ctx.dataset.mask[row, j]:
            raise ReportDraftError(f"case {case_id!r} has no picture: nothing to draft a report from")
        return self.ctx.dataset.inputs["image"][row]

    def draft_case(self, case_id: str, method: str = "grounded") -> ReportDraft:
        vec = self.case_vector(case_id)
        row = self.ctx.cohort.table.iloc[self.ctx.row(case_id)]
        items = [i for m in self.ctx.cohort.modalities if f"{m}_items" in row for i in row[f"{m}_items"]]
        return self.drafter.draft(vec, self.image_only_predictions(vec), method, case_id=case_id,
                                  patient_id=row["patient_id"], item_ids=items)

    def draft_image(self, pixels: np.ndarray, method: str = "grounded") -> ReportDraft:
        from ..encode import get_encoder

        vec = get_encoder(self.encoder).encode([pixels])[0]
        return self.drafter.draft(vec, self.image_only_predictions(vec), method)


def own_report(kb: KnowledgeBase, case_id: str) -> str | None:
    """The case's own report text (FINDINGS + IMPRESSION) from the knowledge base, for scoring."""
    for e in kb.entries:
        if e.case_id == case_id:
            return f"FINDINGS: {e.text}\nIMPRESSION: {e.fields.get('impression', '')}"
    return None


def phantom_benchmark(n_patients: int = 300, seed: int = 0, n_boot: int = 1000, workdir: str | Path | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Phantom: generate, ingest, train an image-only model (heads disease, cardiomegaly),
    draft a report for every test case with a picture and a report, score against its own report."""
    import tempfile
    import time

    from ..config import parse_config
    from ..demo.phantom import generate_phantom
    from ..evaluate.text import text_report
    from ..train.pipeline import train_experiment

    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="medweave-draft-phantom-"))
    manifest = generate_phantom(work / "phantom", n_patients=n_patients, seed=seed)
    cfg = parse_config({
        "name": "phantom-report-drafting",
        "data": {"paths": [str(manifest.path("data"))], "mapping": str(manifest.mapping), "store": str(work / "store")},
        "cohort": {"case": "patient", "targets": ["disease", "cardiomegaly"], "seed": seed},
        "model": {"kind": "sequential", "modalities": ["image"], "hidden": 64},
        "train": {"epochs": 60, "patience": 8, "seed": seed},
    }, "phantom-report-drafting")
    train_experiment(cfg, work / "model", progress=progress)
    t0 = time.perf_counter()
    srd = StoreReportDrafter(work / "model", progress=progress)
    build_s = time.perf_counter() - t0
    test_cases = sorted({e.case_id for e in srd.kb.entries if e.split == "test"})
    refs = [own_report(srd.kb, c) for c in test_cases]
    out: dict[str, Any] = {"cases": len(test_cases), "kb_reports": sum(e.split == "train" for e in srd.kb.entries),
                           "kb_build_seconds": build_s, "methods": {}}
    # the degenerate baseline: the most common training report for every case
    train_reports = [f"FINDINGS: {e.text}\nIMPRESSION: {e.fields.get('impression', '')}"
                     for e in srd.kb.entries if e.split == "train"]
    common = collections.Counter(train_reports).most_common(1)[0][0]
    out["methods"]["most-common"] = text_report([common] * len(refs), refs, n_boot=n_boot)
    for method in ReportDrafter.METHODS:
        t1 = time.perf_counter()
        drafts = [srd.draft_case(c, method) for c in test_cases]
        per = (time.perf_counter() - t1) / max(1, len(drafts))
        rep = text_report([d.text for d in drafts], refs, n_boot=n_boot)
        problems = [p for d in drafts for p in check_citations(d, srd.kb)]
        rep.update({"seconds_per_report": per, "citations_ok": f"{len(drafts) - len({id(d) for d in drafts if check_citations(d, srd.kb)})}/{len(drafts)}",
                    "citation_problems": problems[:10],
                    "flagged": sum(len(d.flagged) for d in drafts),
                    "sentences": sum(len(d.sentences) for d in drafts)})
        out["methods"][method] = rep
    # how well the image-only heads predict the findings (AUROC on the test cases)
    from ..evaluate.metrics import auroc

    t = srd.ctx.cohort.table.set_index("case_id")
    aur = {}
    for head in srd.drafter.hmap:
        y = np.array([t.loc[c, head] for c in test_cases], dtype=float)
        p = np.array([srd.image_only_predictions(srd.case_vector(c))[head] for c in test_cases])
        keep = ~np.isnan(y)
        if len(np.unique(y[keep])) == 2:
            aur[head] = auroc(y[keep].astype(int), p[keep])
    out["image_only_auroc"] = aur
    out["workdir"] = str(work)
    return out
