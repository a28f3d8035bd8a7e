"""Why the answerer is not above a well-fitted plain MLP: the answerer's parts taken away one at a
time on the same fold, beside the plain MLP (issue 10).

    .venv/bin/python benchmarks/vqa_ablate.py --splits testlike --split-seeds 0 \
        --variants 'default;qscale=question_scale=1;...'

Each variant is ``name=key=value,key=value`` over ``VqaConfig`` fields (``default``: no change). Every
fitted answerer is also scored with parts switched off at answer time: the same-picture memory
(``-memory``), the answer-type / question-type reweighting (``-types``) and both. The plain MLP reads
the first view and the question, both standardised, at the setting given by ``--mlp`` (default: the
setting tune_plain_mlp chose on test-like seed 0). Prints one line per row; not a timed test.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from medweave.evaluate.answers import vqa_scores
from medweave.settings import shared_data_dir
from medweave.vqa.baselines import plain_mlp
from medweave.vqa.data import load_vqa
from medweave.vqa.features import IMAGE_ENCODERS, open_cache
from medweave.vqa.model import VqaConfig, _view
from medweave.vqa.pipeline import embed_set, fit_set
from medweave.vqa.splits import make_split


def parse_variants(text: str) -> list[tuple[str, dict]]:
    """'name=key=value,key=value;name2' as (name, VqaConfig overrides); an unknown field is an error."""
    kinds = {f.name: f.type for f in fields(VqaConfig)}
    out = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, _, rest = part.partition("=")
        over = {}
        for kv in filter(None, (x.strip() for x in rest.split(","))):
            key, _, value = kv.partition("=")
            if key not in kinds:
                raise SystemExit(f"--variants {name}: unknown VqaConfig field {key!r}; allowed: {', '.join(kinds)}")
            kind = str(kinds[key])
            over[key] = (value.lower() in ("1", "true", "yes")) if "bool" in kind else (
                int(value) if kind == "int" else float(value))
        out.append((name, over))
    return out


def raw_probs(model, img, qe) -> np.ndarray:
    """The ensemble's mean answer probabilities without the type reweighting and without memory."""
    import torch

    xi = torch.from_numpy(((img - model.img_mean) / model.img_std).astype(np.float32))
    xq = torch.from_numpy(model._question_input(qe))
    out = 0.0
    with torch.inference_mode():
        for k, net in enumerate(model._networks()):
            out = out + torch.softmax(net(_view(xi, k, model.cfg.views), xq)[0], 1).numpy()
    return out / len(model.members)


def answers_by_mode(model, img, qe) -> dict[str, list[str]]:
    """The model's answers with all parts, without memory, without the type reweighting, without both."""
    probs, _ = model.classifier_probs(img, qe)
    mem, lam = model.memory_probs(img, qe)
    raw = raw_probs(model, img, qe)
    raw = raw / raw.sum(1, keepdims=True)
    out = {}
    for name, p, use_mem in (("", probs, True), ("-memory", probs, False), ("-types", raw, True),
                             ("-memory-types", raw, False)):
        if use_mem:
            p = (1 - lam[:, None]) * p + lam[:, None] * mem
        out[name] = [model.vocab[int(b)] for b in p.argmax(1)]
    return out


def line(name: str, seed: int, questions, answers, extra: str = "") -> dict:
    r = vqa_scores(questions, answers, n_boot=0)
    v = {k: r[k]["value"] for k in ("overall_acc", "closed_acc", "open_acc")}
    print(f"seed {seed} {name:40s} overall {v['overall_acc']:.3f} closed {v['closed_acc']:.3f} "
          f"open {v['open_acc']:.3f} right {round(v['overall_acc'] * len(questions))}/{len(questions)} {extra}",
          flush=True)
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="vqa-rad")
    ap.add_argument("--splits", default="testlike")
    ap.add_argument("--split-seeds", default="0")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--mlp", default="40,32,1e-3,0.1", help="plain MLP epochs,batch,lr,weight decay ('' : none)")
    ap.add_argument("--cache", type=Path, help="embedding cache (content-keyed; default: a new one in /tmp)")
    ap.add_argument("--no-modes", action="store_true", help="only the answerer as fitted, no answer-time ablations")
    args = ap.parse_args()
    vqa = load_vqa(shared_data_dir() / args.dataset)
    variants = parse_variants(args.variants)
    with open_cache(args.cache or Path("/tmp/vqa-ablate.duckdb")) as cache:
        img, qe = embed_set(vqa, cache, IMAGE_ENCODERS)
        for split in args.splits.split(","):
            for seed in (int(s) for s in args.split_seeds.split(",")):
                tr, he = make_split(split, vqa.questions, 0.15, seed)
                train, held = vqa.subset(tr), vqa.subset(he)
                hq = held.questions
                print(f"== {split} seed {seed}: {len(tr)} train / {len(he)} held-out questions", flush=True)
                if args.mlp:
                    e, b, lr, wd = args.mlp.split(",")
                    t0 = time.perf_counter()
                    ans = plain_mlp(img[tr], qe[tr], [q.answer for q in train.questions], img[he], qe[he],
                                    views=2, epochs=int(e), batch_size=int(b), lr=float(lr), weight_decay=float(wd))
                    line(f"plain MLP (e{e} b{b} lr{lr} wd{wd})", seed, hq, ans, f"fit {time.perf_counter() - t0:.0f} s")
                for name, over in variants:
                    cfg = replace(VqaConfig(), **over)
                    views = cfg.views
                    t0 = time.perf_counter()
                    model = fit_set(train, img[tr][:, :1280 * views], qe[tr], cfg, cache)
                    fit_s = time.perf_counter() - t0
                    modes = answers_by_mode(model, img[he][:, :1280 * views], qe[he])
                    for mode, ans in modes.items():
                        if mode and args.no_modes:
                            continue
                        line(name + mode, seed, hq, ans, f"fit {fit_s:.0f} s" if not mode else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
