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
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from medweave.evaluate.answers import exact_match
from medweave.settings import shared_data_dir
from medweave.vqa.data import load_vqa
from medweave.vqa.features import IMAGE_ENCODERS, open_cache
from medweave.vqa.model import VqaConfig
from medweave.vqa.pipeline import CACHE_NAME, embed_set, fit_set
from medweave.vqa.splits import make_split

BETAS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)
TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 100.0)  # 100: every same-picture answer alike, whatever its question


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="VQA-RAD folder (default: the shared one)")
    ap.add_argument("--split-seeds", default="0,1,2")
    ap.add_argument("--members", type=int, default=1, help="ensemble members of the inner answerer")
    ap.add_argument("--views", type=int, default=1, help="picture views of the inner answerer")
    ap.add_argument("--epochs", type=int, help="the inner answerer's epochs (default: VqaConfig's; a pilot: fewer)")
    ap.add_argument("--cache", type=Path, help="embedding cache to reuse")
    ap.add_argument("--json", type=Path, help="write the grid totals and the choice here")
    args = ap.parse_args()
    data = args.data or shared_data_dir() / "vqa-rad"
    if not (data / "trainset.json").is_file():
        print(f"VQA-RAD not found at {data} (set MEDWEAVE_DATA); nothing to choose")
        return 0
    vqa = load_vqa(data)
    cfg = VqaConfig(seeds=args.members, views=args.views, **({"epochs": args.epochs} if args.epochs else {}))
    total: dict[tuple[float, float], int] = {}
    n_held = 0
    cache_path = args.cache or Path(tempfile.mkdtemp(prefix="vqa-prior-")) / CACHE_NAME
    with open_cache(cache_path) as cache:
        img, qe = embed_set(vqa, cache, IMAGE_ENCODERS[:cfg.views])
        for seed in [int(s) for s in args.split_seeds.split(",") if s.strip()]:
            t0 = time.perf_counter()
            tr, _ = make_split("testlike", vqa.questions, 0.15, seed)  # the outer held-out side is left alone
            side = vqa.subset(tr)
            itr, ihe = make_split("testlike", side.questions, 0.15, seed)
            model = fit_set(side.subset(itr), img[tr][itr], qe[tr][itr], cfg, cache)
            held = [side.questions[i] for i in ihe]
            hi, hq = img[tr][ihe], qe[tr][ihe]
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
