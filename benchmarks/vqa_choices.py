"""Choice questions (VqaConfig.choice_answers, medweave.vqa.choices): the same fit scored with the answer
restricted to the question's named choices and without it.

Two modes. ``--inner`` (the choice): for split seeds 0-2 the test-like split's training side is split
again (``medweave.vqa.splits.inner_split``), a small answerer (1 member, 1 view) is fitted on the inner
training part and scored on the inner held-out part; the outer held-out questions are never read.
Without it (the confirmation): the default answerer is fitted on the outer training side of each split
seed of ``--split`` and scored on its held-out side. Either way each question the rule acted on is
printed with both answers, then the totals overall, closed, open and over the choice questions.

    PYTHONPATH=src .venv/bin/python benchmarks/vqa_choices.py --inner [--split-seeds 0,1,2] [--cache FILE]
    PYTHONPATH=src .venv/bin/python benchmarks/vqa_choices.py --split testlike [--split-seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from medweave.evaluate.answers import exact_match
from medweave.vqa.data import main_question_type
from medweave.vqa.features import IMAGE_ENCODERS, open_cache
from medweave.vqa.model import VqaConfig
from medweave.vqa.pipeline import embed_set, fit_set
from medweave.vqa.splits import SPLITS, inner_split, make_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inner import add_inner_options, cache_path, load_inner_set, split_seeds  # noqa: E402

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_inner_options(ap, json_help="write the totals here")
    ap.add_argument("--inner", action="store_true", help="inner splits of the training side (the choice)")
    ap.add_argument("--split", default="testlike", choices=SPLITS, help="the split kind")
    args = ap.parse_args()
    seeds = split_seeds(args)
    vqa = load_inner_set(args)
    if vqa is None:
        return 0
    cfg = VqaConfig(seeds=args.members, views=args.views) if args.inner else VqaConfig()
    tot = {k: [0, 0, 0] for k in ("all", "closed", "open", "choice")}  # [off right, on right, asked]
    by_type: dict[str, list[int]] = {}
    per_seed = []
    with open_cache(cache_path(args, "vqa-choices-")) as cache:
        img, qe, stats = embed_set(vqa, cache, IMAGE_ENCODERS[:cfg.views], with_stats=True)
        for seed in seeds:
            t0 = time.perf_counter()
            if args.inner:
                _, fit_idx, held_idx = inner_split(vqa.questions, seed, kind=args.split)
            else:
                fit_idx, held_idx = make_split(args.split, vqa.questions, 0.15, seed)
            on = fit_set(vqa.subset(fit_idx), img[fit_idx], qe[fit_idx], cfg, cache)
            off = replace(on, cfg=replace(on.cfg, choice_answers=False), _nets=on._nets)
            held = [vqa.questions[i] for i in held_idx]
            texts = [q.question for q in held]
            # as the shipped path answers (SplitRun.predictions): the gate reads the pixel statistics too
            p_on = on.predict(img[held_idx], qe[held_idx], decoder=False, questions=texts, picture_stats=stats[held_idx])
            p_off = off.predict(img[held_idx], qe[held_idx], decoder=False, questions=texts,
                                picture_stats=stats[held_idx])
            right = [0, 0]
            for q, a, b in zip(held, p_off, p_on):
                r = (exact_match(a.answer, q.answer), exact_match(b.answer, q.answer))
                keys = ["all", "closed" if q.closed else "open"] + (["choice"] if b.choices else [])
                for key in keys:
                    tot[key][0] += r[0]
                    tot[key][1] += r[1]
                    tot[key][2] += 1
                t = by_type.setdefault(main_question_type(q.question_type), [0, 0, 0])
                t[0] += r[0]
                t[1] += r[1]
                t[2] += 1
                right[0] += r[0]
                right[1] += r[1]
                if b.choices:
                    print(f"  seed {seed} {'+' if r[1] > r[0] else '-' if r[1] < r[0] else '='} {q.question!r} "
                          f"ref {q.answer!r}: off {a.answer!r}, on {b.answer!r} (choices {', '.join(b.choices)})")
            per_seed.append({"seed": seed, "n": len(held), "off": right[0], "on": right[1]})
            print(f"seed {seed}: {right[0]} -> {right[1]} of {len(held)} right ({right[0] / len(held):.3f} -> "
                  f"{right[1] / len(held):.3f}), fit {time.perf_counter() - t0:.0f} s", flush=True)
    where = f"inner {args.split}" if args.inner else f"outer {args.split}"
    print(f"{where} split seeds {','.join(map(str, seeds))}, {cfg.seeds} member(s), {cfg.views} view(s): right "
          "without -> with the choice rule")
    for key, (a, b, n) in tot.items():
        print(f"  {key:7} {a:4d} -> {b:4d} of {n:4d} ({a / max(n, 1):.3f} -> {b / max(n, 1):.3f}, {b - a:+d})")
    print("  by question type: " + ", ".join(f"{k} {a}->{b}/{n}" for k, (a, b, n) in sorted(by_type.items())))
    if args.json:
        args.json.write_text(json.dumps({"where": where, "per_seed": per_seed, "totals": tot, "by_type": by_type}))
    return 0

if __name__ == "__main__":
    sys.exit(main())
