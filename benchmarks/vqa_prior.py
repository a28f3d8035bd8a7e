"""Choose the answerer's picture prior (VqaConfig.picture_prior, picture_prior_temperature) on inner
splits of the training side only: for each split seed, the test-like split's training side is split
again (the test-like kind, 15%, the same seed), an answerer is fitted on the inner training part and
every (beta, temperature) of the grid is scored by exact match on the inner held-out part. The prior
acts at answer time only, so one fit per seed scores the whole grid. The outer held-out questions are
never read. Prints each seed's inner counts and the grid's total over the seeds (one setting for all).

    PYTHONPATH=src .venv/bin/python benchmarks/vqa_prior.py [--split-seeds 0,1,2] [--members 1 --views 1]
                                                             [--cache FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from medweave.evaluate.answers import exact_match
from medweave.vqa.features import IMAGE_ENCODERS, open_cache
from medweave.vqa.model import VqaConfig
from medweave.vqa.pipeline import embed_set, fit_set
from medweave.vqa.splits import inner_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inner import add_inner_options, cache_path, load_inner_set, split_seeds  # noqa: E402

BETAS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)
TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 100.0)  # 100: every same-picture answer alike, whatever its question


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_inner_options(ap, json_help="write the grid totals and the choice here")
    ap.add_argument("--epochs", type=int, help="the inner answerer's epochs (default: VqaConfig's; a pilot: fewer)")
    args = ap.parse_args()
    seeds = split_seeds(args)
    vqa = load_inner_set(args)
    if vqa is None:
        return 0
    cfg = VqaConfig(seeds=args.members, views=args.views, **({"epochs": args.epochs} if args.epochs else {}))
    total: dict[tuple[float, float], int] = {}
    n_held = 0
    with open_cache(cache_path(args, "vqa-prior-")) as cache:
        img, qe = embed_set(vqa, cache, IMAGE_ENCODERS[:cfg.views])
        for seed in seeds:
            t0 = time.perf_counter()
            _, itr, ihe = inner_split(vqa.questions, seed)  # the outer held-out side is left alone
            model = fit_set(vqa.subset(itr), img[itr], qe[itr], cfg, cache)
            held = [vqa.questions[i] for i in ihe]
            hi, hq = img[ihe], qe[ihe]
            closed = np.array([q.closed for q in held])
            n_held += len(held)
            for b, t in itertools.product(BETAS, TEMPERATURES):
                m = replace(model, cfg=replace(model.cfg, picture_prior=b, picture_prior_temperature=t),
                            _nets=model._nets)
                ok = np.array([exact_match(p.answer, q.answer)
                               for p, q in zip(m.predict(hi, hq, decoder=False), held)])
                total[(b, t)] = total.get((b, t), 0) + int(ok.sum())
                if b == 0 and t != TEMPERATURES[0]:
                    continue  # beta 0 is the same model at every temperature
                print(f"seed {seed} beta {b:g} T {t:g}: inner right {ok.sum()} of {len(held)} (closed "
                      f"{ok[closed].sum()}/{closed.sum()}, open {ok[~closed].sum()}/{(~closed).sum()})", flush=True)
            print(f"seed {seed}: inner fit {len(itr)} / inner held-out {len(ihe)} questions, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    # most inner questions right; ties: the smaller beta, then the larger temperature (the milder prior)
    best = max(total, key=lambda k: (total[k], -k[0], k[1]))
    base = total[(0.0, TEMPERATURES[0])]
    top = sorted(total.items(), key=lambda kv: (-kv[1], kv[0][0], -kv[0][1]))[:8]
    print("grid total over the seeds (beta, T: right of %d): " % n_held
          + ", ".join(f"{b:g}, {t:g}: {v}" for (b, t), v in top))
    print(f"no prior (beta 0): {base}; chosen beta {best[0]:g}, T {best[1]:g}: {total[best]} "
          f"({total[best] - base:+d} inner questions)")
    if args.json:
        args.json.write_text(json.dumps({"beta": best[0], "temperature": best[1], "right": total[best],
                                         "base": base, "inner_held": n_held,
                                         "grid": [[b, t, v] for (b, t), v in total.items()]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
