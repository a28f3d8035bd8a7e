"""How many ensemble members the answerer needs, and what fitting them side by side saves.

One fit of the default answerer with ``--members M`` per split seed, scored with its first m members
for each m of ``--use`` (member k depends only on its seed, so the first 4 of an 8-member fit are the
4-member default's members: a paired comparison on the same fits). Inner test-like splits of the
training side by default (where a choice is made); ``--outer`` scores the outer test-like held-out
questions (the confirmation). ``--time`` instead fits the default answerer on all the training
questions (cached embeddings) with ``fit_workers`` 1 and 0 (automatic) and prints both times and
whether the weights are the same. Prints a table; not a timed test. Needs the shared VQA-RAD data.

    PYTHONPATH=src .venv/bin/python benchmarks/vqa_members.py --members 8 --use 4,6,8 [--outer]
    PYTHONPATH=src .venv/bin/python benchmarks/vqa_members.py --time
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from medweave.evaluate.answers import exact_match
from medweave.vqa.features import IMAGE_ENCODERS, open_cache
from medweave.vqa.model import VqaConfig, fit_workers
from medweave.vqa.pipeline import embed_set, fit_set
from medweave.vqa.splits import inner_split, make_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inner import add_inner_options, cache_path, load_inner_set, split_seeds  # noqa: E402


def time_fits(vqa, img, qe, cache) -> None:
    import torch

    fits = {}
    for workers in (1, 0):
        cfg = VqaConfig(fit_workers=workers)
        t0 = time.perf_counter()
        fits[workers] = model = fit_set(vqa, img, qe, cfg, cache)
        rows = model.meta["n_train"] + model.meta["n_fact_questions"]
        print(f"fit_workers {workers} ({fit_workers(cfg, rows)} process(es)): {len(vqa.questions)} questions + "
              f"{model.meta['n_fact_questions']} generated, members fitted in {model.meta['fit_seconds']:.1f} s "
              f"(fit_set {time.perf_counter() - t0:.1f} s)", flush=True)
    same = all(torch.equal(a[k], b[k]) for a, b in zip(fits[1].members, fits[0].members) for k in a)
    print(f"the same weights: {same}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_inner_options(ap, "not written by this script")
    ap.set_defaults(members=8)
    ap.add_argument("--use", default="4,6,8", help="member counts to score, each <= --members")
    ap.add_argument("--outer", action="store_true", help="score the outer test-like held-out questions")
    ap.add_argument("--time", action="store_true", help="time fit_workers 1 vs automatic on all questions")
    args = ap.parse_args()
    vqa = load_inner_set(args)
    if vqa is None:
        return 0
    use = [int(m) for m in args.use.split(",")]
    if max(use) > args.members:
        raise SystemExit(f"--use {args.use} asks for more than --members {args.members}")
    with open_cache(cache_path(args, "vqa-members-")) as cache:
        img, qe, stats = embed_set(vqa, cache, IMAGE_ENCODERS, with_stats=True)
        if args.time:
            time_fits(vqa, img, qe, cache)
            return 0
        where = "outer test-like" if args.outer else "inner test-like"
        total = {m: [] for m in use}
        for seed in split_seeds(args):
            if args.outer:
                itr, ihe = make_split("testlike", vqa.questions, 0.15, seed)
            else:
                _, itr, ihe = inner_split(vqa.questions, seed)  # the outer held-out side is left alone
            model = fit_set(vqa.subset(itr), img[itr], qe[itr], VqaConfig(seeds=args.members), cache)
            held = [vqa.questions[i] for i in ihe]
            closed = np.array([q.closed for q in held])
            for m in use:
                part = replace(model, members=model.members[:m], _nets=[])  # its networks built from its members
                preds = part.predict(img[ihe], qe[ihe], decoder=False, questions=[q.question for q in held],
                                     picture_stats=stats[ihe])
                ok = np.array([exact_match(p.answer, q.answer) for p, q in zip(preds, held)])
                total[m].append(int(ok.sum()))
                print(f"seed {seed}, {m} members: {where} right {ok.sum()} of {len(held)} (closed "
                      f"{ok[closed].sum()}/{closed.sum()}, open {ok[~closed].sum()}/{(~closed).sum()})", flush=True)
        print(f"\n{where}, one {args.members}-member fit per seed, scored with its first m members:")
        for m in use:
            print(f"  {m} members: right {sum(total[m])} ({' / '.join(map(str, total[m]))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
