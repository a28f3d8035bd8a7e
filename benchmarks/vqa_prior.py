"""Choose answer-time settings of the answerer on inner splits of the training side only: the picture
prior (VqaConfig.picture_prior, picture_prior_temperature; the default grid) or any other setting that
acts at answer time, such as the same-picture memory's (memory_weight, question_cos, memory_temperature;
``--grid``). For each split seed the test-like split's training side is split again (the test-like
kind, 15%, the same seed), an answerer is fitted on the inner training part and every setting of the
grid is scored by exact match on the inner held-out part, answered as the shipped path answers (the
question texts for the choice rule, the pixel statistics for the picture gate). Such settings change no
weights, so one fit per seed scores the whole grid. The outer held-out questions are never read. Prints
each seed's inner counts and the grid's totals over the seeds (one setting for all); ties go to the
setting with the fewest fields changed from VqaConfig's defaults, then to the grid's order.

``--outer`` is the confirmation of a setting so chosen, never the choice: the default answerer (4
members, 2 views) is fitted on the outer training side of each split seed of ``--split`` and the grid
(the defaults and the chosen setting) is scored on the outer held-out side, each setting on the same fit.

    PYTHONPATH=src .venv/bin/python benchmarks/vqa_prior.py [--split-seeds 0,1,2] [--members 1 --views 1]
                                                             [--cache FILE]
    PYTHONPATH=src .venv/bin/python benchmarks/vqa_prior.py --grid \
        'memory_weight=0.5,1;question_cos=0.8,0.9;memory_temperature=0.02,0.1'
    PYTHONPATH=src .venv/bin/python benchmarks/vqa_prior.py --outer --split testlike --grid 'memory_temperature=0.02,0.1'
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from medweave.evaluate.answers import exact_match
from medweave.vqa.features import IMAGE_ENCODERS, open_cache
from medweave.vqa.model import ANSWER_TIME_FIELDS, VqaConfig
from medweave.vqa.pipeline import embed_set, fit_set
from medweave.vqa.splits import SPLITS, inner_split, make_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inner import add_inner_options, cache_path, load_inner_set, split_seeds  # noqa: E402

BETAS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)
TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 100.0)  # 100: every same-picture answer alike, whatever its question
PRIOR_GRID = {"picture_prior": BETAS, "picture_prior_temperature": TEMPERATURES}
ANSWER_TIME = ANSWER_TIME_FIELDS  # a grid over other settings would need a fit per setting


def parse_grid(text: str | None) -> dict[str, tuple[float, ...]]:
    """'field=v1,v2;field=v3' -> {field: (v1, v2), ...}; the prior's grid without ``text``."""
    if not text:
        return dict(PRIOR_GRID)
    grid: dict[str, tuple[float, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition("=")
        name = name.strip()
        if name not in ANSWER_TIME:
            raise SystemExit(f"--grid: {name!r} is not a setting read at answer time; expected one of "
                             f"{', '.join(ANSWER_TIME)}")
        try:
            grid[name] = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise SystemExit(f"--grid: {name}'s values {values!r} are not numbers separated by commas") from None
        if not grid[name]:
            raise SystemExit(f"--grid: {name} has no values; expected e.g. {name}=0.5,1")
    return grid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_inner_options(ap, json_help="write the grid totals and the choice here")
    ap.add_argument("--epochs", type=int, help="the inner answerer's epochs (default: VqaConfig's; a pilot: fewer)")
    ap.add_argument("--grid", help="'field=v1,v2;field=...' over settings read at answer time "
                                   "(default: the picture prior's beta x temperature)")
    ap.add_argument("--outer", action="store_true", help="the confirmation: the default answerer on the outer "
                                                         "split (module notes), not a choice")
    ap.add_argument("--split", default="testlike", choices=SPLITS, help="with --outer: the split kind")
    args = ap.parse_args()
    grid = parse_grid(args.grid)
    seeds = split_seeds(args)
    vqa = load_inner_set(args)
    if vqa is None:
        return 0
    epochs = {"epochs": args.epochs} if args.epochs else {}
    cfg = VqaConfig(**epochs) if args.outer else VqaConfig(seeds=args.members, views=args.views, **epochs)
    defaults = {f.name: f.default for f in fields(VqaConfig)}
    names = list(grid)
    settings = list(itertools.product(*grid.values()))
    where = f"outer {args.split}" if args.outer else "inner"
    total: dict[tuple[float, ...], int] = {}
    n_held = 0
    with open_cache(cache_path(args, "vqa-prior-")) as cache:
        img, qe, stats = embed_set(vqa, cache, IMAGE_ENCODERS[:cfg.views], with_stats=True)
        for seed in seeds:
            t0 = time.perf_counter()
            if args.outer:
                itr, ihe = make_split(args.split, vqa.questions, 0.15, seed)
            else:
                _, itr, ihe = inner_split(vqa.questions, seed)  # the outer held-out side is left alone
            model = fit_set(vqa.subset(itr), img[itr], qe[itr], cfg, cache)
            held = [vqa.questions[i] for i in ihe]
            texts = [q.question for q in held]
            closed = np.array([q.closed for q in held])
            n_held += len(held)
            for values in settings:
                change = {k: type(defaults[k])(v) for k, v in zip(names, values)}
                m = replace(model, cfg=replace(model.cfg, **change), _nets=model._nets)
                preds = m.predict(img[ihe], qe[ihe], decoder=False, questions=texts, picture_stats=stats[ihe])
                ok = np.array([exact_match(p.answer, q.answer) for p, q in zip(preds, held)])
                total[values] = total.get(values, 0) + int(ok.sum())
                print(f"seed {seed} {', '.join(f'{k} {v:g}' for k, v in zip(names, values))}: {where} right "
                      f"{ok.sum()} of {len(held)} (closed {ok[closed].sum()}/{closed.sum()}, open "
                      f"{ok[~closed].sum()}/{(~closed).sum()})", flush=True)
            print(f"seed {seed}: {where} fit {len(itr)} / held-out {len(ihe)} questions, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)

    def changed(values):
        return sum(float(defaults[k]) != v for k, v in zip(names, values))

    order = {v: i for i, v in enumerate(settings)}
    ranked = sorted(total, key=lambda v: (-total[v], changed(v), order[v]))
    best = ranked[0]
    base_values = tuple(float(defaults[k]) for k in names)
    base = total.get(base_values)
    label = lambda v: ", ".join(f"{k} {x:g}" for k, x in zip(names, v))  # noqa: E731
    print(f"{where}: grid total over the seeds (right of {n_held}): "
          + "; ".join(f"{label(v)}: {total[v]}" for v in ranked[:10]))
    print(f"the defaults ({label(base_values)}): {base if base is not None else 'not in the grid'}; "
          f"{'best here (a confirmation, not a choice)' if args.outer else 'chosen'} {label(best)}: {total[best]}"
          + (f" ({total[best] - base:+d} {where} questions)" if base is not None else ""))
    if args.json:
        args.json.write_text(json.dumps({"where": where, "fields": names, "chosen": dict(zip(names, best)),
                                         "right": total[best],
                                         "defaults": base, "inner_held": n_held,
                                         "grid": [[*v, total[v]] for v in settings]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
