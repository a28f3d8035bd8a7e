"""Re-choose the answerer's training settings (VqaConfig: epochs, hidden, dropout, image_dropout, lr,
weight_decay, label_smoothing, fact_weight, memory_weight) on inner test-like splits of the training
side only.

For each split seed the test-like split's training side is split again (the test-like kind, 15%, the same
seed); a small answerer (1 member, 1 view by default) is fitted on the inner training part and scored by
exact match on the inner held-out part with ``Answerer.predict`` (memory and picture prior on, as the
default does), summed over the seeds. The outer held-out questions are never read: they are dropped
before the inner split is made (``inner_split``).

The search is a coordinate search: pass 1 moves one parameter at a time from the default over its grid
(``GRID``); pass 2 starts from every pass-1 winner taken together and moves each changed parameter back
to its grid neighbours (around the best). ``memory_weight`` acts at answer time, so every fit is scored
at each of its values (one fit per seed, as benchmarks/vqa_prior.py does for the picture prior); it is
chosen last, on the chosen training setting's fits. The choice is the setting with the most inner
questions right; ties go to the default (then to the setting with fewer changes).

Each fit is appended to ``--json`` (one line per setting and seed) as soon as it is scored, and a fit
already there is not run again, so the search can be spread over several lock holds (``--params`` for a
subset, ``--stop-after`` to stop starting fits after that many seconds); ``--report`` only prints.

    PYTHONPATH=src .venv/bin/python benchmarks/vqa_tune.py --json runs/tune.jsonl [--pass 1|2]
        [--params epochs,hidden] [--split-seeds 0,1,2] [--members 1 --views 1] [--cache FILE]
        [--stop-after SECONDS] [--part I/N] [--member-noise] [--report]

``--stop-after S`` starts no fit that would, at the last fit's pace, end after S seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from medweave.vqa.model import VqaConfig
from medweave.vqa.splits import inner_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inner import add_inner_options, cache_path, load_inner_set, split_seeds  # noqa: E402

# the training choices searched, each grid holding the default (VqaConfig's value before this search)
GRID: dict[str, tuple] = {
    "epochs": (30, 60, 100),
    "hidden": (256, 512, 1024),
    "dropout": (0.1, 0.3, 0.5),
    "image_dropout": (0.0, 0.2, 0.4),
    "lr": (5e-4, 1e-3, 2e-3),
    "weight_decay": (1e-2, 1e-1),
    "label_smoothing": (0.0, 0.1, 0.2),
    "fact_weight": (0.25, 0.5, 1.0),
}
# acts at answer time (medweave.vqa.model.ANSWER_TIME_FIELDS): every fit is scored at each value
ANSWER_TIME: dict[str, tuple] = {"memory_weight": (0.25, 0.5, 0.75)}
# the defaults the grids are centred on (VqaConfig's values when the search was run); fixed here so that a
# changed VqaConfig default does not move the search's starting point or its tie rule
START: dict[str, float] = {"epochs": 60, "hidden": 512, "dropout": 0.3, "image_dropout": 0.2, "lr": 1e-3,
                           "weight_decay": 1e-2, "label_smoothing": 0.1, "fact_weight": 0.5, "memory_weight": 0.5}


def key_of(setting: dict) -> str:
    """A canonical name for a setting: its changes from START, sorted ('default' for none)."""
    changed = {k: v for k, v in setting.items() if START.get(k) != v}
    return ",".join(f"{k}={changed[k]:g}" for k in sorted(changed)) or "default"


def parse_setting(text: str) -> dict:
    """'epochs=100,hidden=1024' -> {'epochs': 100, 'hidden': 1024}; an unknown name or a value off its
    grid is an error naming both."""
    out: dict = {}
    for part in (text or "").split(","):
        if not part.strip() or part.strip() == "default":
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in GRID:
            raise ValueError(f"setting {name!r} is not searched; allowed: {', '.join(GRID)}")
        try:
            v = type(START[name])(float(value)) if isinstance(START[name], int) else float(value)
        except ValueError:
            raise ValueError(f"setting {name}: value {value.strip()!r} is not a number") from None
        if v not in GRID[name]:
            raise ValueError(f"setting {name}: value {v:g} is off its grid {GRID[name]}")
        out[name] = v
    return out


def pass1_settings(params: Sequence[str]) -> list[dict]:
    """The default, then each parameter of ``params`` moved alone over its grid."""
    out = [{}]
    for p in params:
        out += [{p: v} for v in GRID[p] if v != START[p]]
    return out


def pass2_settings(winners: dict) -> list[dict]:
    """Around the pass-1 best: every winner together, then each changed parameter moved to its grid
    neighbours with the other winners kept."""
    if not winners:
        return []
    out = [dict(winners)]
    for p, v in winners.items():
        grid = GRID[p]
        i = grid.index(v)
        for j in (i - 1, i + 1):
            if 0 <= j < len(grid):
                s = {**winners, p: grid[j]}
                out.append({k: x for k, x in s.items() if x != START[k]})
    return out


def load_results(path: Path | None) -> dict[tuple[str, int], dict]:
    """The fits recorded so far: (setting key, seed) -> record."""
    out: dict[tuple[str, int], dict] = {}
    if path is None or not path.is_file():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}: line {n} is not JSON ({exc})") from None
            out[(rec["key"], rec["seed"])] = rec
    return out


def totals(results: dict, key: str, seeds: Sequence[int], memory: float = START["memory_weight"]) -> dict | None:
    """A setting's inner counts summed over ``seeds`` at one memory weight (None until every seed ran)."""
    recs = [results.get((key, s)) for s in seeds]
    if any(r is None for r in recs):
        return None
    part = [r["memory"][f"{memory:g}"] for r in recs]
    return {k: sum(p[k] for p in part) for k in ("right", "closed_right", "open_right", "n", "closed_n", "open_n")} | {
        "per_seed": [p["right"] for p in part], "fit_s": sum(r["fit_s"] for r in recs)}


def rank(key: str, t: dict) -> tuple:
    """Most inner questions right; ties: the default, then the fewest changes."""
    return (t["right"], key == "default", -key.count("="))


def pass1_winners(results: dict, seeds: Sequence[int]) -> tuple[dict, list[str]]:
    """Each parameter's best value when moved alone (the default on a tie); missing: parameters whose
    settings have not all run."""
    base = totals(results, "default", seeds)
    winners, missing = {}, []
    for p in GRID:
        cands = [("default", base)] + [(key_of({p: v}), totals(results, key_of({p: v}), seeds))
                                       for v in GRID[p] if v != START[p]]
        if any(t is None for _, t in cands):
            missing.append(p)
            continue
        best = max(cands, key=lambda kt: rank(*kt))[0]
        if best != "default":
            winners[p] = parse_setting(best)[p]
    return winners, missing


def fit_and_score(vqa, img, qe, cache, setting: dict, seed: int, members: int, views: int) -> dict:
    """One inner fit of ``setting`` on split seed ``seed``, scored on the inner held-out part at every
    memory weight."""
    from medweave.evaluate.answers import exact_match
    from medweave.vqa.pipeline import fit_set

    _, itr, ihe = inner_split(vqa.questions, seed)
    cfg = replace(VqaConfig(seeds=members, views=views), **{**START, **setting})
    t0 = time.perf_counter()
    model = fit_set(vqa.subset(itr), img[itr], qe[itr], cfg, cache)
    fit_s = time.perf_counter() - t0
    held = [vqa.questions[i] for i in ihe]
    closed = np.array([q.closed for q in held])
    memory = {}
    for w in ANSWER_TIME["memory_weight"]:
        m = replace(model, cfg=replace(model.cfg, memory_weight=w), _nets=model._nets)
        ok = np.array([exact_match(p.answer, q.answer) for p, q in zip(m.predict(img[ihe], qe[ihe]), held)])
        memory[f"{w:g}"] = {"right": int(ok.sum()), "closed_right": int(ok[closed].sum()),
                            "open_right": int(ok[~closed].sum()), "n": len(held), "closed_n": int(closed.sum()),
                            "open_n": int((~closed).sum())}
    return {"key": key_of(setting), "setting": setting, "seed": seed, "members": members, "views": views,
            "inner_train": len(itr), "inner_held": len(ihe), "fit_s": round(fit_s, 1), "memory": memory,
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "load": round(os.getloadavg()[0], 1)}


def member_noise(vqa, img, qe, cache, seed: int, views: int) -> list[dict]:
    """The run-to-run spread of the default: one 2-member fit, each member scored alone (member 0 is the
    1-member default fit itself, member 1 the same setting from another initialisation and batch order);
    records keyed 'default@member0' / 'default@member1'."""
    from medweave.evaluate.answers import exact_match
    from medweave.vqa.pipeline import fit_set

    _, itr, ihe = inner_split(vqa.questions, seed)
    cfg = replace(VqaConfig(seeds=2, views=views), **START)
    t0 = time.perf_counter()
    model = fit_set(vqa.subset(itr), img[itr], qe[itr], cfg, cache)
    fit_s = time.perf_counter() - t0
    held = [vqa.questions[i] for i in ihe]
    closed = np.array([q.closed for q in held])
    out = []
    for k in range(2):
        memory = {}
        for w in ANSWER_TIME["memory_weight"]:
            m = replace(model, cfg=replace(model.cfg, memory_weight=w, seeds=1), members=[model.members[k]], _nets=[])
            ok = np.array([exact_match(p.answer, q.answer) for p, q in zip(m.predict(img[ihe], qe[ihe]), held)])
            memory[f"{w:g}"] = {"right": int(ok.sum()), "closed_right": int(ok[closed].sum()),
                                "open_right": int(ok[~closed].sum()), "n": len(held), "closed_n": int(closed.sum()),
                                "open_n": int((~closed).sum())}
        out.append({"key": f"default@member{k}", "setting": {}, "seed": seed, "members": 1, "views": views,
                    "inner_train": len(itr), "inner_held": len(ihe), "fit_s": round(fit_s / 2, 1), "memory": memory,
                    "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "load": round(os.getloadavg()[0], 1)})
    return out


def line(key: str, t: dict) -> str:
    return (f"{key:<32} {t['right']:>4} of {t['n']} ({t['right'] / t['n']:.3f})  closed {t['closed_right']}/"
            f"{t['closed_n']}  open {t['open_right']}/{t['open_n']} ({t['open_right'] / t['open_n']:.3f})  "
            f"per seed {'/'.join(map(str, t['per_seed']))}  fit {t['fit_s']:.0f} s")


def report(results: dict, seeds: Sequence[int]) -> dict:
    """Print every complete setting's inner totals, the pass-1 winners, pass 2 and the choice."""
    done = sorted({k for k, _ in results if totals(results, k, seeds)},
                  key=lambda k: -totals(results, k, seeds)["right"])
    print(f"inner totals over split seeds {','.join(map(str, seeds))} (memory_weight {START['memory_weight']:g}):")
    for k in done:
        print("  " + line(k, totals(results, k, seeds)))
    winners, missing = pass1_winners(results, seeds)
    if missing:
        print(f"pass 1 incomplete for: {', '.join(missing)}")
    print("pass-1 winners: " + (", ".join(f"{k}={v:g}" for k, v in winners.items()) or "none (the default everywhere)"))
    if not done:
        return {}
    noise = [k for k in done if "@" in k]
    if noise:
        print("run-to-run spread of the default (one 2-member fit, each member alone; not candidates): "
              + ", ".join(f"{k} {totals(results, k, seeds)['right']}" for k in sorted(noise)))
    done = [k for k in done if "@" not in k]
    if not done:
        return {}
    best = max(done, key=lambda k: rank(k, totals(results, k, seeds)))
    setting = parse_setting(best)
    mem = {w: totals(results, best, seeds, w) for w in ANSWER_TIME["memory_weight"]}
    for w, t in mem.items():
        print(f"  {best} at memory_weight {w:g}: {t['right']} (closed {t['closed_right']}, open {t['open_right']})")
    w_best = max(mem, key=lambda w: (mem[w]["right"], w == START["memory_weight"]))
    base = totals(results, "default", seeds)
    print(f"choice: {best}" + (f", memory_weight={w_best:g}" if w_best != START["memory_weight"] else "")
          + f": {mem[w_best]['right']} of {mem[w_best]['n']} inner questions right"
          + (f" (default {base['right']}, {mem[w_best]['right'] - base['right']:+d})" if base else ""))
    return {"choice": setting | ({"memory_weight": w_best} if w_best != START["memory_weight"] else {}),
            "right": mem[w_best]["right"], "default": base["right"] if base else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_inner_options(ap, json_help="append each fit here (JSON lines); fits already there are skipped")
    ap.add_argument("--pass", dest="pass_", type=int, choices=(1, 2), default=1,
                    help="1: one parameter at a time from the default; 2: around pass 1's winners (needs pass 1)")
    ap.add_argument("--params", default=",".join(GRID), help="pass 1: the parameters to move (comma list)")
    ap.add_argument("--settings", default=None, help="run exactly these settings instead ('k=v,k=v;k=v')")
    ap.add_argument("--stop-after", type=float, default=None,
                    help="start no fit that would end after this many seconds at the last fit's pace (a short lock hold)")
    ap.add_argument("--member-noise", action="store_true", help="only the default's run-to-run spread: one 2-member "
                    "fit per seed, each member scored alone")
    ap.add_argument("--part", default=None, help="'I/N': only every N-th fit from the I-th (N workers side by side)")
    ap.add_argument("--report", action="store_true", help="only print the totals and the choice from --json")
    args = ap.parse_args()
    seeds = split_seeds(args)
    results = load_results(args.json)
    if args.report:
        out = report(results, seeds)
        print(json.dumps(out))
        return 0
    params = [p.strip() for p in args.params.split(",") if p.strip()]
    bad = [p for p in params if p not in GRID]
    if bad:
        raise SystemExit(f"--params: {', '.join(bad)} not searched; allowed: {', '.join(GRID)}")
    try:
        if args.settings is not None:
            todo = [parse_setting(s) for s in args.settings.split(";")]
        elif args.pass_ == 1:
            todo = pass1_settings(params)
        else:
            winners, missing = pass1_winners(results, seeds)
            if missing:
                raise SystemExit(f"--pass 2: pass 1 has not run for {', '.join(missing)} (in {args.json})")
            todo = pass2_settings(winners)
            print("pass-1 winners: " + (", ".join(f"{k}={v:g}" for k, v in winners.items()) or "none"))
    except ValueError as exc:
        raise SystemExit(f"benchmarks/vqa_tune.py: {exc}") from None
    if args.member_noise:
        todo = [{"noise": 1}]
    jobs = [(s, seed) for s in todo for seed in seeds
            if ((key_of(s), seed) if "noise" not in s else ("default@member1", seed)) not in results]
    if args.part:
        try:
            i, n = (int(x) for x in args.part.split("/"))
            assert 1 <= i <= n
        except (ValueError, AssertionError):
            raise SystemExit(f"--part is {args.part!r}; expected I/N with 1 <= I <= N, e.g. 1/2") from None
        jobs = jobs[i - 1::n]
    print(f"{len(jobs)} fits to run ({len(todo)} settings x {len(seeds)} seeds, "
          f"{len(todo) * len(seeds) - len(jobs)} already in {args.json})", flush=True)
    if not jobs:
        report(results, seeds)
        return 0

    from medweave.vqa.features import IMAGE_ENCODERS, open_cache
    from medweave.vqa.pipeline import embed_set

    vqa = load_inner_set(args)
    if vqa is None:
        return 0
    start = time.perf_counter()
    with open_cache(cache_path(args, "vqa-tune-")) as cache:
        img, qe = embed_set(vqa, cache, IMAGE_ENCODERS[:args.views])
        last = 0.0
        for n, (setting, seed) in enumerate(jobs, 1):
            if args.stop_after is not None and time.perf_counter() - start + 1.2 * last > args.stop_after:
                print(f"stopping after {time.perf_counter() - start:.0f} s: {len(jobs) - n + 1} fits left", flush=True)
                break
            t0 = time.perf_counter()
            if "noise" in setting:
                recs = member_noise(vqa, img, qe, cache, seed, args.views)
            else:
                recs = [fit_and_score(vqa, img, qe, cache, setting, seed, args.members, args.views)]
            last = time.perf_counter() - t0
            for rec in recs:
                results[(rec["key"], seed)] = rec
                if args.json:
                    with args.json.open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
            rec = recs[-1]
            m = rec["memory"][f"{START['memory_weight']:g}"]
            print(f"[{n}/{len(jobs)} {time.strftime('%H:%M:%S', time.gmtime())}] {rec['key']} seed {seed}: "
                  f"{m['right']} of {m['n']} (closed {m['closed_right']}/{m['closed_n']}, open "
                  f"{m['open_right']}/{m['open_n']}); memory 0.25/0.75: {rec['memory']['0.25']['right']}/"
                  f"{rec['memory']['0.75']['right']}; fit {rec['fit_s']:.0f} s, load {rec['load']}", flush=True)
    report(results, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
