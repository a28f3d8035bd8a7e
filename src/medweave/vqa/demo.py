"""The VQA part of the demo (called by ``medweave demo``): a small answerer trained on questions
generated from the phantom's recorded truth, answering about phantom pictures it has not seen; and,
when the shared data is present, the VQA-RAD answerer answering about real pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .data import Question, load_vqa, write_vqa
from .features import open_cache
from .model import Answerer, VqaConfig
from .pipeline import CACHE_NAME, ask, train_vqa
from .splits import split_by_images

MAX_PHANTOM_IMAGES = 160
REAL_EXAMPLES = 6
# The demo's VQA-RAD answerer is the smaller configuration (the 224-pixel view only, two ensemble members):
# a third of the picture encoding and half the fit of the default, so that `make demo` stays within ten
# minutes on two cores. `medweave vqa train` and the benchmarks use the default (VqaConfig()).
DEMO_VQA_CONFIG = VqaConfig(views=1, seeds=2)


def phantom_questions(finding: dict | None, cardiomegaly: int, image: str) -> list[Question]:
    """Questions with answers known from the phantom's truth about one picture."""
    present = finding is not None
    qs = [Question("Is there an opacity in the lungs?", image, "yes" if present else "no", "CLOSED", "PRES", "CHEST"),
          Question("Is the heart enlarged?", image, "yes" if cardiomegaly else "no", "CLOSED", "SIZE", "CHEST")]
    if present:
        qs += [Question("Which side is the opacity on?", image, finding["side"], "OPEN", "POS", "CHEST"),
               Question("Is the opacity in the upper or lower lung?", image, finding["zone"], "CLOSED", "POS", "CHEST")]
    return qs


def build_phantom_vqa(store_dir: Path, folder: Path, phantom_dir: Path) -> list[Question]:
    """Write the phantom's pictures (PNG, from the store) and generated questions as a VQA-RAD layout
    folder. The stored paths are de-identified, so pictures are matched to the phantom's files
    through their keyed unit ids (``Store.unit_id``)."""
    from PIL import Image

    from ..demo.phantom import PhantomManifest
    from ..encode.image import window_to_uint8
    from ..encode.loaders import load_array
    from ..store import Store
    from ..store.catalog import read_verified

    manifest_path = Path(phantom_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"{phantom_dir}: no phantom manifest.json")
    manifest = PhantomManifest.load(manifest_path)
    truth = {f"{p.patient_id}_{s.study}": (s.finding, p.cardiomegaly) for p in manifest.patients for s in p.studies}
    with Store(store_dir) as store:
        files = {store.unit_id(p): p for p in manifest.path("images").glob("*.dcm")}
        rows = store.items("modality = 'image'")
    rows = rows[rows["unit_id"].isin(list(files))]
    if rows.empty:
        raise ValueError(f"{store_dir}: no image items of the phantom in {manifest.path('images')}")
    rows = rows.assign(stem=[files[u].stem for u in rows["unit_id"]]).sort_values("stem").head(MAX_PHANTOM_IMAGES)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    questions = []
    for _, row in rows.iterrows():
        stem = row["stem"]
        if stem not in truth:
            continue
        pixels = load_array(Path(row["blob"]), read_verified(store_dir, row["blob"], row["item_id"]))
        Image.fromarray(window_to_uint8(pixels)).save(folder / "images" / f"{stem}.png")
        questions += phantom_questions(*truth[stem], f"{stem}.png")
    return questions


def _answer_table(title: str, model: Answerer, items: list[Question], images: Path, cache) -> tuple[Table, float]:
    t = Table(title=title)
    for c in ("picture", "question", "truth", "answer", "prob", "type"):
        t.add_column(c)
    right = 0
    for q in items:
        r = ask(model, images / q.image, q.question, cache)
        right += r["answer"] == q.norm_answer
        t.add_row(q.image, q.question, q.answer, r["answer"], f"{r['probability']:.2f}", r["type"])
    return t, right / max(1, len(items))


def _examples(held: list[Question]) -> list[Question]:
    """All questions about two pictures with an opacity and one without."""
    per_image: dict[str, list[Question]] = {}
    for q in held:
        per_image.setdefault(q.image, []).append(q)
    with_finding = [qs for qs in per_image.values() if len(qs) > 2][:2]
    without = [qs for qs in per_image.values() if len(qs) <= 2][:1]
    return [q for qs in with_finding + without for q in qs]


def _phantom_part(out_dir: Path, store_dir: Path, console: Console) -> None:
    folder = out_dir / "vqa-phantom"
    questions = build_phantom_vqa(store_dir, folder, out_dir / "phantom")
    train_idx, held_idx = split_by_images([q.image for q in questions], 0.25, seed=0)
    write_vqa(folder / "train.json", [questions[i] for i in train_idx])
    held = [questions[i] for i in held_idx]
    model, meta = train_vqa(folder / "train.json", out_dir / "vqa-phantom-model", VqaConfig(seeds=2, epochs=40),
                            images=folder / "images")
    console.print(f"VQA on phantom pictures (SYNTHETIC): trained on {meta['n_train']} generated questions about "
                  f"{meta['images']} pictures in {meta['train_seconds']:.0f} s; answering about unseen pictures",
                  highlight=False)
    with open_cache(out_dir / "vqa-phantom-model" / CACHE_NAME) as cache:
        shown = _examples(held)
        table, _ = _answer_table("phantom questions (pictures not seen in training)", model, shown,
                                 folder / "images", cache)
        console.print(table)
        _, acc = _answer_table("", model, held, folder / "images", cache)
    console.print(f"  exact-match accuracy on all {len(held)} held-out phantom questions: {acc:.3f}", highlight=False)


def _real_part(out_dir: Path, real_dir: Path, console: Console) -> None:
    model_dir = out_dir / "vqa-rad-model"
    model = None
    if (model_dir / "config.json").is_file():
        try:
            model = Answerer.load(model_dir)
            console.print(f"VQA-RAD (real): reusing the model in {model_dir}", highlight=False)
        except ValueError as exc:  # a model written by an older medweave: train a new one
            console.print(f"VQA-RAD (real): not reusing {model_dir} ({exc}); training again", highlight=False)
    if model is None:
        model, meta = train_vqa(real_dir, model_dir, DEMO_VQA_CONFIG)
        console.print(f"VQA-RAD (real): trained on {meta['n_train']} questions in {meta['train_seconds']:.0f} s "
                      f"-> {model_dir} (the demo's smaller configuration: 224-pixel view, 2 members; "
                      "`medweave vqa train` trains the default)", highlight=False)
    vqa = load_vqa(real_dir)
    pick = np.random.default_rng(0).permutation(len(vqa.questions))[:REAL_EXAMPLES]
    with open_cache(model_dir / CACHE_NAME) as cache:
        table, _ = _answer_table("real VQA-RAD questions (training questions: the model has seen them; "
                                 "see benchmarks/vqa.py for held-out figures)", model,
                                 [vqa.questions[i] for i in pick], vqa.images_dir, cache)
    console.print(table)


def demo_vqa(out_dir: str | Path, phantom_store_dir: str | Path, real_vqa_dir: str | Path | None,
             console: Console) -> int:
    """Answer questions about phantom pictures, and about real VQA-RAD pictures when ``real_vqa_dir`` is given.

    Returns 0, or 1 when a part failed (the failure is printed, the other part still runs).
    """
    out_dir, code = Path(out_dir), 0
    parts = [("phantom", lambda: _phantom_part(out_dir, Path(phantom_store_dir), console))]
    if real_vqa_dir is not None and Path(real_vqa_dir).is_dir():
        parts.append(("VQA-RAD", lambda: _real_part(out_dir, Path(real_vqa_dir), console)))
    for name, part in parts:
        try:
            part()
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            console.print(f"[red]VQA demo ({name}) failed:[/red] {exc}", highlight=False)
            code = 1
    return code
