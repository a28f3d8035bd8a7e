"""Choose the width of the answerer's lexical question features (VqaConfig.question_words) on inner
splits of the training side only: for each split seed, the test-like split's training side is split
again (the test-like kind, 15%, the same seed), an answerer is fitted on the inner training part with
each width of the grid (0: off) and scored by exact match on the inner held-out part, overall, closed,
open and by question type. The outer held-out questions are never read. Prints each fit and the
totals over the seeds.

    PYTHONPATH=src .venv/bin/python benchmarks/vqa_words.py [--split-seeds 0,1,2] [--widths 0,256,1024,4096]
                                                             [--members 1 --views 1] [--cache FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from medweave.evaluate.answers import exact_match
from medweave.vqa.data import main_question_type
from medweave.vqa.features import IMAGE_ENCODERS, open_cache
from medweave.vqa.model import VqaConfig
from medweave.vqa.pipeline import embed_set, fit_set
from medweave.vqa.splits import inner_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inner import add_inner_options, cache_path, load_inner_set, split_seeds  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_inner_options(ap, json_help="write the totals here")
    ap.add_argument("--widths", default="0,256,1024,4096", help="question_words widths to compare (0: off)")
    args = ap.parse_args()
    seeds = split_seeds(args)
    vqa = load_inner_set(args)
    if vqa is None:
        return 0
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    base = VqaConfig(seeds=args.members, views=args.views)
    total: dict[int, dict[str, list[int]]] = {w: defaultdict(lambda: [0, 0]) for w in widths}
    with open_cache(cache_path(args, "vqa-words-")) as cache:
        img, qe = embed_set(vqa, cache, IMAGE_ENCODERS[:base.views])
        for seed in seeds:
            _, itr, ihe = inner_split(vqa.questions, seed)  # the outer held-out side is left alone
            held = [vqa.questions[i] for i in ihe]
            for w in widths:
                t0 = time.perf_counter()
                cfg = VqaConfig(**{**base.__dict__, "question_words": w})
                model = fit_set(vqa.subset(itr), img[itr], qe[itr], cfg, cache)
                preds = model.predict(img[ihe], qe[ihe], decoder=False, questions=[q.question for q in held])
                ok = np.array([exact_match(p.answer, q.answer) for p, q in zip(preds, held)])
                for q, r in zip(held, ok):
                    for key in ("all", "closed" if q.closed else "open", main_question_type(q.question_type)):
                        total[w][key][0] += int(r)
                        total[w][key][1] += 1
                closed = np.array([q.closed for q in held])
                print(f"seed {seed} width {w}: inner right {ok.sum()} of {len(held)} ({ok.mean():.3f}; closed "
                      f"{ok[closed].mean():.3f}, open {ok[~closed].mean():.3f}), fit {time.perf_counter() - t0:.0f} s",
                      flush=True)
    keys = ["all", "closed", "open"] + sorted({k for t in total.values() for k in t} - {"all", "closed", "open"})
    print("totals over the seeds (right / asked):")
    for w in widths:
        print(f"  width {w:5d}: " + ", ".join(f"{k} {total[w][k][0]}/{total[w][k][1]} "
                                             f"({total[w][k][0] / max(total[w][k][1], 1):.3f})" for k in keys))
    best = max(widths, key=lambda w: (total[w]["all"][0], -w))
    print(f"most inner questions right: width {best} ({total[best]['all'][0] - total[widths[0]]['all'][0]:+d} "
          f"beside width {widths[0]})")
    if args.json:
        args.json.write_text(json.dumps({str(w): {k: v for k, v in t.items()} for w, t in total.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
