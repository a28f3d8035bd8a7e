"""VQA benchmark (VQA-RAD, PathVQA): accuracy on the validation splits under every score definition,
beside a plain MLP and a question-only guess, over split seeds and by question type; training time,
answer latency, probes, same-organ retrieval precision, and spoken questions (espeak-ng -> Whisper).

    .venv/bin/python benchmarks/vqa.py [--data DIR] [--spoken 50] [--no-train-timing] [--only-spoken --transcripts]
    .venv/bin/python benchmarks/vqa.py --dataset pathvqa --spoken 0 [--only-seeds] [--cache FILE]
    .venv/bin/python benchmarks/vqa.py --splits testlike --only-seeds --context 3   # + retrieved context
    .venv/bin/python benchmarks/vqa.py --splits testlike --only-baselines --no-train-timing   # baselines alone
    .venv/bin/python benchmarks/vqa.py --splits testlike --only-seeds --decoder 256   # + the answer decoder
    .venv/bin/python benchmarks/vqa.py --splits testlike --only-seeds --question-words 1024   # + question words
    .venv/bin/python benchmarks/vqa.py --splits testlike --only-seeds --picture-augment 4   # + augmented pictures

Prints tables; not a timed test. Needs the shared data (``$MEDWEAVE_DATA`` or ../shared/data).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from medweave.retrieve.index import case_indexes, precision_at_k
from medweave.settings import shared_data_dir
from medweave.vqa.cli import print_probes
from medweave.vqa.features import IMAGE_ENCODERS, embed_image_files, embed_questions, open_cache
from medweave.vqa.baselines import plain_mlp, question_only, tune_plain_mlp
from medweave.vqa.data import load_vqa
from medweave.vqa.model import Answerer, VqaConfig
from medweave.vqa.pipeline import CACHE_NAME, ask, fit_split, train_vqa
from medweave.evaluate.answers import SCORE_NAMES, exact_match, vqa_scores
from medweave.evaluate.vqa import run_probes, split_scores
from medweave.vqa.speech import (SpeechError, espeak_available, read_question, speak, spoken_form, transcribe,
                                  transcript_tokens, wer)

console = Console(width=150)
PUBLISHED = {
    "vqa-rad": "published VQA-RAD test (overall/closed/open): MEVF 62.7/75.1/43.9, MMQ+MEVF 68.2/75.7/56.9, "
               "PubMedCLIP ~72/80.0/60.1, M2I2 ~76.8/83.5/66.5; MedGemma-4B 72.5, Lingshu-32B 76.5 overall",
    "pathvqa": "published PathVQA test (6,719 questions on 858 pictures none of which is in training; closed = yes/no): "
               "M2I2 closed 88.0 / open 36.3 (exact match); LLaVA-Med fine-tuned closed 91.2 / open recall 38.0 "
               "(our open_recall); MEVF+SAN closed 81.4 / open 8.1 (gated accuracy)",
}
DATASETS = {"vqa-rad": "testlike,images", "pathvqa": "images"}  # default validation splits


def _cell(v: dict) -> str:
    return "-" if v["n"] == 0 else f"{v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}] n={v['n']}"


def accuracy_table(results: dict[str, dict], dataset: str = "vqa-rad") -> None:
    t = Table(title=f"{dataset} validation (exact match after normalisation; bootstrap 95% CI)")
    t.add_column("score")
    for split in results:
        t.add_column(f"split: {split}")
    for name in SCORE_NAMES:
        t.add_row(name, *(_cell(r[name]) for r in results.values()))
    for group in ("by_question_type", "by_organ"):
        keys = sorted(set().union(*(r[group] for r in results.values())))
        for k in keys:
            t.add_row(f"  {group[3:]}={k}", *(_cell(r[group][k]) if k in r[group] else "-" for r in results.values()))
    console.print(t)
    console.print(PUBLISHED[dataset], highlight=False)


def retrieval_precision(run, k: int = 5) -> float:
    """Same-organ precision@k of the held-out pictures against the training pictures' index."""
    pictures, _ = case_indexes(run.model.mem_img, run.model.mem_q, run.model.cases)
    first = {}
    for i, q in enumerate(run.held.questions):
        first.setdefault(q.image, i)
    rows = list(first.values())
    if run.split == "images":
        return precision_at_k(pictures, run.img[rows], [run.held.questions[i].organ for i in rows], "organ", k)
    return precision_at_k(pictures, pictures.vectors, [r["organ"] for r in pictures.records], "organ", k,
                          exclude=range(len(pictures)))


def latency(model: Answerer, run, n: int = 50) -> tuple[float, float]:
    """(median ms per question: picture embedding cached, question encoded anew; ms to embed a new picture)."""
    qs = run.held.questions[:n]
    times = []
    with tempfile.TemporaryDirectory() as tmp, open_cache(Path(tmp) / "pictures.duckdb") as cache:
        embed_image_files([run.held.image_path(q.image) for q in qs], cache, model.image_encoders())  # pictures cached
        for q in qs:
            t0 = time.perf_counter()
            ask(model, run.held.image_path(q.image), q.question, cache, k=3)
            times.append(time.perf_counter() - t0)
        from PIL import Image

        for seed in (1, 2):  # the first call also loads the picture encoder; the second is timed
            noise = Path(tmp) / f"noise{seed}.png"
            Image.fromarray(np.random.default_rng(seed).integers(0, 256, (256, 256), dtype=np.uint8)).save(noise)
            t0 = time.perf_counter()
            ask(model, noise, qs[0].question, None, k=3)
    return 1000 * statistics.median(times), 1000 * (time.perf_counter() - t0)


def print_latency(run) -> None:
    med, cold = latency(run.model, run)
    console.print(f"answer latency: median {med:.1f} ms per question (picture embedding cached, question "
                  f"encoded, answered, 3 similar cases); a new picture adds its encoding: {cold:.0f} ms "
                  f"for the first", highlight=False)


def spoken(run, cache, n: int, show: bool = False) -> None:
    """Accuracy on n held-out questions typed vs spoken by espeak-ng and transcribed by Whisper: as heard
    (the raw transcript) and as read (``read_question`` against the training questions' lexicon, what
    ``vqa ask --audio`` and the server's record button pass on); word error rates of both; with ``show``
    every question whose transcript differs from what was said."""
    if not espeak_available():
        console.print("spoken questions: skipped (espeak-ng not installed; apt-get install -y espeak-ng)")
        return
    idx = np.random.default_rng(0).permutation(len(run.held.questions))[:n]
    qs = [run.held.questions[i] for i in idx]
    said = [spoken_form(q.question) for q in qs]
    heard, seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for j, text in enumerate(said):
            wav = speak(text, Path(tmp) / f"q{j}.wav")
            t0 = time.perf_counter()
            heard.append(transcribe(wav))
            seconds.append(time.perf_counter() - t0)
    read = [read_question(h, [c["question"] for c in run.model.cases]) for h in heard]
    right = {name: np.array([exact_match(p.answer, q.answer) for p, q in zip(preds, qs)]) for name, preds in (
        ("typed", run.model.predict(run.img[idx], run.qe[idx], questions=[q.question for q in qs])),
        ("heard", run.model.predict(run.img[idx], embed_questions(heard, cache), questions=heard)),
        ("read", run.model.predict(run.img[idx], embed_questions(read, cache), questions=read)))}
    table = Table(title=f"spoken questions: {len(qs)} held-out questions of the {run.split} split, espeak-ng "
                        f"(en-us, -s 150 -g 3: about 70 ms between words) -> Whisper tiny.en (beam 5), "
                        f"{statistics.median(seconds):.2f} s median transcription")
    for col in ("question text", "accuracy", "vs typed (points)", "WER vs said"):
        table.add_column(col)
    table.add_row("typed", f"{right['typed'].mean():.3f}", "", "")
    for name, texts, label in (("heard", heard, "spoken: transcript as heard"),
                               ("read", read, "spoken: transcript read against the lexicon")):
        table.add_row(label, f"{right[name].mean():.3f}", f"{100 * (right[name].mean() - right['typed'].mean()):+.1f}",
                      f"{wer(said, texts):.3f}")
    console.print(table)
    console.print("  WER: word edits over said words after transcript_tokens (lower case, no punctuation, hyphens as "
                  "spaces, articles dropped, number words as digits, British spellings as American); said = the "
                  "question with the first of slash alternatives", highlight=False)
    if show:
        for j, (s, h, r) in enumerate(zip(said, heard, read)):
            if transcript_tokens(s) != transcript_tokens(r):
                mark = "/".join("right" if right[k][j] else "wrong" for k in ("typed", "read"))
                console.print(f"  typed/read {mark:11} said {s!r}  heard {h!r}" + (f"  read {r!r}" if r != h else ""),
                              highlight=False, markup=False)


SEED_SCORES = ("overall_acc", "closed_acc", "open_acc", "open_recall")
SEEN_SCORES = ("open_seen", "open_unseen")  # open accuracy, reference among the training answers / never in them


def _scores(questions, answers) -> dict:
    """The point values of SEED_SCORES and of overall_acc by question type (no intervals)."""
    res = vqa_scores(questions, answers, n_boot=0)
    return {**{k: res[k]["value"] for k in SEED_SCORES},
            **{f"type={t}": v["value"] for t, v in res["by_question_type"].items()}}


def baseline_answers(run, cache, views: int, tune: dict | None = None, seed: int = 0) -> dict[str, list[str]]:
    """The plain MLP's and the question-only guess's answers on a split run's held-out questions
    (trained on the same training side, same embeddings). The plain MLP's batch size, lr, weight decay
    and epochs are chosen on an inner split of the training side (the same split kind, 15%, the same
    seed: ``tune_plain_mlp``; ``tune``: its grid, keyword arguments), then it is refitted on the whole
    training side; ``plain-mlp-fixed`` is the untuned setting (60 epochs, batch 128, lr 1e-3)."""
    from medweave.vqa.pipeline import embed_set
    from medweave.vqa.splits import make_split

    encoders = IMAGE_ENCODERS[:views]  # the frozen encoders' embeddings, whatever the answerer reads
    img, qe = embed_set(run.train, cache, encoders)
    held_img, _ = embed_set(run.held, cache, encoders)
    answers = [q.answer for q in run.train.questions]
    t0 = time.perf_counter()
    inner = make_split(run.split, run.train.questions, 0.15, seed)
    best, grid = tune_plain_mlp(img, qe, answers, inner, views=len(encoders), seed=seed, **(tune or {}))
    tune_s = time.perf_counter() - t0
    top = sorted(grid, key=lambda r: -r["inner_acc"])[:3]
    console.print(f"  plain MLP tuned on an inner {run.split} split of the training side ({len(inner[0])} fit / "
                  f"{len(inner[1])} validation questions, {len(grid)} settings, {tune_s:.0f} s): chosen epochs "
                  f"{best.epochs}, batch {best.batch_size}, lr {best.lr:g}, weight decay {best.weight_decay:g}; "
                  "best inner accuracies " + ", ".join(
                      f"{r['inner_acc']:.3f} (e{r['epochs']} b{r['batch_size']} lr{r['lr']:g} wd{r['weight_decay']:g})"
                      for r in top), highlight=False)
    return {"plain-mlp": plain_mlp(img, qe, answers, held_img, run.qe, views=len(encoders), seed=seed,
                                   epochs=best.epochs, batch_size=best.batch_size, lr=best.lr,
                                   weight_decay=best.weight_decay),
            "plain-mlp-fixed": plain_mlp(img, qe, answers, held_img, run.qe, views=len(encoders), seed=seed),
            "question-only": question_only(qe, answers, run.qe)}


def split_sides(data, split: str, seed: int, cache, views: int):
    """A ``SplitRun`` without an answerer (``model`` None): the two sides of a split and the held-out
    embeddings, for the baselines alone (``--only-baselines``)."""
    from medweave.vqa.data import VqaSet
    from medweave.vqa.pipeline import SplitRun, embed_set
    from medweave.vqa.splits import make_split

    vqa = data if isinstance(data, VqaSet) else load_vqa(data)
    train_idx, held_idx = make_split(split, vqa.questions, 0.15, seed)
    held = vqa.subset(held_idx)
    img, qe = embed_set(held, cache, IMAGE_ENCODERS[:views])
    return SplitRun(split, None, held, img, qe, len(train_idx), 0.0, vqa.subset(train_idx))


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def seen_unseen(train_questions, held_questions, answers) -> tuple[float, int, float, int]:
    """Open accuracy on the held-out open questions whose reference answer is among the training
    answers (normalised) and on those whose answer never occurs in training: (acc, n, acc, n)."""
    from medweave.vqa.normalize import normalize_answer

    train = {normalize_answer(q.answer) for q in train_questions}
    seen, unseen = [], []
    for q, a in zip(held_questions, answers):
        if not q.closed:
            (seen if normalize_answer(q.answer) in train else unseen).append(exact_match(a, q.answer))
    return (float(np.mean(seen)) if seen else float("nan"), len(seen),
            float(np.mean(unseen)) if unseen else float("nan"), len(unseen))


def decoder_report(run, cache, seed: int) -> list[str]:
    """The answerer's answers with its decoder gate as chosen (printed: the gate, its inner grid, how
    many held-out answers the decoder wrote, and the blank-picture probe with the gate open)."""
    model = run.model
    gate = model.meta.get("decoder_gate", {})
    preds = model.predict(run.img, run.qe, questions=[q.question for q in run.held.questions])
    console.print(f"  decoder gate (inner {run.split} split of the training side, {gate.get('inner_train')} fit / "
                  f"{gate.get('inner_held')} validation questions, {gate.get('seconds', 0):.0f} s): margin "
                  f"{gate.get('margin')}, novel answers only {gate.get('novel_only')}; inner right with the gate "
                  f"closed {gate.get('closed_gate_right')}, grid (margin/novel: right, decoded) "
                  + ", ".join(f"{g['margin']:+.1f}/{'n' if g['novel_only'] else 'a'}: {g['right']}, {g['decoded']}"
                              for g in gate.get("grid", [])), highlight=False)
    texts, _ = model.decode(run.img, run.qe)
    used = [i for i, p in enumerate(preds) if p.decoded]
    from medweave.vqa.decoder import yes_no_form

    form = [yes_no_form(q.question) for q in run.held.questions]
    console.print(f"  seed {seed}: held-out questions yes/no in form (the decoder never answers them): {sum(form)} "
                  f"({sum(f and q.closed for f, q in zip(form, run.held.questions))} closed, "
                  f"{sum(f and not q.closed for f, q in zip(form, run.held.questions))} open); decoded answers to "
                  f"closed questions: {sum(run.held.questions[i].closed for i in used)}", highlight=False)
    console.print(f"  seed {seed}: the decoder wrote {len(used)} held-out answers; "
                  + "; ".join(f"{run.held.questions[i].question!r} -> {preds[i].answer!r} "
                              f"(ref {run.held.questions[i].answer!r})" for i in used[:20]), highlight=False,
                  markup=False)
    train_vocab = set(model.vocab)
    novel = sum(t not in train_vocab for t, q in zip(texts, run.held.questions) if not q.closed)
    right_novel = sum(t not in train_vocab and exact_match(t, q.answer) for t, q in zip(texts, run.held.questions)
                      if not q.closed)
    console.print(f"  ungated: on the {sum(not q.closed for q in run.held.questions)} open held-out questions the "
                  f"decoder's best answer is a non-training answer {novel} times, exactly right {right_novel} times",
                  highlight=False)
    from medweave.evaluate.vqa import image_ablation

    from dataclasses import replace

    closed_gate = replace(model, cfg=replace(model.cfg, decoder_margin=None), _nets=model._nets)
    for label, m in (("the gate as chosen", model), ("the gate closed (no decoder)", closed_gate)):
        abl = image_ablation(m, run.held, cache, 0)
        console.print(f"  image ablation with {label}: " + ", ".join(
            f"{k}: overall {v['overall_acc']['value']:.3f} open {v['open_acc']['value']:.3f}"
            for k, v in abl.items()), highlight=False)
    return [p.answer for p in preds]


def seed_table(data: Path, seeds: list[int], cache, splits: tuple[str, ...], cfg=None,
               baselines: bool = True, context: int = 0, context_only: bool = False,
               only_baselines: bool = False, tune: dict | None = None) -> dict:
    """overall / closed / open accuracy of the model trained on each seed's split, beside the plain MLP
    and the question-only guess on the same split, their mean ± sd over seeds, and the accuracy by
    question type (mean ± sd). ``context`` = k > 0 adds the answerer trained with k retrieved training
    cases as context (``VqaConfig.context``) on the same split (``context_only``: that row alone;
    ``only_baselines``: the baselines alone, no answerer). Returns the first seed's run per split,
    which the other figures reuse."""
    t = Table(title="accuracy over validation split seeds (every model retrained on each split; exact match)")
    for col in ("split", "model", "seed", *SEED_SCORES, *SEEN_SCORES, "held out", "fit s"):
        t.add_column(col)
    first, by_type = {}, {}
    for split in splits:
        rows: dict[str, list[dict]] = {}
        for seed in seeds:
            answers = {}
            cfg = cfg or VqaConfig()
            if only_baselines:
                run = split_sides(data, split, seed, cache, cfg.views)
            elif not context_only:
                run = fit_split(data, split, cfg=cfg, cache=cache, seed=seed)
                texts = [q.question for q in run.held.questions]
                answers["answerer"] = [p.answer for p in run.model.predict(run.img, run.qe, decoder=False,
                                                                           picture_stats=run.stats, questions=texts)]
                # the same answers with the picture gate switched off: equal unless it abstains on a real picture
                answers["answerer-no-gate"] = [p.answer for p in run.model.predict(run.img, run.qe, decoder=False,
                                                                                   gate=False, questions=texts)]
                if cfg.picture_prior:  # the same fit without the picture prior (it acts at answer time only)
                    from dataclasses import replace

                    bare = replace(run.model, cfg=replace(run.model.cfg, picture_prior=0.0), _nets=run.model._nets)
                    answers["answerer-no-prior"] = [p.answer for p in bare.predict(run.img, run.qe, decoder=False,
                                                                                   questions=texts)]
                if cfg.decoder:
                    answers["answerer+decoder"] = decoder_report(run, cache, seed)
            if context and not only_baselines:
                from dataclasses import replace

                crun = fit_split(data, split, cfg=replace(cfg or VqaConfig(), context=context), cache=cache, seed=seed)
                answers[f"answerer+context{context}"] = [p.answer for p in crun.predictions()]
                ctx_fit = crun.fit_seconds
                if context_only:
                    run = crun
            first.setdefault(split, run)
            if baselines:
                t0 = time.perf_counter()
                answers.update(baseline_answers(run, cache, cfg.views, tune, seed))
                base_s = time.perf_counter() - t0
            for name, ans in answers.items():
                sc = _scores(run.held.questions, ans)
                sa, sn, ua, un = seen_unseen(run.train.questions, run.held.questions, ans)
                sc["open_seen"], sc["open_unseen"] = sa, ua
                rows.setdefault(name, []).append(sc)
                fit = f"{run.fit_seconds:.0f}" if name == "answerer" else (f"{base_s:.0f} (baselines, tuning included)" if name == "plain-mlp" else "")
                if name.startswith("answerer+context"):
                    fit = f"{ctx_fit:.0f}"
                t.add_row(split, name, str(seed), *(f"{sc[k]:.3f}" for k in (*SEED_SCORES, *SEEN_SCORES)),
                          str(len(run.held.questions)), fit)
                console.print(f"  {split} seed {seed} {name}: " + " ".join(f"{k} {sc[k]:.3f}" for k in SEED_SCORES)
                              + f" open_seen {sa:.3f} (n={sn}) open_unseen {ua:.3f} (n={un})"
                              + f" (held out {len(run.held.questions)}, fit {fit or '-'} s)", highlight=False)
        for name, scs in rows.items():
            t.add_row(split, name, "mean ± sd", *(_mean_sd([s[k] for s in scs]) for k in (*SEED_SCORES, *SEEN_SCORES)),
                      "", "", end_section=name == list(rows)[-1])
        by_type[split] = rows
    console.print(t)
    for split, rows in by_type.items():
        types = sorted({k for scs in rows.values() for s in scs for k in s if k.startswith("type=")})
        tt = Table(title=f"split {split}: overall_acc by question type, mean ± sd over split seeds {seeds}")
        tt.add_column("question type")
        for name in rows:
            tt.add_column(name)
        n_by_type = {}
        for q in first[split].held.questions:
            n_by_type[q.question_type or "?"] = n_by_type.get(q.question_type or "?", 0) + 1
        for k in types:
            tt.add_row(f"{k[5:]} (n={n_by_type.get(k[5:], '?')} on seed {seeds[0]})",
                       *(_mean_sd([s.get(k, float('nan')) for s in scs]) for scs in rows.values()))
        console.print(tt)
    return first


def parse_tune(text: str | None) -> dict:
    """--mlp-tune 'batch=32,128;lr=1e-3;...' as tune_plain_mlp keyword arguments."""
    keys = {"batch": ("batch_sizes", int), "lr": ("lrs", float), "wd": ("weight_decays", float),
            "epochs": ("epochs", int)}
    out = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        key, _, values = part.partition("=")
        if key.strip() not in keys:
            raise SystemExit(f"--mlp-tune: unknown key {key.strip()!r}; allowed: {', '.join(keys)}")
        name, kind = keys[key.strip()]
        out[name] = tuple(kind(v) for v in values.split(",") if v.strip())
    return out


# VqaConfig's training choices that --set may change (benchmarks/vqa_tune.py searched them)
SETTABLE = {"epochs": int, "hidden": int, "batch_size": int, "lr": float, "weight_decay": float, "dropout": float,
            "image_dropout": float, "label_smoothing": float, "fact_weight": float, "memory_weight": float}


def parse_set(text: str | None) -> dict:
    """'hidden=1024,lr=5e-4' -> {'hidden': 1024, 'lr': 0.0005}: VqaConfig fields to change; an unknown
    field or a value that is not a number is an error naming both."""
    out = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, _, value = (x.strip() for x in part.partition("="))
        if key not in SETTABLE:
            raise SystemExit(f"--set: unknown field {key!r}; allowed: {', '.join(SETTABLE)}")
        try:
            out[key] = SETTABLE[key](value)
        except ValueError:
            raise SystemExit(f"--set: {key} value {value!r} is not {'an integer' if SETTABLE[key] is int else 'a number'}") from None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="vqa-rad",
                    help="the shared data set (pathvqa: validation by picture, the official test's situation)")
    ap.add_argument("--data", type=Path, help="the data folder (default: the shared folder of --dataset)")
    ap.add_argument("--epochs", type=int, help="answerer epochs (default: VqaConfig's)")
    ap.add_argument("--members", type=int, help="answerer ensemble members (default: VqaConfig's)")
    ap.add_argument("--views", type=int, help="picture views (2: 224 and 320 pixels; 1: 224 only; default: "
                    "VqaConfig's)")
    ap.add_argument("--finetune-blocks", type=int, default=0,
                    help="fine-tune the picture encoder's last N blocks first (VqaConfig.finetune_blocks)")
    ap.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (VqaConfig.finetune_epochs)")
    ap.add_argument("--finetune-augmentations", type=int,
                    help="augmented copies per picture for fine-tuning (VqaConfig.finetune_augmentations)")
    ap.add_argument("--pictures", type=int, help="only the questions about the first N pictures (by name): a "
                    "smaller run when the machine is busy; the tables say so")
    ap.add_argument("--no-baselines", action="store_true", help="skip the plain MLP and question-only rows")
    ap.add_argument("--context", type=int, default=0, help="K > 0: beside the answerer, the answerer trained with "
                    "the K retrieved training cases as context (VqaConfig.context), same split seeds")
    ap.add_argument("--only-baselines", action="store_true", help="the seed table's baseline rows only (plain MLP "
                    "tuned on an inner split of each training side, its fixed setting, question-only); no answerer")
    ap.add_argument("--mlp-tune", default=None, help="the plain MLP's inner-validation grid as "
                    "'batch=32,128,512;lr=3e-4,1e-3,3e-3;wd=0.01,0.1;epochs=10,20,40,60,100' (any subset of the "
                    "keys; default: medweave.vqa.baselines' TUNE_* values)")
    ap.add_argument("--decoder", type=int, default=0, help="H > 0: train the answerer with a word-level answer "
                    "decoder of H hidden units (VqaConfig.decoder; its gate chosen on an inner split of the training "
                    "side) and print the answerer with and without it, from the same fit")
    ap.add_argument("--decoder-epochs", type=int, help="the decoder's epochs (VqaConfig.decoder_epochs)")
    ap.add_argument("--raw-question", action="store_true", help="the answerer reads the question embedding raw, "
                    "as before VqaConfig.question_scale (the default standardises it on the training rows)")
    ap.add_argument("--picture-prior", type=float, help="the answerer's picture prior (VqaConfig.picture_prior; 0: "
                    "off); with it the seed table also prints the same fit without it (answerer-no-prior)")
    ap.add_argument("--picture-prior-temperature", type=float,
                    help="VqaConfig.picture_prior_temperature")
    ap.add_argument("--question-words", type=int, help="the answerer reads the question's hashed unigrams and "
                    "bigrams of this width beside e5 (VqaConfig.question_words; 0: off)")
    ap.add_argument("--picture-augment", type=int, help="K augmented copies of every training picture, one drawn "
                    "per epoch beside the clean one (VqaConfig.picture_augment; 0: off)")
    ap.add_argument("--picture-augment-clean", type=float, help="P(clean picture) in that draw "
                    "(VqaConfig.picture_augment_clean; default: uniform over the K + 1)")
    ap.add_argument("--set", default=None, help="change VqaConfig training choices, 'hidden=1024,lr=5e-4' (fields: "
                    + ", ".join(SETTABLE) + "; benchmarks/vqa_tune.py chooses them)")
    ap.add_argument("--context-only", action="store_true", help="with --context: only the context row (and the "
                    "baselines unless --no-baselines)")
    ap.add_argument("--spoken", type=int, default=50)
    ap.add_argument("--no-train-timing", action="store_true", help="skip the cold full training run")
    ap.add_argument("--cache", type=Path, help="embedding cache to reuse (default: the timed model's, or a new one)")
    ap.add_argument("--only-spoken", action="store_true", help="only the spoken-question comparison")
    ap.add_argument("--transcripts", action="store_true", help="print every misheard spoken question")
    ap.add_argument("--only-latency", action="store_true", help="only the answer latency")
    ap.add_argument("--split-seeds", default="0,1,2",
                    help="validation split seeds for the overall/closed/open table (the first seed's split gets "
                         "every other figure); one seed's split moves overall_acc by +-3 points")
    ap.add_argument("--only-seeds", action="store_true", help="only the accuracy over split seeds")
    ap.add_argument("--splits", default=None,
                    help="validation splits (medweave.vqa.splits: testlike mirrors the official test and is where "
                         "choices are made; images holds out pictures; questions is the old reference); the first "
                         "gets the latency and spoken figures; default: testlike,images for vqa-rad, images for "
                         "pathvqa)")
    args = ap.parse_args()
    args.data = args.data or shared_data_dir() / args.dataset
    splits = tuple(s.strip() for s in (args.splits or DATASETS[args.dataset]).split(",") if s.strip())
    if not (args.data / "trainset.json").is_file():
        console.print(f"{args.dataset} not found at {args.data} (set MEDWEAVE_DATA); nothing to benchmark")
        return 0
    try:
        cfg = VqaConfig(finetune_blocks=args.finetune_blocks, decoder=args.decoder,
                        question_scale=not args.raw_question,
                        **{k: v for k, v in (("epochs", args.epochs), ("seeds", args.members), ("views", args.views),
                                             ("finetune_epochs", args.finetune_epochs),
                                             ("finetune_augmentations", args.finetune_augmentations),
                                             ("decoder_epochs", args.decoder_epochs),
                                             ("picture_prior", args.picture_prior),
                                             ("picture_prior_temperature", args.picture_prior_temperature),
                                             ("question_words", args.question_words),
                                             ("picture_augment", args.picture_augment),
                                             ("picture_augment_clean", args.picture_augment_clean))
                           if v is not None})
    except ValueError as exc:
        raise SystemExit(f"benchmarks/vqa.py: {exc}") from None
    if args.set:
        from dataclasses import replace

        try:
            cfg = replace(cfg, **parse_set(args.set))
        except ValueError as exc:
            raise SystemExit(f"benchmarks/vqa.py: --set: {exc}") from None
        console.print(f"answerer settings changed by --set: {parse_set(args.set)}", highlight=False)
    work = Path(tempfile.mkdtemp(prefix="vqa-bench-"))
    if not args.no_train_timing:
        t0 = time.perf_counter()
        _, meta = train_vqa(args.data, work / "model", cfg)
        console.print(f"training on all {meta['n_train']} questions from cold (embedding included): "
                      f"{time.perf_counter() - t0:.0f} s (embedding {meta['embed_seconds']:.0f} s, "
                      f"fit {meta['fit_seconds']:.0f} s); limit 600 s", highlight=False)
    cache_path = args.cache or ((work / "model" / CACHE_NAME) if not args.no_train_timing else work / CACHE_NAME)
    runs, results = {}, {}
    seeds = [int(s) for s in args.split_seeds.split(",") if s.strip()]
    data = args.data
    if args.pictures:
        full = load_vqa(args.data)
        keep = set(full.image_names()[:args.pictures])
        data = full.subset([i for i, q in enumerate(full.questions) if q.image in keep])
        console.print(f"subset: the {len(keep)} first pictures of {len(full.image_names())} and their "
                      f"{len(data.questions)} of {len(full.questions)} questions", highlight=False)
    with open_cache(cache_path) as cache:
        if not (args.only_spoken or args.only_latency):
            from medweave.vqa.pipeline import embed_set

            full_set = data if not isinstance(data, Path) else load_vqa(data)
            t0 = time.perf_counter()
            embed_set(full_set, cache, IMAGE_ENCODERS[:cfg.views], with_stats=True)
            console.print(f"embeddings of {len(full_set.image_names())} pictures ({cfg.views} view(s)) and "
                          f"{len({q.question.strip() for q in full_set.questions})} distinct questions: "
                          f"{time.perf_counter() - t0:.0f} s (0 when all cached)", highlight=False)
            data = full_set
        if (len(seeds) > 1 or args.context or args.only_baselines or args.only_seeds or cfg.picture_prior) and not (args.only_spoken or args.only_latency):
            runs = seed_table(data, seeds, cache, splits, cfg, not args.no_baselines, args.context,
                              args.context_only, args.only_baselines, parse_tune(args.mlp_tune))
            if args.only_seeds or args.only_baselines:
                return 0
        for split in splits[:1] if args.only_spoken or args.only_latency else splits:
            if split not in runs:
                runs[split] = fit_split(data, split, cfg, cache=cache, seed=seeds[0] if seeds else 0)
            results[split] = split_scores(runs[split])
            console.print(f"split {split}: {results[split]['train_questions']} train / "
                          f"{results[split]['held_out_questions']} held-out questions, fit "
                          f"{results[split]['fit_seconds']:.0f} s", highlight=False)
        if args.only_spoken or args.only_latency:
            if args.only_spoken:
                spoken(runs[splits[0]], cache, args.spoken, args.transcripts)
            else:
                print_latency(runs[splits[0]])
            return 0
        accuracy_table(results, args.dataset)
        for split, run in runs.items():
            if any(q.organ for q in run.held.questions):  # PathVQA names no organ
                console.print(f"same-organ retrieval precision@5 ({split} split): {retrieval_precision(run):.3f}")
        for split, run in runs.items():
            console.rule(f"probes on the {split} split's held-out questions")
            print_probes(run_probes(run.model, run.held, cache, n_boot=200))
            console.rule(f"the same probes with the picture gate switched off ({split} split)")
            print_probes(run_probes(run.model, run.held, cache, n_boot=200, gate=False))
            if cfg.picture_prior:
                from dataclasses import replace

                console.rule(f"the same probes without the picture prior ({split} split)")
                bare = replace(run.model, cfg=replace(run.model.cfg, picture_prior=0.0), _nets=run.model._nets)
                print_probes(run_probes(bare, run.held, cache, n_boot=200))
        print_latency(runs[splits[0]])
        try:
            if args.spoken:
                spoken(runs[splits[0]], cache, args.spoken, args.transcripts)
        except SpeechError as exc:
            console.print(f"spoken questions: skipped ({exc})", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
