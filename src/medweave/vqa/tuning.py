"""Fine-tuning the picture encoder on a VQA set's training side (``VqaConfig.finetune_blocks``).

The image-only heads learn what the answers say about each picture, so the encoder learns exactly what
the answerer's weak question types need: the organ (``image_organ``), the modality and the plane (from
the answers of MODALITY / PLANE questions, ``facts.picture_facts``), and a multi-label head over the open
answers given about the picture (those given about at least ``min_pictures`` pictures). Only the
training side's questions are read, so no held-out answer leaks into the encoder.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from ..encode.finetune import FinetuneConfig, FinetuneResult, PictureTargets, finetune
from .data import VqaSet, read_image
from .facts import picture_facts, question_records


def picture_targets(vqa: VqaSet, max_answers: int = 300, min_pictures: int = 3) -> tuple[list[str], PictureTargets]:
    """(picture names, their targets) from a set's questions."""
    names = vqa.image_names()
    row = {n: i for i, n in enumerate(names)}
    facts = picture_facts(question_records(vqa.questions))
    organ = defaultdict(Counter)
    said = defaultdict(set)
    for q in vqa.questions:
        if q.organ:
            organ[q.image][q.organ] += 1
        if not q.closed and q.norm_answer:
            said[q.image].add(q.norm_answer)
    single = {}
    kinds = {"organ": {n: c.most_common(1)[0][0] for n, c in organ.items()},
             **{k: {n: f[k] for n, f in facts.items() if k in f} for k in ("modality", "plane")}}
    for kind, values in kinds.items():
        classes = sorted(set(values.values()))
        if len(classes) < 2:
            continue
        y = np.full(len(names), -1, dtype=np.int64)
        for n, v in values.items():
            y[row[n]] = classes.index(v)
        single[kind] = (y, classes)
    counts = Counter(a for s in said.values() for a in s)
    multi_names = [a for a, c in counts.most_common(max_answers) if c >= min_pictures]
    col = {a: j for j, a in enumerate(multi_names)}
    multi = np.zeros((len(names), len(multi_names)), dtype=np.float32)
    for n, answers in said.items():
        for a in answers:
            if a in col:
                multi[row[n], col[a]] = 1.0
    return names, PictureTargets(single, multi, multi_names)


def finetune_for_set(vqa: VqaSet, cfg) -> FinetuneResult:
    """Fine-tune the 224 view's last ``cfg.finetune_blocks`` blocks on a set's pictures and answers."""
    names, targets = picture_targets(vqa)
    pictures = [read_image(vqa.image_path(n)) for n in names]
    ft = FinetuneConfig(blocks_tuned=cfg.finetune_blocks, epochs=cfg.finetune_epochs,
                        augmentations=cfg.finetune_augmentations, threads=cfg.threads)
    result = finetune(pictures, targets, ft)
    result.heads = {k: v[1] for k, v in targets.single.items()} | {"answers": len(targets.multi_names)}
    return result
