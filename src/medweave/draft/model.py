"""Fit, select, save and load impression drafters (``medweave draft fit`` / ``draft impression``).

A model folder holds::

    drafter.json   method, parameters, training data (path, count, sha256), the validation table
                   the method was selected on, library versions
    kb/            the knowledge base: the training reports (entries.jsonl), rebuilt into its index on load
    learned.pkl    the learned parts (sentence classifier, reranker) of methods that have them

``learned.pkl`` is a Python pickle (scikit-learn models): load model folders you trust, as with any
pickle.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..retrieve.kb import KnowledgeBase
from .data import Report, load_split
from .impression import DRAFTERS, ImpressionDrafter, Rerank

LEARNED = {"rerank": ("scorer", "model", "_train_count"), "most-common": ("text", "source_ids", "count")}
DEFAULT_METHODS = ("nearest", "consensus", "rerank")


class DraftModelError(ValueError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_drafter(method: str, **params: Any) -> ImpressionDrafter:
    if method not in DRAFTERS:
        raise DraftModelError(f"unknown drafting method {method!r}; allowed values: {', '.join(DRAFTERS)}")
    return DRAFTERS[method](**params)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    from ..evaluate.text import rouge_per_report

    return float(rouge_per_report(predictions, references)["rougeL"].mean())


def fit_and_select(data: str | Path, methods: Sequence[str] = DEFAULT_METHODS, seed: int = 0,
                   progress: bool = True, text_index: str = "tfidf") -> tuple[ImpressionDrafter, dict[str, Any]]:
    """Fit each method on ``DATA/train.jsonl``, score ROUGE-L on ``DATA/validate.jsonl``, keep the best."""
    from ..progress import console

    data = Path(data)
    train = load_split(data, "train")
    valid = load_split(data, "validate") if (data / "validate.jsonl").is_file() else []
    table: dict[str, Any] = {}
    best, best_score = None, -np.inf
    for m in methods:
        t0 = time.perf_counter()
        d = make_drafter(m, seed=seed, text_index=text_index).fit(train, progress=progress)
        fit_s = time.perf_counter() - t0
        row: dict[str, Any] = {"fit_seconds": round(fit_s, 1)}
        if valid:
            t1 = time.perf_counter()
            drafts = d.draft([r.findings for r in valid])
            row["seconds_per_report"] = round((time.perf_counter() - t1) / len(valid), 4)
            row["validate_rougeL"] = round(rouge_l([x.text for x in drafts], [r.impression for r in valid]), 2)
            score = row["validate_rougeL"]
        else:
            score = -DEFAULT_METHODS.index(m) if m in DEFAULT_METHODS else 0
        if progress:
            console.print(f"  {m}: {row}", highlight=False)
        table[m] = row
        if score > best_score:
            best, best_score = d, score
    info = {"selected_on": "validate" if valid else "(no validate.jsonl: the last listed method)",
            "methods": table, "train": {"path": str(data / "train.jsonl"), "reports": len(train),
                                        "sha256": _sha256(data / "train.jsonl")},
            "validate": {"reports": len(valid)}}
    return best, info


def save_drafter(drafter: ImpressionDrafter, out: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write a model folder (see the module docstring); written beside and renamed into place."""
    import sklearn

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    drafter.kb.save(tmp / "kb")
    learned = {k: getattr(drafter, k) for k in LEARNED.get(drafter.name, ())}
    if learned:
        with open(tmp / "learned.pkl", "wb") as fh:
            pickle.dump(learned, fh, protocol=pickle.HIGHEST_PROTOCOL)
    meta = {"format": "medweave-drafter", "version": 1, "method": drafter.name, "params": drafter.params(),
            "medweave_version": __version__, "sklearn_version": sklearn.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **(info or {})}
    (tmp / "drafter.json").write_text(json.dumps(meta, indent=1, default=str) + "\n", encoding="utf-8")
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def load_drafter(folder: str | Path) -> tuple[ImpressionDrafter, dict[str, Any]]:
    folder = Path(folder)
    meta_path = folder / "drafter.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no drafter here (expected drafter.json); make one with "
                                f"`medweave draft fit --data ../shared/data/openi-summ --out {folder}`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != "medweave-drafter":
        raise DraftModelError(f"{meta_path}: not a medweave drafter (format {meta.get('format')!r})")
    drafter = make_drafter(meta["method"], **meta.get("params", {}))
    drafter.kb = KnowledgeBase.load(folder / "kb")
    names = LEARNED.get(drafter.name, ())
    if names:
        with open(folder / "learned.pkl", "rb") as fh:
            learned = pickle.load(fh)  # noqa: S301 - a model folder is trusted like any pickle
        for k in names:
            setattr(drafter, k, learned[k])
    return drafter, meta


def draft_file(drafter: ImpressionDrafter, inp: str | Path, out: str | Path, batch: int = 64,
               progress: bool = True) -> dict[str, Any]:
    """Draft every line of a JSON-lines file (``inputs`` = findings); write each line back with
    ``prediction`` and ``sources`` added (a bad line gets ``error`` instead, and the rest goes on).
    The output is written to a temporary file and renamed into place."""
    from ..progress import progress_bar
    from .data import read_jsonl

    inp, out = Path(inp), Path(out)
    reports, errors = read_jsonl(inp, "input", need_target=False)
    with open(inp, encoding="utf-8") as fh:
        raw_lines = fh.read().splitlines()
    t0 = time.perf_counter()
    drafts = []
    with progress_bar("draft impressions", total=len(reports), unit="reports", enabled=progress) as adv:
        for s in range(0, len(reports), batch):
            chunk = reports[s:s + batch]
            drafts.extend(drafter.draft([r.findings for r in chunk]))
            adv(len(chunk))
    seconds = time.perf_counter() - t0
    rows: list[tuple[int, str]] = []
    for r, d in zip(reports, drafts):
        rows.append((r.line, json.dumps({**r.raw, **d.to_dict()}, ensure_ascii=False)))
    for n, msg in errors:
        try:
            rec = json.loads(raw_lines[n - 1])
            rec = rec if isinstance(rec, dict) else {"line": rec}
        except json.JSONDecodeError:
            rec = {"line": raw_lines[n - 1]}
        rows.append((n, json.dumps({**rec, "error": msg}, ensure_ascii=False)))
    lines = [text for _, text in sorted(rows)]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + ("\n" if lines else ""))
    os.replace(tmp, out)
    return {"input": str(inp), "output": str(out), "drafted": len(reports), "failed": len(errors),
            "errors": [m for _, m in errors], "seconds_per_report": seconds / max(1, len(reports))}


__all__ = ["DraftModelError", "Rerank", "Report", "draft_file", "fit_and_select", "load_drafter", "save_drafter"]
