"""A knowledge base: entries (report sections, question-answer pairs, pictures) with their text and/or
vector, searched lexically (TF-IDF, BM25), densely (vectors through ``Index``) or by both fused, with
filters by modality, organ, namespace, kind and split.

**Leakage is impossible by construction.** Every search takes a ``Scope``: the splits it may draw on
and, when a case is being evaluated, the case's patient and item ids. The scope becomes an ``allow``
mask that the index applies *inside* its ranking, so an entry of the case itself, of its patient's
other items, or of a split outside the scope is never a candidate (not filtered afterwards, where a
short list could run out). A search without an explicit list of splits is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .text import KINDS as TEXT_KINDS, TextIndex, make_index

ENTRY_KINDS = ("findings", "impression", "indication", "report", "qa", "image")
_SECTION = re.compile(r"^\s*(FINDINGS|IMPRESSION|INDICATION|COMPARISON|EXAMINATION|HISTORY)\s*:\s*", re.I | re.M)


def report_sections(text: str, sections: dict[str, str] | None = None) -> dict[str, str]:
    """FINDINGS / IMPRESSION (and others) of a report: the stored sections (Open-i), else the
    ``NAME:`` headings of its text (each section ends at the next heading or blank line)."""
    if sections:
        return {k.upper(): v for k, v in sections.items() if v}
    out: dict[str, str] = {}
    marks = list(_SECTION.finditer(text or ""))
    for m, nxt in zip(marks, marks[1:] + [None]):
        body = text[m.end(): nxt.start() if nxt else len(text)]
        body = re.split(r"\n\s*\n", body.strip(), maxsplit=1)[0]  # a signature may follow
        out[m.group(1).upper()] = " ".join(body.split())
    return out


class KnowledgeBaseError(ValueError):
    """A knowledge-base request that cannot be answered; the message names the value and the allowed ones."""


@dataclass
class Entry:
    """One retrievable thing. ``id`` is unique; ``item_id``/``patient_id``/``case_id`` tie it to the store."""

    id: str
    kind: str  # one of ENTRY_KINDS
    text: str = ""
    split: str = "train"
    patient_id: str | None = None
    case_id: str | None = None
    item_id: str | None = None
    study_id: str | None = None
    modality: str | None = None
    organ: str | None = None
    namespace: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # e.g. the report's impression, the QA answer

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, "")}


@dataclass(frozen=True)
class Scope:
    """What a search may return: entries of ``splits`` only, never of ``exclude_patients`` or
    ``exclude_items`` (a case's own patient and items), and never the ``exclude_ids``."""

    splits: tuple[str, ...]
    exclude_patients: frozenset[str] = frozenset()
    exclude_items: frozenset[str] = frozenset()
    exclude_ids: frozenset[str] = frozenset()

    @classmethod
    def for_case(cls, splits: Iterable[str], patient_id: str | None = None, item_ids: Iterable[str] = (),
                 entry_ids: Iterable[str] = ()) -> "Scope":
        return cls(tuple(splits), frozenset([patient_id] if patient_id else []), frozenset(item_ids),
                   frozenset(entry_ids))


FILTER_KEYS = ("kind", "modality", "organ", "namespace")


class KnowledgeBase:
    """Entries plus a text index over their texts (``text_index``: tfidf | bm25 | dense | hybrid) and,
    for entries with vectors, a vector index per vector space (``vectors={space: (ids, array)}``)."""

    def __init__(self, entries: Sequence[Entry], text_index: str | None = "tfidf",
                 vectors: dict[str, tuple[Sequence[str], np.ndarray]] | None = None, encode=None):
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise KnowledgeBaseError(f"entry id {dup!r} appears more than once; ids must be unique")
        for e in entries:
            if e.kind not in ENTRY_KINDS:
                raise KnowledgeBaseError(f"entry {e.id!r}: unknown kind {e.kind!r}; allowed values: "
                                         f"{', '.join(ENTRY_KINDS)}")
        self.entries = list(entries)
        self.position = {e.id: i for i, e in enumerate(self.entries)}
        self.text_kind = text_index
        self._text_rows = np.array([i for i, e in enumerate(self.entries) if e.text.strip()], dtype=int)
        self.text_index: TextIndex | None = None
        if text_index and len(self._text_rows):
            if text_index not in TEXT_KINDS:
                raise KnowledgeBaseError(f"unknown text index {text_index!r}; allowed values: {', '.join(TEXT_KINDS)}")
            self.text_index = make_index(text_index, encode).fit([self.entries[i].text for i in self._text_rows])
        self.vector_spaces: dict[str, tuple[np.ndarray, Any]] = {}
        for space, (vid, arr) in (vectors or {}).items():
            self.add_vectors(space, vid, arr)
        self._col = {k: np.array([getattr(e, k) for e in self.entries], dtype=object) for k in
                     ("split", "patient_id", "item_id", "id", *FILTER_KEYS)}

    def __len__(self) -> int:
        return len(self.entries)

    def add_vectors(self, space: str, ids: Sequence[str], array: np.ndarray) -> None:
        """Index vectors (rows aligned with ``ids``, entry ids) in a named space (``image``, ``text-e5``)."""
        from .index import Index

        missing = [i for i in ids if i not in self.position]
        if missing:
            raise KnowledgeBaseError(f"vector space {space!r}: unknown entry id {missing[0]!r}")
        rows = np.array([self.position[i] for i in ids], dtype=int)
        self.vector_spaces[space] = (rows, Index(np.asarray(array, dtype=np.float32), [{"row": int(r)} for r in rows]))

    # --- scoping ---------------------------------------------------------------------------------
    def allow_mask(self, scope: Scope, filters: dict[str, Any] | None = None) -> np.ndarray:
        """The entries a search under ``scope`` and ``filters`` may return (boolean over all entries)."""
        if not isinstance(scope, Scope) or not scope.splits:
            raise KnowledgeBaseError("a search needs a Scope naming the splits it may draw on "
                                     "(e.g. Scope(splits=('train',))): leakage is refused by default")
        mask = np.isin(self._col["split"], list(scope.splits))
        if scope.exclude_patients:
            mask &= ~np.isin(self._col["patient_id"], list(scope.exclude_patients))
        if scope.exclude_items:
            mask &= ~np.isin(self._col["item_id"], list(scope.exclude_items))
        if scope.exclude_ids:
            mask &= ~np.isin(self._col["id"], list(scope.exclude_ids))
        for key, want in (filters or {}).items():
            if key not in FILTER_KEYS:
                raise KnowledgeBaseError(f"unknown filter {key!r}; allowed values: {', '.join(FILTER_KEYS)}")
            values = [want] if isinstance(want, str) else list(want)
            mask &= np.isin(self._col[key], values)
        return mask

    # --- search ----------------------------------------------------------------------------------
    def search_text(self, queries: Sequence[str], k: int, scope: Scope | Sequence[Scope],
                    filters: dict[str, Any] | None = None) -> list[list[dict[str, Any]]]:
        """Per query the k best entries by the text index, each ``{"entry": Entry, "score", "rank"}``.

        ``scope``: one for all queries, or one per query (each evaluated case its own)."""
        if self.text_index is None:
            raise KnowledgeBaseError("this knowledge base has no text index (no entry has text)")
        scopes = [scope] * len(queries) if isinstance(scope, Scope) else list(scope)
        if len(scopes) != len(queries):
            raise KnowledgeBaseError(f"{len(queries)} queries but {len(scopes)} scopes")
        allow = np.stack([self.allow_mask(s, filters)[self._text_rows] for s in scopes]) if len(queries) else None
        hits = self.text_index.search(list(queries), k, allow)
        return [[{"entry": self.entries[self._text_rows[r]], "score": s, "rank": j + 1}
                 for j, (r, s) in enumerate(h)] for h in hits]

    def text_scores(self, queries: Sequence[str]) -> np.ndarray:
        """Raw similarity of each query to every entry with text (rows of ``text_rows``); for callers that
        rank under their own scope (``allow_mask(...)[kb.text_rows]``)."""
        if self.text_index is None:
            raise KnowledgeBaseError("this knowledge base has no text index (no entry has text)")
        return self.text_index.scores(list(queries))

    @property
    def text_rows(self) -> np.ndarray:
        return self._text_rows

    def search_vector(self, space: str, queries: np.ndarray, k: int, scope: Scope | Sequence[Scope],
                      filters: dict[str, Any] | None = None) -> list[list[dict[str, Any]]]:
        """Per query row the k nearest entries in a vector space, under the scope (see ``search_text``)."""
        if space not in self.vector_spaces:
            raise KnowledgeBaseError(f"no vector space {space!r}; spaces: {', '.join(self.vector_spaces) or '(none)'}")
        rows, index = self.vector_spaces[space]
        queries = np.atleast_2d(queries)
        scopes = [scope] * len(queries) if isinstance(scope, Scope) else list(scope)
        out = []
        for q, s in zip(queries, scopes):
            allow = self.allow_mask(s, filters)[rows]
            hits = index.search(q[None], k, allow=allow)[0]
            out.append([{"entry": self.entries[rows[h["row"]]], "score": h["score"], "rank": h["rank"]}
                        for h in hits])
        return out

    @classmethod
    def from_store(cls, store, kinds: Sequence[str] = ("report", "qa"), text_index: str = "tfidf",
                   split_of: dict[str, str] | None = None) -> "KnowledgeBase":
        """Text entries from a store: each report (text item) as ``report`` (its findings and impression
        when it has those sections, else its text; sections in ``fields``), each question-answer pair as
        ``qa`` (question, answer in ``fields``). ``split_of`` maps patient ids to splits (a cohort's);
        without it an item's own ``split`` field is used, else ``all``."""
        import json as _json

        entries = []
        wanted = {"report": "text", "qa": "qa"}
        for kind in kinds:
            if kind not in wanted:
                raise KnowledgeBaseError(f"unknown kind {kind!r} for a store knowledge base; allowed: report, qa")
            for r in store.items("modality = ?", [wanted[kind]]).to_dict("records"):
                meta = r.get("meta")
                meta = _json.loads(meta) if isinstance(meta, str) else (meta or {})
                split = (split_of or {}).get(r["patient_id"]) or r.get("split") or "all"
                base = dict(id=r["item_id"], kind=kind, split=str(split), patient_id=r["patient_id"],
                            item_id=r["item_id"], study_id=r.get("study_id"), modality=r["modality"],
                            organ=r.get("organ"), namespace=None)
                if kind == "report":
                    sec = report_sections(r.get("text") or "", meta.get("sections"))
                    body = " ".join(x for x in (sec.get("FINDINGS", ""), sec.get("IMPRESSION", "")) if x)
                    entries.append(Entry(**base, text=body or (r.get("text") or ""),
                                         fields={"sections": sec} if sec else {}))
                else:
                    entries.append(Entry(**base, text=r.get("text") or "", fields={"answer": r.get("answer")}))
        return cls(entries, text_index=text_index)

    # --- persistence -----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """``entries.jsonl`` + ``vectors-<space>.npy`` (+ ids); text indexes are rebuilt on load (seconds)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "entries.jsonl", "w", encoding="utf-8") as fh:
            for e in self.entries:
                fh.write(json.dumps(asdict(e), sort_keys=True) + "\n")
        spaces = {}
        for space, (rows, index) in self.vector_spaces.items():
            safe = re.sub(r"[^A-Za-z0-9_-]", "_", space)
            np.save(folder / f"vectors-{safe}.npy", index.vectors)
            spaces[space] = {"file": f"vectors-{safe}.npy", "ids": [self.entries[r].id for r in rows]}
        (folder / "kb.json").write_text(json.dumps({"text_index": self.text_kind, "vector_spaces": spaces},
                                                   indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, encode=None) -> "KnowledgeBase":
        folder = Path(folder)
        meta_path = folder / "kb.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder}: no knowledge base here (expected kb.json and entries.jsonl)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        entries = [Entry(**json.loads(line)) for line in open(folder / "entries.jsonl", encoding="utf-8") if line.strip()]
        vectors = {s: (v["ids"], np.load(folder / v["file"])) for s, v in meta.get("vector_spaces", {}).items()}
        return cls(entries, meta.get("text_index"), vectors, encode=encode)
