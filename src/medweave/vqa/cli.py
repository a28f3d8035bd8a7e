"""``medweave vqa``: train, evaluate, ask, probe. Thin: each command calls one function (part of the
command layer: evaluate and probe call ``medweave.evaluate.vqa``, where every model's scoring lives)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

vqa_app = typer.Typer(help="Visual question answering (VQA-RAD layout): train, evaluate, ask, probe.",
                      no_args_is_help=True, rich_markup_mode=None)
out = Console()
err = Console(stderr=True)
_ERRORS = (FileNotFoundError, ValueError, RuntimeError)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _dump(obj) -> None:
    out.print_json(json.dumps(obj, default=str))


def _fmt(v: dict) -> str:
    if v["n"] == 0:
        return "-"
    ci = f" [{v['lo']:.3f}, {v['hi']:.3f}]" if v.get("lo") == v.get("lo") else ""
    return f"{v['value']:.3f}{ci}"


def print_scores(res: dict, title: str) -> None:
    """The score table and the breakdowns by question type and organ."""
    from ..evaluate.answers import SCORE_NAMES

    t = Table(title=title)
    for c in ("score", "value [95% CI]", "n"):
        t.add_column(c)
    for name in SCORE_NAMES:
        t.add_row(name, _fmt(res[name]), str(res[name]["n"]))
    for group in ("by_question_type", "by_organ"):
        for key, v in res[group].items():
            t.add_row(f"  {group[3:]}={key}", _fmt(v), str(v["n"]))
    out.print(t)


@vqa_app.command("train", epilog="Example: medweave vqa train --data ../shared/data/vqa-rad --out runs/vqa")
def train(
    data: Path = typer.Option(..., "--data",
                              help="VQA-RAD layout: a folder with one question JSON and images/, or the JSON."),
    out_dir: Path = typer.Option(..., "--out", help="Model folder to write (weights.safetensors + config.json)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Picture folder (default: images/ beside the JSON)."),
    seeds: int = typer.Option(4, "--seeds", help="Ensemble members (member k reads picture view "
                              "k mod --views)."),
    epochs: int = typer.Option(60, "--epochs"),
    views: int = typer.Option(2, "--views", help="Picture views: 2 (224 and 320 pixels) or 1 (224 only, a third "
                              "of the encoding time: large sets such as PathVQA)."),
    split: Optional[str] = typer.Option(None, "--split", help="Train on the training side of this validation "
                                        "split only (testlike, images, questions; 15 percent held out)."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of --split."),
    finetune_blocks: int = typer.Option(0, "--finetune-blocks", help="Fine-tune the picture encoder's last N "
                                        "blocks (of 16; with augmentation, no flips) on the training pictures "
                                        "first; saved with the model. 0: frozen encoder."),
    finetune_epochs: int = typer.Option(15, "--finetune-epochs", help="Epochs of --finetune-blocks."),
    context: int = typer.Option(0, "--context", help="Retrieved context: the answers of the K training cases "
                                "closest in picture and question are an input of the answerer (leave-self-out "
                                "in training; saved in the model). 0: none."),
    decoder: int = typer.Option(0, "--decoder", help="Answer decoder of H hidden units: writes open "
                                "answers word by word (also answers no training question had; never a yes/no "
                                "question), let through by a gate chosen on an inner split of the training side; "
                                "saved in the model. 0: none."),
    decoder_epochs: int = typer.Option(40, "--decoder-epochs", help="Epochs of --decoder."),
    question_words: int = typer.Option(0, "--question-words", help="The answerer also reads the question's "
                                       "words: hashed unigrams and bigrams of this width beside the e5 "
                                       "embedding (e.g. 1024). 0: off."),
    picture_augment: int = typer.Option(0, "--picture-augment", help="Encode K augmented copies of every "
                                        "training picture (frozen encoders; crops, small rotations, intensity "
                                        "windows, no flips; cached) and let each epoch read a picture as one of "
                                        "them or the clean one. 0: off."),
    as_json: bool = typer.Option(False, "--json", help="Print the training summary as JSON."),
) -> None:
    """Embed pictures and questions (cached), train the answer ensemble, save the model."""
    from .model import VqaConfig
    from .pipeline import train_vqa

    try:
        cfg = VqaConfig(seeds=seeds, epochs=epochs, views=views, finetune_blocks=finetune_blocks, finetune_epochs=finetune_epochs,
                        context=context, decoder=decoder, decoder_epochs=decoder_epochs,
                        question_words=question_words, picture_augment=picture_augment)
        _model, meta = train_vqa(data, out_dir, cfg, images=images, split=split, split_seed=split_seed)
    except _ERRORS as exc:
        fail(str(exc))
    if as_json:
        _dump({"model": str(out_dir), **meta})
    else:
        out.print(f"trained VQA model -> {out_dir}: {meta['n_train']} questions, {meta['images']} pictures, "
                  f"{meta['train_seconds']:.0f} s (embedding {meta['embed_seconds']:.0f} s)", highlight=False)


@vqa_app.command("evaluate", epilog=(
    "Example: medweave vqa evaluate --model runs/vqa --questions test.json "
    "--images ../shared/data/vqa-rad/images --json"))
def evaluate(
    model: Path = typer.Option(..., "--model", help="Model folder from `medweave vqa train`."),
    questions: Path = typer.Option(..., "--questions", help="Question JSON in the VQA-RAD layout (with answers)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Picture folder (default: images/ beside the JSON)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Every score definition (see README) with bootstrap 95% intervals and breakdowns."""
    from ..evaluate.vqa import evaluate_vqa

    try:
        res = evaluate_vqa(model, questions, images, n_boot=bootstrap)
    except _ERRORS as exc:
        fail(str(exc))
    if as_json:
        _dump(res)
    else:
        print_scores(res, f"{res['questions']} questions from {res['source']}")
        a = res["abstained"]
        out.print(f"abstained (picture gate; counted wrong): {a['n']} of {a['of']}; {res['picture_gate']}",
                  highlight=False)


@vqa_app.command("ask", epilog=(
    "Example: medweave vqa ask --model runs/vqa --image ../shared/data/vqa-rad/images/synpic54610.jpg "
    "--question 'Is there an infarct?'   (or --audio question.wav)"))
def ask(
    model: Path = typer.Option(..., "--model", help="Model folder from `medweave vqa train`."),
    image: Path = typer.Option(..., "--image", help="Picture file (JPEG/PNG)."),
    question: Optional[str] = typer.Option(None, "--question", help="The question, typed."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="The question, spoken (WAV), transcribed by Whisper."),
    k: int = typer.Option(3, "-k", help="Similar training cases to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
) -> None:
    """Answer one question: answer, probability, closed/open type assumed, most similar training cases."""
    from .model import Answerer
    from .pipeline import CACHE_NAME
    from .pipeline import ask as ask_one

    if (question is None) == (audio is None):
        fail("give exactly one of --question TEXT or --audio FILE.wav")
    try:
        transcript = None
        answerer = Answerer.load(model)
        if audio is not None:
            from .speech import read_question, transcribe

            transcript = transcribe(audio)
            question = read_question(transcript, [c["question"] for c in answerer.cases])
        from .features import open_cache

        t0 = time.perf_counter()
        with open_cache(model / CACHE_NAME) as cache:
            res = ask_one(answerer, image, question, cache, k)
        res["seconds"] = time.perf_counter() - t0
    except _ERRORS as exc:
        fail(str(exc))
    if transcript is not None:
        res["transcript"] = transcript
    if as_json:
        _dump(res)
        return
    if transcript is not None:
        out.print(f"heard: {transcript}" + (f"  (read as: {question})" if question != transcript else ""),
                  highlight=False)
    if res["abstained"]:
        out.print(f"no answer: {res['reason']}", highlight=False)
    else:
        out.print(f"answer: {res['answer']}  (probability {res['probability']:.2f}; assumed {res['type']}, "
                  f"P(closed) {res['p_closed']:.2f})", highlight=False)
    out.print(f"picture gate: {res['picture_gate']}", highlight=False)
    out.print("similar training cases:")
    for c in res["similar_cases"]:
        out.print(f"  {c['score']:.2f}  {c['image']} ({c['organ']}): {c['question']} -> {c['answer']}",
                  highlight=False, markup=False)


@vqa_app.command("probe", epilog=(
    "Example: medweave vqa probe --model runs/vqa --questions valid.json "
    "--images ../shared/data/vqa-rad/images --json"))
def probe(
    model: Path = typer.Option(..., "--model", help="Model folder from `medweave vqa train`."),
    questions: Path = typer.Option(..., "--questions", help="Question JSON in the VQA-RAD layout (with answers)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Picture folder (default: images/ beside the JSON)."),
    bootstrap: int = typer.Option(200, "--bootstrap", help="Bootstrap resamples for the 95% intervals."),
    as_json: bool = typer.Option(False, "--json", help="Print the probe results as JSON."),
) -> None:
    """Image ablation (blank, noise, another same-organ picture) and ProbMed-style paired probes."""
    from .data import load_vqa
    from .features import open_cache
    from .model import Answerer
    from .pipeline import CACHE_NAME
    from ..evaluate.vqa import run_probes

    try:
        answerer = Answerer.load(model)
        vqa = load_vqa(questions, images)
        with open_cache(model / CACHE_NAME) as cache:
            res = run_probes(answerer, vqa, cache, n_boot=bootstrap)
    except _ERRORS as exc:
        fail(str(exc))
    if as_json:
        _dump(res)
    else:
        print_probes(res)


def print_probes(res: dict) -> None:
    """The ablation and paired-probe tables."""
    t = Table(title="image ablation (exact match)", caption="question_only: no picture, the commonest answer of "
              "the 5 training questions closest in wording, on the same questions; blank_beyond_question_only: "
              "the share right with a blank picture and wrong by the question-only guess")
    for c in ("picture", "overall_acc", "closed_acc", "open_acc", "abstained"):
        t.add_column(c)
    for name, v in res["ablation"].items():
        gate = v.get("abstained")
        t.add_row(name, *(_fmt(v[s]) for s in ("overall_acc", "closed_acc", "open_acc")),
                  f"{gate['share']:.3f} ({gate['n']} of {gate['of']})" if gate else "-")
    out.print(t)
    if res.get("picture_gate"):
        out.print(f"picture gate: {res['picture_gate']} (an abstention counts as wrong)", highlight=False)
    t = Table(title=f"paired probes (random guessing: {res['paired']['random_pair_acc']:.0%} of pairs)")
    for c in ("fact", "pairs", "pair_acc", "true_acc (yes)", "false_acc (no)"):
        t.add_column(c)
    for kind, v in res["paired"].get("by_kind", {}).items():
        t.add_row(kind, str(v["pairs"]), f"{v['pair_acc']:.3f}", f"{v['true_acc']:.3f}", f"{v['false_acc']:.3f}")
    out.print(t)
