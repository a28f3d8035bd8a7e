"""Picture heads for the picture-decided question types (issue 10): does a frozen-feature organ /
modality / plane head, fed into a trained answerer, answer open MODALITY / PLANE / ORGAN questions
from the picture whatever their wording? Measured on the held-out side of the split the model was
trained on (``medweave vqa train --split testlike``), by question type, beside the answerer alone.

    .venv/bin/python benchmarks/vqa_heads.py --model runs/vqa-testlike [--cache FILE]

The heads: one logistic regression per kind over the model's own training pictures (its memory, the
224 view, L2-normalised), labelled with what the training side states of each picture
(``facts.picture_facts``: organ from ``image_organ``, modality and plane from MODALITY / PLANE answers);
nothing held out is read. Each value answers with the text training gave most often to open questions
of that type naming it ("mri", "axial", "abdomen"). A question's head mass is P(type) x P(open) from
the answerer's own heads; the answerer's distribution keeps the rest, then the same-picture memory is
blended in as ``Answerer.predict`` does. No setting is tuned. Prints tables; not a timed test.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from medweave.evaluate.answers import vqa_scores
from medweave.vqa.data import load_vqa, main_question_type
from medweave.vqa.facts import _MODALITY_WORDS, _ORGAN_WORDS, _PLANE_WORDS, _named, picture_facts
from medweave.vqa.features import open_cache
from medweave.vqa.model import Answerer, _l2
from medweave.vqa.normalize import normalize_answer
from medweave.vqa.pipeline import CACHE_NAME, embed_set
from medweave.vqa.splits import make_split

console = Console(width=150)
KINDS = {"modality": ("MODALITY", _MODALITY_WORDS), "plane": ("PLANE", _PLANE_WORDS), "organ": ("ORGAN", _ORGAN_WORDS)}
SHOWN = ("MODALITY", "PLANE", "ORGAN", "OTHER", "POS", "PRES", "ABN", "SIZE")


def head_answers(model: Answerer, img: np.ndarray, qe: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(head mass over the vocabulary (n, vocab), total head weight (n,), notes per kind)."""
    from sklearn.linear_model import LogisticRegression

    cases = model.cases
    facts = picture_facts([(c["image"], c["question"], main_question_type(c["question_type"]), c["answer"],
                            c["organ"]) for c in cases])
    first: dict[str, int] = {}
    for i, c in enumerate(cases):
        first.setdefault(c["image"], i)
    pictures = list(first)
    width = model.mem_img.shape[1] // model.cfg.views
    x_train = _l2(model.mem_img[[first[p] for p in pictures], :width])
    x = _l2(img[:, :width])
    p_type = model.question_type_probs(img, qe)
    _, p_closed = model.classifier_probs(img, qe)
    index = {a: i for i, a in enumerate(model.vocab)}
    mass, weight, notes = np.zeros((len(qe), len(model.vocab))), np.zeros(len(qe)), {}
    for kind, (qtype, words) in KINDS.items():
        labels = [facts.get(p, {}).get(kind) for p in pictures]
        rows = [i for i, v in enumerate(labels) if v]
        said = defaultdict(Counter)
        for c in cases:
            if main_question_type(c["question_type"]) == qtype and c["answer_type"] == "OPEN":
                a = normalize_answer(c["answer"])
                if value := _named(words, a):
                    said[value][a] += 1
        if len({labels[i] for i in rows}) < 2 or qtype not in model.qtypes:
            notes[kind] = f"{len(rows)} pictures with a known value: no head"
            continue
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(x_train[rows], [labels[i] for i in rows])
        text = {v: said[v].most_common(1)[0][0] for v in clf.classes_ if said[v]}
        w = p_type[:, model.qtypes.index(qtype)] * (1 - p_closed)
        proba = clf.predict_proba(x)
        for j, v in enumerate(clf.classes_):
            if v in text:
                mass[:, index[text[v]]] += w * proba[:, j]
        weight += w
        notes[kind] = (f"{len(rows)} training pictures with a known value "
                       f"({', '.join(f'{k} {n}' for k, n in Counter(labels[i] for i in rows).most_common())}); "
                       f"answers {', '.join(f'{k} -> {t!r}' for k, t in text.items())}")
    return mass, np.clip(weight, 0, 1), notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a model trained with `medweave vqa train --split ...`")
    ap.add_argument("--cache", type=Path, help="embedding cache (default: the model's)")
    args = ap.parse_args()
    model = Answerer.load(args.model)
    split = model.meta.get("split")
    if not split:
        console.print(f"{args.model}: trained on the whole set (no split in its config.json meta); nothing held out")
        return 1
    vqa = load_vqa(model.meta["data"])
    _, held_idx = make_split(split["name"], vqa.questions, split["frac"], split["seed"])
    held = vqa.subset(held_idx)
    with open_cache(args.cache or args.model / CACHE_NAME) as cache:
        img, qe = embed_set(held, cache, model.image_encoders())
    probs, _ = model.classifier_probs(img, qe)
    mass, weight, notes = head_answers(model, img, qe)
    mem, lam = model.memory_probs(img, qe)
    t = Table(title=f"{split['name']} split seed {split['seed']}: {len(held.questions)} held-out questions "
                    "(exact match; n per type in brackets)")
    for col in ("model", "overall", "closed", "open", "open_recall", *SHOWN):
        t.add_column(col)
    for name, p in (("answerer", probs), ("answerer + frozen picture heads", (1 - weight[:, None]) * probs + mass)):
        p = (1 - lam[:, None]) * p + lam[:, None] * mem
        r = vqa_scores(held.questions, [model.vocab[b] for b in p.argmax(1)], n_boot=0)
        by = r["by_question_type"]
        t.add_row(name, *(f"{r[k]['value']:.3f}" for k in ("overall_acc", "closed_acc", "open_acc", "open_recall")),
                  *(f"{by[k]['value']:.3f} ({by[k]['n']})" if k in by else "-" for k in SHOWN))
    console.print(t)
    for kind, note in notes.items():
        console.print(f"  {kind} head: {note}", highlight=False, markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
