"""Screen picture augmentation in embedding space (VqaConfig.picture_augment) on inner splits of the
training side only: for each split kind (testlike, images) and split seed, the outer training side is
split again (the same kind, 15%, the same seed; ``medweave.vqa.splits.inner_split``), an answerer is
fitted on the inner training part with each setting and scored by exact match on the inner held-out
part (overall, closed, open). The outer held-out questions are never read. Each fit is appended to
--json as one line and skipped when already there, so the screen runs in short lock holds.

    PYTHONPATH=src .venv/bin/python benchmarks/vqa_augment.py --kinds testlike,images [--split-seeds 0,1,2]
        [--settings 'off;k2=2;k4=4;k4c50=4,0.5'] [--members 1 --views 1] [--cache FILE] [--json FILE] [--report]
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
from medweave.vqa.features import IMAGE_ENCODERS, open_cache
from medweave.vqa.model import VqaConfig
from medweave.vqa.pipeline import embed_set, fit_set
from medweave.vqa.splits import inner_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inner import add_inner_options, cache_path, load_inner_set, split_seeds  # noqa: E402


def parse_settings(text: str) -> dict[str, tuple[int, float | None]]:
    """'off;k4=4;k4c50=4,0.5' -> {name: (K, P(clean) or None)} ('off': K 0)."""
    out = {}
    for part in text.split(";"):
        name, _, value = (x.strip() for x in part.partition("="))
        if not name:
            continue
        k, _, p = (value or "0").partition(",")
        try:
            out[name] = (int(k), float(p) if p.strip() else None)
        except ValueError:
            raise SystemExit(f"--settings: {part!r} is not NAME=K or NAME=K,P_CLEAN") from None
    return out


def report(lines: list[dict]) -> None:
    total: dict[tuple, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    per_seed: dict[tuple, dict[int, int]] = defaultdict(dict)
    fit: dict[tuple, float] = defaultdict(float)
    for r in lines:
        key = (r["kind"], r["setting"])
        for part in ("all", "closed", "open"):
            total[key][part][0] += r[part][0]
            total[key][part][1] += r[part][1]
        per_seed[key][r["seed"]] = r["all"][0]
        fit[key] += r["fit_seconds"]
    print("| kind | setting | inner right | closed | open | per seed | fit s (all seeds) |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(total, key=lambda k: (k[0], -total[k]["all"][0])):
        t = total[key]
        seeds = " / ".join(str(per_seed[key][s]) for s in sorted(per_seed[key]))
        print(f"| {key[0]} | {key[1]} | {t['all'][0]} of {t['all'][1]} ({t['all'][0] / t['all'][1]:.3f}) | "
              f"{t['closed'][0]} of {t['closed'][1]} | {t['open'][0]} of {t['open'][1]} | {seeds} | {fit[key]:.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_inner_options(ap, json_help="append one line per fit here (fits already there are skipped)")
    ap.add_argument("--kinds", default="testlike,images", help="split kinds to screen on")
    ap.add_argument("--settings", default="off;k2=2;k4=4;k4c50=4,0.5",
                    help="NAME=K[,P_CLEAN] settings separated by ';' (off: K 0)")
    ap.add_argument("--report", action="store_true", help="only print the table of --json")
    args = ap.parse_args()
    done = [json.loads(x) for x in args.json.read_text().splitlines() if x.strip()] \
        if args.json and args.json.is_file() else []
    if args.report:
        report(done)
        return 0
    seeds, settings = split_seeds(args), parse_settings(args.settings)
    vqa = load_inner_set(args)
    if vqa is None:
        return 0
    have = {(r["kind"], r["setting"], r["seed"]) for r in done}
    with open_cache(cache_path(args, "vqa-augment-")) as cache:
        img, qe = embed_set(vqa, cache, IMAGE_ENCODERS[:args.views])
        for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
            for seed in seeds:
                _, itr, ihe = inner_split(vqa.questions, seed, kind=kind)  # the outer held-out side is left alone
                held = [vqa.questions[i] for i in ihe]
                closed = np.array([q.closed for q in held])
                for name, (k, p) in settings.items():
                    if (kind, name, seed) in have:
                        continue
                    t0 = time.perf_counter()
                    cfg = VqaConfig(seeds=args.members, views=args.views, picture_augment=k, picture_augment_clean=p)
                    model = fit_set(vqa.subset(itr), img[itr], qe[itr], cfg, cache)
                    preds = model.predict(img[ihe], qe[ihe], decoder=False, questions=[q.question for q in held])
                    ok = np.array([exact_match(p_.answer, q.answer) for p_, q in zip(preds, held)], dtype=bool)
                    line = {"kind": kind, "setting": name, "K": k, "p_clean": p, "seed": seed,
                            "all": [int(ok.sum()), len(ok)], "closed": [int(ok[closed].sum()), int(closed.sum())],
                            "open": [int(ok[~closed].sum()), int((~closed).sum())],
                            "fit_seconds": time.perf_counter() - t0,
                            "net_fit_seconds": model.meta.get("fit_seconds")}
                    print(f"{kind} seed {seed} {name}: inner right {line['all'][0]} of {len(ok)} (closed "
                          f"{line['closed'][0]}/{line['closed'][1]}, open {line['open'][0]}/{line['open'][1]}), "
                          f"{line['fit_seconds']:.0f} s", flush=True)
                    if args.json:
                        with args.json.open("a") as f:
                            f.write(json.dumps(line) + "\n")
                    done.append(line)
    report(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
