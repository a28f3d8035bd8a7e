"""Probes for any backend, each reported beside the unprobed score on the same samples.

- ``image``: the same questions with a blank picture, with noise (seeded per picture), and with
  another picture of the same organ (the next picture of that organ in name order; only samples that
  have one, and the unprobed row is over those same samples).
- ``paired`` (ProbMed-style): for each picture, what is known of it (its organ, and its modality and
  plane where a question's answer states them; ``medweave.vqa.facts``, from the task's records and the
  task's ``probes.paired.facts_from`` file) asked once true (answer yes) and once hallucinated (another
  organ/modality/plane, answer no). A pair counts only when both answers are right; random guessing
  gets 25%.
- ``prompt``: the same questions with the instruction suffixes, labels and system prompts that
  evaluators add (``PROMPT_VARIANTS``); each row also gives the share of answers identical to the
  unprobed ones.
- ``fewshot``: in-context examples as earlier turns (an example's picture and question, its answer as
  the assistant's turn), from the other side of the task's split (or, without a split, other samples
  with another picture): one relevant example (same organ and question type, the closest wording),
  one irrelevant one (another organ and question type), and three examples with the relevant one last
  or first (SMMILE: an irrelevant example can cost up to 9.5 points; the relevant one last helps most).

Probe requests go through the same cache as the run (resumable, never sent twice). ``limit`` in a
probe's task options bounds the samples it uses (seeded choice).
"""

from __future__ import annotations

import io
import re
import zlib
from collections import defaultdict
from typing import Any

import numpy as np

from ..generate import ImageData
from .samples import Sample
from .stats import mean_ci

RANDOM_PAIR_ACC = 0.25
PROMPT_VARIANTS: dict[str, tuple[str, str | None]] = {
    # name: (template around the task's prompt, system prompt)
    "single word or phrase": ("{prompt}\nAnswer the question using a single word or phrase.", None),
    "'Question:' ... 'Answer:'": ("Question: {prompt}\nAnswer:", None),
    "instruction first": ("Please answer the question based on the image.\n{prompt}", None),
    "brief, no explanation": ("{prompt}\nAnswer briefly, without explanation.", None),
    "system: expert radiologist": ("{prompt}", "You are an expert radiologist. Answer concisely."),
    "system: LLaVA-Med": ("{prompt}", "You are LLaVA-Med, a large language and vision assistant trained by a "
                          "group of researchers at Microsoft. You are able to understand the visual content "
                          "that the user provides, and assist the user with a variety of medical and clinical "
                          "tasks using natural language."),
}
_WORD = re.compile(r"[a-z0-9]+")


def png(arr: np.ndarray) -> ImageData:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return ImageData(buf.getvalue(), "image/png")


def blank_image() -> np.ndarray:
    return np.zeros((256, 256), dtype=np.uint8)


def noise_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (256, 256), dtype=np.uint8)


def other_same_organ(samples: list[Sample]) -> dict[str, str]:
    """Per picture name, another picture of the samples showing the same organ (next in name order)."""
    by_organ: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        organ = str(s.meta.get("organ") or "")
        if s.image is not None and organ and s.image_name not in by_organ[organ]:
            by_organ[organ].append(s.image_name)
    swap = {}
    for names in by_organ.values():
        names.sort()
        if len(names) > 1:
            for i, n in enumerate(names):
                swap[n] = names[(i + 1) % len(names)]
    return swap


def _limit(samples: list[Sample], opts: dict, seed: int) -> list[Sample]:
    from .harness import select

    return select(samples, int(opts["limit"]) if opts.get("limit") else None, seed)


def _rows(task, ex, variants: dict[str, list], n_boot: int, seed: int, base: str, records_out: list,
          probe: str) -> list[dict[str, Any]]:
    """Score each variant's requests; the first metric's difference to ``base`` and answer agreement."""
    from .harness import sample_record, score_records

    scored = {}
    for name, reqs in variants.items():
        for r in reqs:
            r.variant = f"probe:{probe}:{name}"
        outcomes = ex.run(reqs, f"probe {probe}: {name}")
        recs = [sample_record(task, r, outcomes.get(r.key)) for r in reqs]
        records_out.extend(recs)
        scored[name] = (recs, score_records(task, recs, n_boot, seed))
    first = task.metrics[0]
    base_recs, base_res = scored[base]
    rows = []
    for name, (recs, res) in scored.items():
        same = [a["extracted"] == b["extracted"] for a, b in zip(recs, base_recs)]
        rows.append({"variant": name, "n": res["samples"], "failed": res["failed"], "metrics": res["metrics"],
                     "delta": res["metrics"][first]["value"] - base_res["metrics"][first]["value"],
                     "agreement": float(np.mean(same)) if same else float("nan")})
    return rows


def image_probe(task, ex, samples, opts, n_boot, seed, pictures, records_out) -> dict:
    from .harness import Request, build_messages

    pics = [s for s in samples if s.image is not None]
    if not pics:
        return {"note": "no sample has a picture", "rows": []}
    names = sorted({s.image_name for s in pics})
    noise = {n: png(noise_image(zlib.crc32(n.encode()) + seed)) for n in names}
    blank = png(blank_image())
    swap = other_same_organ(pics)
    path_of = {s.image_name: s.image for s in pics}

    def reqs(subset, image_for) -> list:
        return [Request(s, build_messages(task, s, image=image_for(s), images=pictures)) for s in subset]

    out = {"all": _rows(task, ex, {"real": reqs(pics, lambda s: "sample"), "blank": reqs(pics, lambda s: blank),
                                   "noise": reqs(pics, lambda s: noise[s.image_name])}, n_boot, seed, "real",
                        records_out, "image")}
    swapped = [s for s in pics if s.image_name in swap]
    if swapped:
        def other(s):
            p = path_of[swap[s.image_name]]
            if p not in pictures:
                pictures[p] = ImageData.from_file(p)
            return pictures[p]

        out["same_organ"] = _rows(task, ex, {"real": reqs(swapped, lambda s: "sample"),
                                             "other_same_organ": reqs(swapped, other)}, n_boot, seed, "real",
                                  records_out, "image")
    rows = out["all"] + [r for r in out.get("same_organ", []) if r["variant"] != "real"]
    if "same_organ" in out:
        rows[-1]["baseline"] = next(r for r in out["same_organ"] if r["variant"] == "real")["metrics"]
    return {"rows": rows}


def _fact_records(task, samples: list[Sample], opts: dict) -> list[tuple[str, str, str, str, str]]:
    recs = [(s.image_name, s.question, str(s.meta.get("question_type") or ""), s.reference,
             str(s.meta.get("organ") or "")) for s in samples if s.image is not None]
    src = opts.get("facts_from")
    if src:
        from ..ingest.vqa_json import image_name, load_records

        for r in load_records(task.path(src)):
            recs.append((image_name(r), str(r["question"]), str(r.get("question_type", "") or "").split(",")[0]
                         .strip().upper(), str(r["answer"]), str(r.get("image_organ", "") or "").strip().upper()))
    return recs


def paired_probe(task, ex, samples, opts, n_boot, seed, pictures, records_out) -> dict:
    from ..vqa.facts import hallucinated, picture_facts, probe_question
    from .harness import Request, build_messages, sample_record

    pics = {s.image_name: s for s in samples if s.image is not None}
    facts = picture_facts(_fact_records(task, samples, opts))
    pairs = []
    for name in sorted(pics):
        for kind, value in sorted(facts.get(name, {}).items()):
            base = pics[name]
            qs = [probe_question(kind, value, name, "yes"), probe_question(kind, hallucinated(kind, value, name), name, "no")]
            pairs.append((kind, [Sample(f"{name}:{kind}:{q.answer}", q.question, q.answer, base.image, name, None,
                                        {"answer_type": "CLOSED", "question_type": "PROBE", "organ": base.meta.get("organ")})
                                 for q in qs]))
    if not pairs:
        return {"pairs": 0, "random_pair_acc": RANDOM_PAIR_ACC, "by_kind": {}}
    reqs = [Request(s, build_messages(task, s, images=pictures), variant="probe:paired") for _, ss in pairs for s in ss]
    outcomes = ex.run(reqs, "probe paired")
    recs = [sample_record(task, r, outcomes.get(r.key)) for r in reqs]
    records_out.extend(recs)
    from ..vqa.normalize import normalize_answer

    right = np.array([not r["error"] and normalize_answer(r["extracted"]) == r["reference"] for r in recs])
    true_r, false_r = right[0::2], right[1::2]
    both = true_r & false_r
    kinds = np.array([k for k, _ in pairs])
    clusters = [ss[0].image_name for _, ss in pairs]

    def summary(sel) -> dict:
        return {"pairs": int(sel.sum()), "pair_acc": mean_ci(both[sel], np.array(clusters)[sel], n_boot, seed),
                "true_acc": float(true_r[sel].mean()), "false_acc": float(false_r[sel].mean())}

    by_kind = {k: summary(kinds == k) for k in sorted(set(kinds))}
    by_kind["all"] = summary(np.ones(len(pairs), dtype=bool))
    return {"pairs": len(pairs), "random_pair_acc": RANDOM_PAIR_ACC, "by_kind": by_kind,
            "failed": sum(1 for r in recs if r["error"])}


def prompt_probe(task, ex, samples, opts, n_boot, seed, pictures, records_out) -> dict:
    from .harness import Request, build_messages

    variants = {"task prompt": [Request(s, build_messages(task, s, images=pictures)) for s in samples]}
    for name, (wrap, system) in PROMPT_VARIANTS.items():
        if not any(s.image for s in samples):  # a text task: no image to speak of
            wrap = wrap.replace(" based on the image", "")
        template = wrap.replace("{prompt}", task.prompt)
        variants[name] = [Request(s, build_messages(task, s, template=template,
                                                    system=system if system else "task", images=pictures))
                          for s in samples]
    return {"rows": _rows(task, ex, variants, n_boot, seed, "task prompt", records_out, "prompt")}


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def fewshot_pool(task, samples: list[Sample]) -> list[Sample]:
    """Examples for in-context turns: the other side of the task's split, else the samples themselves."""
    if task.split is not None:
        other = task.model_copy(update={"split": task.split.model_copy(
            update={"side": "train" if task.split.side == "held" else "held"})})
        return [s for s in other.load_samples() if s.error is None]
    return [s for s in samples if s.error is None]


def fewshot_probe(task, ex, samples, opts, n_boot, seed, pictures, records_out) -> dict:
    from .harness import Request, build_messages

    pool = fewshot_pool(task, samples)
    rng = np.random.default_rng(seed)
    pool_words = [_words(p.question) for p in pool]
    chosen: dict[str, tuple[Sample, list[Sample]]] = {}
    for s in samples:
        organ, qtype = s.meta.get("organ"), s.meta.get("question_type")
        others = [i for i, p in enumerate(pool) if p.image_name != s.image_name or not s.image_name]
        others = [i for i in others if pool[i].id != s.id]
        w = _words(s.question)
        rel = [i for i in others if pool[i].meta.get("organ") == organ and pool[i].meta.get("question_type") == qtype
               and pool[i].closed == s.closed] or others
        irr = [i for i in others if pool[i].meta.get("organ") != organ and pool[i].meta.get("question_type") != qtype] \
            or [i for i in others if pool[i].meta.get("question_type") != qtype] or others
        if not rel or len(irr) < 2:
            continue
        best = max(rel, key=lambda i: (len(w & pool_words[i]) / max(len(w | pool_words[i]), 1), -i))
        picks = rng.choice(len(irr), size=2, replace=False)
        chosen[s.id] = (pool[best], [pool[irr[int(j)]] for j in picks])
    kept = [s for s in samples if s.id in chosen]
    if not kept:
        return {"note": "no in-context examples could be chosen", "rows": []}

    def shots(ex_list):
        return [(e, e.reference) for e in ex_list]

    def variant(pick):
        return [Request(s, build_messages(task, s, shots=shots(pick(*chosen[s.id])), images=pictures)) for s in kept]

    variants = {"zero-shot": variant(lambda r, i: []), "1 relevant": variant(lambda r, i: [r]),
                "1 irrelevant": variant(lambda r, i: [i[0]]),
                "3, relevant last": variant(lambda r, i: [i[0], i[1], r]),
                "3, relevant first": variant(lambda r, i: [r, i[0], i[1]])}
    return {"rows": _rows(task, ex, variants, n_boot, seed, "zero-shot", records_out, "fewshot"),
            "pool": len(pool)}


PROBE_FUNCTIONS = {"image": image_probe, "paired": paired_probe, "prompt": prompt_probe, "fewshot": fewshot_probe}


def run_probes(task, ex, samples: list[Sample], names: list[str], n_boot: int, seed: int,
               pictures: dict, limit: int | None = None) -> tuple[dict[str, Any], list[dict]]:
    """The named probes on the run's samples (those that could be asked); (tables, per-request records)."""
    from .tasks import PROBES

    bad = [n for n in names if n not in PROBES]
    if bad:
        from .samples import TaskError

        raise TaskError(f"unknown probe {bad[0]!r}; allowed values: {', '.join(PROBES)}")
    ok = [s for s in samples if s.error is None]
    tables, records = {}, []
    for name in names:
        opts = {**task.probes.get(name, {}), **({"limit": limit} if limit else {})}
        tables[name] = PROBE_FUNCTIONS[name](task, ex, _limit(ok, opts, seed), opts, n_boot, seed, pictures, records)
    return tables, records
