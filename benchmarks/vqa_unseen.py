"""What the held-out open answers that never occur in training look like (no training; a few seconds).

    .venv/bin/python benchmarks/vqa_unseen.py [--split testlike] [--split-seeds 0,1,2] [--examples]

Per split seed: how many held-out open questions have a reference answer (normalised) outside the
training answers, and of those how many are made only of words that training answers use (what a
decoder over those words can write), a span of the question's words, a phrase of the Open-i
summarisation training reports (``openi-summ/train.jsonl``: a corpus a retriever could draw on), two
training answers joined, or contain a training answer. Needs the shared data.
"""

from __future__ import annotations

import argparse
import json
import sys

from medweave.settings import shared_data_dir
from medweave.vqa.data import load_vqa
from medweave.vqa.normalize import normalize_answer, tokens
from medweave.vqa.splits import make_split


def _inside(part: str, whole: str) -> bool:
    return f" {part} " in f" {whole} "


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="testlike")
    ap.add_argument("--split-seeds", default="0,1,2")
    ap.add_argument("--examples", action="store_true", help="list the first seed's never-seen answers")
    args = ap.parse_args()
    data = shared_data_dir()
    if not (data / "vqa-rad" / "trainset.json").is_file():
        print(f"VQA-RAD not found under {data} (set MEDWEAVE_DATA); nothing to measure")
        return 0
    qs = load_vqa(data / "vqa-rad").questions
    corpus_file = data / "openi-summ" / "train.jsonl"
    corpus = ""
    if corpus_file.is_file():
        corpus = " ".join(" ".join(tokens(r["inputs"] + " " + r["target"]))
                          for r in map(json.loads, corpus_file.read_text().splitlines()) if r)
    print("| split seed | open held out | answer never in training | of those: all words in training answers "
          "| span of the question | phrase of the report corpus | two training answers joined "
          "| contains a training answer |")
    print("|---|---|---|---|---|---|---|---|")
    for n, seed in enumerate(int(s) for s in args.split_seeds.split(",") if s.strip()):
        train, held = make_split(args.split, qs, 0.15, seed)
        answers = {normalize_answer(qs[i].answer) for i in train}
        words = {w for a in answers for w in a.split()}
        opens = [i for i in held if not qs[i].closed]
        unseen = [i for i in opens if normalize_answer(qs[i].answer) not in answers]
        count = dict.fromkeys(("words", "span", "corpus", "joined", "contains"), 0)
        for i in unseen:
            a = normalize_answer(qs[i].answer)
            w = a.split()
            count["words"] += all(x in words for x in w)
            count["span"] += _inside(a, " ".join(tokens(qs[i].question)))
            count["corpus"] += bool(corpus) and _inside(a, corpus)
            count["joined"] += any(" ".join(w[:k]) in answers and " ".join(w[k:]) in answers for k in range(1, len(w)))
            count["contains"] += any(_inside(t, a) for t in answers if t not in ("yes", "no") and len(t) > 2)
            if args.examples and n == 0:
                print(f"    {a!r} <- {qs[i].question!r}", file=sys.stderr)
        print(f"| {seed} | {len(opens)} | {len(unseen)} ({len(unseen) / max(len(opens), 1):.1%}) | "
              + " | ".join(str(count[k]) for k in ("words", "span", "corpus", "joined", "contains")) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
