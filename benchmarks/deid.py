"""Score the free-text scrubber on the labelled synthetic notes (tests/data/deid/notes.txt) and measure
what it takes away from real, already de-identified clinical text.

Tables:
  1. recall per HIPAA Safe Harbor category, on the dev notes (looked at while writing the rules) and
     on the test notes (only scored), beside the baseline: the rules medweave had before (titles,
     labels, dates, phones, e-mail, labelled record numbers, 6+ digit numbers);
  2. recall per group (names, locations, structured identifiers) and precision per tag;
  3. over-scrubbing: clinical words marked KEEP (eponyms, drugs, devices) taken away, and every
     other non-identifier token taken away;
  4. real text ($MEDWEAVE_DATA): Open-i report findings/impressions (openi-summ) and VQA-RAD /
     PathVQA questions and answers. They hold no identifiers (Open-i's were replaced by XXXX), so
     every token taken away is over-scrubbing: share of texts changed, tokens taken, the most
     frequent words taken, and the scrubber's speed.

Counting (medweave.store.deid_score): per token; a labelled token is caught when a found span
covers it whole; titles and credentials are not counted.

Usage: python benchmarks/deid.py [--corpus PATH] [--data DIR] [--show-misses]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

from medweave.settings import shared_data_dir
from medweave.store.deid_score import CATEGORIES, GROUPS, corpus_path, parse_notes, score
from medweave.store.deid_text import Span, find_phi

# --- the baseline: medweave's rules before this benchmark existed (copied, to stay comparable) -----
_M = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|"
      r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_OLD = [
    ("ID", None),  # known strings: none in this corpus
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("ID", re.compile(r"\b(?:MRN|MR#|medical record(?: number| no\.?)?|record(?: number| no\.?| #)|"
                      r"acc(?:ession)?(?: number| no\.?| #)?|patient id|pt id|ssn|social security(?: number)?)"
                      r"\s*[:#]?\s*[A-Z0-9-]{3,}", re.IGNORECASE)),
    ("DATE", re.compile("|".join([rf"\b\d{{1,2}}[-/ ]{_M}[-/ ,]+\d{{2,4}}\b",
                                  rf"\b{_M}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b",
                                  r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b", r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b",
                                  r"\b(?:19|20)\d{6}\b"]), re.IGNORECASE)),
    ("PHONE", re.compile(r"(?<![\w/])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{3}[\s.-])\d{3}[\s.-]?\d{3,4}\b")),
    ("ID", re.compile(r"\b\d{6,}\b")),
    ("NAME", re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+[A-Z][a-zA-Z'-]+(?:\s+[A-Z][a-zA-Z'-]+)?")),
    ("NAME", re.compile(r"\b(?i:patient name|name|patient|physician|doctor|attending|referring|signed by|"
                        r"dictated by|reported by|electronically signed by)\s*:\s*(?:(?:Dr|Mr|Mrs|Ms|Miss|Prof)"
                        r"\.?\s+)?[A-Z][a-zA-Z'-]+(?:(?:, ?| )[A-Z][a-zA-Z'-]+){0,2}")),
]


def baseline_find(text: str) -> list[Span]:
    """The old rules as spans (they ran one after another on the rewritten text; on spans of the
    original text they find the same things, give or take a tag)."""
    spans = [Span(m.start(), m.end(), tag) for tag, rx in _OLD if rx is not None for m in rx.finditer(text)]
    return sorted(spans, key=lambda s: s.start)


def _taken(text: str, find) -> list[str]:
    spans = find(text)
    return [t.group(0) for t in re.finditer(r"[A-Za-z]+|[0-9]+", text)
            if any(s.start < t.end() and t.start() < s.end for s in spans)]


def _real_texts(data: Path) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    summ = data / "openi-summ"
    if summ.is_dir():
        rows = [json.loads(line) for f in sorted(summ.glob("*.jsonl")) for line in f.open(encoding="utf-8")]
        sets["Open-i findings+impressions"] = [f"{r['inputs']}\n{r['target']}" for r in rows]
    for name, folder in (("VQA-RAD q+a", "vqa-rad"), ("PathVQA q+a", "pathvqa")):
        f = data / folder / "trainset.json"
        if f.is_file():
            recs = json.loads(f.read_text(encoding="utf-8"))
            sets[name] = [f"{r['question']}\n{r['answer']}" for r in recs]
    return sets


def _fmt(a: int, b: int) -> str:
    return f"{a / b:.3f} ({a}/{b})" if b else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=corpus_path())
    ap.add_argument("--data", type=Path, default=shared_data_dir())
    ap.add_argument("--show-misses", action="store_true", help="list every identifier missed and token taken wrongly")
    a = ap.parse_args(argv)

    notes = parse_notes(a.corpus)
    dev = [n for n in notes if n.split == "dev"]
    test = [n for n in notes if n.split == "test"]
    runs = {("medweave", "dev"): score(dev, find_phi), ("medweave", "test"): score(test, find_phi),
            ("baseline", "dev"): score(dev, baseline_find), ("baseline", "test"): score(test, baseline_find)}
    n_ids = sum(1 for n in notes for *_, c in n.labels if c != "KEEP")
    print(f"corpus: {a.corpus} - {len(notes)} notes ({len(dev)} dev, {len(test)} test), {n_ids} labelled identifiers")
    print()
    print("1. recall per category (identifier tokens caught / identifier tokens)")
    print(f"{'category':10s} {'medweave dev':>18s} {'medweave test':>18s} {'baseline test':>18s}")
    for cat in CATEGORIES:
        cells = [runs[k].recall.get(cat, (0, 0)) for k in (("medweave", "dev"), ("medweave", "test"), ("baseline", "test"))]
        print(f"{cat:10s} " + " ".join(f"{_fmt(*c):>18s}" for c in cells))
    print()
    print("2. recall per group, precision")
    print(f"{'':24s} {'medweave dev':>14s} {'medweave test':>14s} {'baseline dev':>14s} {'baseline test':>14s}")
    keys = [("medweave", "dev"), ("medweave", "test"), ("baseline", "dev"), ("baseline", "test")]
    for group in GROUPS:
        target = {"names": "(aim >= 0.95)", "structured": "(aim >= 0.99)"}.get(group, "")
        print(f"{'recall ' + group + ' ' + target:24s} " + " ".join(f"{runs[k].group_recall(group):14.3f}" for k in keys))
    print(f"{'precision (all tags)':24s} " + " ".join(f"{runs[k].overall_precision():14.3f}" for k in keys))
    tags = sorted({t for k in keys for t in runs[k].precision})
    for tag in tags:
        print(f"{'  precision ' + tag:24s} " + " ".join(f"{_fmt(*runs[k].precision.get(tag, (0, 0))):>14s}"
                                                     if runs[k].precision.get(tag) else f"{'-':>14s}" for k in keys))
    print()
    print("3. over-scrubbing on the notes (tokens taken away / tokens)")
    print(f"{'clinical words (KEEP)':24s} " + " ".join(f"{_fmt(*runs[k].keep):>14s}" for k in keys))
    print(f"{'all non-identifiers':24s} " + " ".join(f"{_fmt(*runs[k].other):>14s}" for k in keys))
    if a.show_misses:
        for k in keys[:2]:
            print(f"\n{k[0]} {k[1]}: missed {runs[k].missed}\n  taken wrongly {runs[k].wrong}")
    print()
    sets = _real_texts(a.data)
    if not sets:
        print(f"4. real text: skipped, no data under {a.data} (set --data or MEDWEAVE_DATA)")
        return 0
    print("4. real text without identifiers (every token taken is over-scrubbing)")
    print(f"{'set':30s} {'texts':>7s} {'scrubber':>9s} {'texts changed':>14s} {'tokens taken':>18s} {'ms/text':>8s}  most taken")
    for name, texts in sets.items():
        n_tokens = sum(len(re.findall(r"[A-Za-z]+|[0-9]+", t)) for t in texts)
        for label, find in (("medweave", find_phi), ("baseline", baseline_find)):
            t0 = time.perf_counter()
            taken = [_taken(t, find) for t in texts]
            ms = (time.perf_counter() - t0) * 1000 / len(texts)
            changed = sum(1 for x in taken if x)
            words = Counter(w for x in taken for w in x).most_common(6)
            print(f"{name:30s} {len(texts):7d} {label:>9s} {changed / len(texts):14.4f} "
                  f"{_fmt(sum(map(len, taken)), n_tokens):>18s} {ms:8.3f}  "
                  + ", ".join(f"{w} ({c})" for w, c in words))
    return 0


if __name__ == "__main__":
    sys.exit(main())
