"""``medweave retrieve``: similar cases to a picture (and optionally a question) from a VQA model's
training cases, through a FAISS index; prints precision@k for the same organ (leave-one-out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)


def retrieve(
    model: Path = typer.Option(..., "--model", help="Model folder from `medweave vqa train`."),
    image: Path = typer.Option(..., "--image", help="Picture file to find similar cases for."),
    k: int = typer.Option(5, "-k", help="How many cases."),
    question: Optional[str] = typer.Option(None, "--question", help="Also match on this question (joint index)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The k most similar training cases (picture, organ, score) and same-organ precision@k."""
    from ..vqa.features import embed_image_files, embed_questions, open_cache
    from ..vqa.model import Answerer
    from ..vqa.pipeline import CACHE_NAME
    from .index import case_indexes, precision_at_k

    try:
        answerer = Answerer.load(model)
        with open_cache(model / CACHE_NAME) as cache:
            img = embed_image_files([image], cache)
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
