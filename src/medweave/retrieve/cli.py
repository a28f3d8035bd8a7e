"""``medweave retrieve``: similar cases to a picture (and optionally a question) from a VQA model's
training cases, through a FAISS index, with same-organ precision@k (leave-one-out); or reports and
question-answer pairs matching a text query, from a store or a drafter's knowledge base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def retrieve(
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder from `medweave vqa train` (with --image)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Picture file to find similar cases for."),
    k: int = typer.Option(5, "-k", help="How many cases."),
    question: Optional[str] = typer.Option(None, "--question", help="Also match on this question (joint index)."),
    text: Optional[str] = typer.Option(None, "--text", help="A text query: find matching reports (with --store "
                                       "or --drafter)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Store whose reports and QA pairs --text searches."),
    drafter: Optional[Path] = typer.Option(None, "--drafter", help="A `medweave draft fit` folder: --text searches "
                                           "its training reports (findings), showing their impressions."),
    kind: str = typer.Option("report", "--kind", help="With --store: report, qa or both (report,qa)."),
    index: str = typer.Option("bm25", "--index", help="Text index for --store: bm25, tfidf-plain, tfidf, dense "
                              "or hybrid (a --drafter folder keeps its own)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Similar cases: to a picture (VQA model's cases) or to a text (reports of a store or a drafter)."""
    if text is not None:
        if model is not None or image is not None:
            _fail("--text searches reports; give it with --store or --drafter, not with --model/--image")
        return _retrieve_text(text, store, drafter, kind, index, k, as_json)
    if model is None or image is None:
        _fail("give --model and --image (similar pictures), or --text with --store or --drafter (reports)")
    return _retrieve_image(model, image, k, question, as_json)


def _retrieve_text(text: str, store: Path | None, drafter: Path | None, kind: str, index: str, k: int,
                   as_json: bool) -> None:
    from .kb import KnowledgeBase, KnowledgeBaseError, Scope

    if (store is None) == (drafter is None):
        _fail("--text needs exactly one of --store DIR or --drafter DIR")
    if not text.strip():
        _fail("--text is empty")
    try:
        if drafter is not None:
            kb = KnowledgeBase.load(drafter / "kb")
        else:
            from ..store import Store

            with Store(store) as st:
                kb = KnowledgeBase.from_store(st, [x.strip() for x in kind.split(",") if x.strip()], index)
        if not len(kb) or kb.text_index is None:
            _fail(f"{store or drafter}: no reports to search")
        splits = sorted({e.split for e in kb.entries})
        hits = kb.search_text([text], k, Scope(tuple(splits)))[0]
    except (KnowledgeBaseError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    rows = []
    for h in hits:
        e = h["entry"]
        sec = e.fields.get("sections") or {}
        rows.append({"rank": h["rank"], "score": round(h["score"], 4), "id": e.id, "kind": e.kind,
                     "split": e.split, "patient_id": e.patient_id,
                     "findings": sec.get("FINDINGS", e.text if e.kind == "report" else None),
                     "impression": sec.get("IMPRESSION", e.fields.get("impression")),
                     "question": e.text if e.kind == "qa" else None, "answer": e.fields.get("answer")})
    if as_json:
        out.print_json(json.dumps({"query": text, "k": k, "searched": len(kb), "hits": rows}, default=str))
        return
    for r in rows:
        out.print(f"{r['rank']}. {r['score']:.3f}  {r['id']}  ({r['kind']}, split {r['split']})",
                  highlight=False, markup=False)
        if r["kind"] == "qa":
            out.print(f"     Q: {r['question']}  A: {r['answer']}", highlight=False, markup=False)
        else:
            if r["findings"]:
                out.print(f"     FINDINGS: {r['findings']}", highlight=False, markup=False)
            if r["impression"]:
                out.print(f"     IMPRESSION: {r['impression']}", highlight=False, markup=False)
    out.print(f"{len(rows)} of {len(kb)} entries", highlight=False)


def _retrieve_image(model: Path, image: Path, k: int, question: str | None, as_json: bool) -> None:
    from ..vqa.features import embed_image_files, embed_questions, open_cache
    from ..vqa.model import Answerer
    from ..vqa.pipeline import CACHE_NAME
    from .index import case_indexes, precision_at_k

    try:
        answerer = Answerer.load(model)
        with open_cache(model / CACHE_NAME) as cache:
            img = embed_image_files([image], cache, answerer.image_encoders())
            qe = embed_questions([question], cache) if question else None
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2)
    pictures, joint = case_indexes(answerer.mem_img, answerer.mem_q, answerer.cases)
    hits = (joint.search(pictures.joint([img, qe]), k) if qe is not None else pictures.search(img, k))[0]
    organs = [r["organ"] for r in pictures.records]
    p_at_k = precision_at_k(pictures, pictures.vectors, organs, "organ", k,
                            exclude=range(len(pictures)))
    res = {"image": str(image), "k": k, "hits": hits, "precision_at_k_same_organ": p_at_k,
           "indexed_pictures": len(pictures)}
    if as_json:
        out.print_json(json.dumps(res, default=str))
        return
    for h in hits:
        extra = f": {h['question']} -> {h['answer']}" if "question" in h else f" ({h['questions']} questions)"
        out.print(f"{h['rank']}. {h['score']:.3f}  {h['image']}  organ={h['organ']}{extra}",
                  highlight=False, markup=False)
    out.print(f"same-organ precision@{k} over the {len(pictures)} indexed pictures (leave-one-out): {p_at_k:.3f}",
              highlight=False)
