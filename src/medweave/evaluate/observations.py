"""A rule-based labeller of the 14 CheXpert observations in radiology text, with negation and
uncertainty, and the observation F1 it gives to drafts.

No CheXbert or RadGraph weights can be had offline, so this is written by hand in the NegEx manner
(Chapman et al. 2001; the CheXpert labeller's mention → negation → uncertainty stages, Irvin et al.
2019). It is **not** CheXbert: its scores are reported as ``obs_f1_rules_*``, never as "F1-CheXbert".

How a text is labelled:

1. The text is split into sentences, each sentence into clauses at terminators (``but``,
   ``however``, ``otherwise``, ``although``, ``except``, ``;``, ``which``, ``with the exception of``).
2. Mentions: each observation has regular expressions for what names it (``MENTIONS``), and some
   for phrases that deny it outright (``NEGATIVE_PHRASES``, e.g. "heart size is normal" → no
   cardiomegaly). Where several observations match the same words, the more specific keeps them
   (``pneumothorax`` is not an effusion; "airspace consolidation" is consolidation, not opacity).
3. A mention is **negative** when a negation cue (``no``, ``without``, ``negative for``, ``free of``,
   ``clear of``, ``resolved``, ``no evidence of``, ``rule out``...) stands before it in its clause
   (the cue's scope runs to the clause end), or a post-negation (``is not seen``, ``has resolved``,
   ``are absent``) follows it in its clause. It is **uncertain** when an uncertainty cue (``may``,
   ``possible``, ``cannot be excluded``, ``versus``, ``suggest``, ``likely``, ``concerning for``,
   ``questionable``...) shares its clause and no negation applies, or a hedged negation
   (``cannot exclude``, ``not ruled out``) does. Otherwise it is **positive**.
4. Per observation, over all its mentions: positive beats uncertain beats negative (a report that
   says "no effusion on the left, small effusion on the right" has an effusion).
5. ``No Finding`` is positive when none of the other observations except ``Support Devices`` is
   positive or uncertain (the CheXpert convention).

Labels: 1 positive, -1 uncertain, 0 negative, absent from the dict = not mentioned.

``observation_f1`` scores drafts against references: each observation is present when labelled
positive *or uncertain* (uncertain counts as present) and absent otherwise; the scores are
micro-averaged F1 over all 14 observations (``obs_f1_rules_micro14``), over the five common ones
(Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion: ``obs_f1_rules_micro5``), and
macro-averaged over the observations present in any reference (``obs_f1_rules_macro14``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
COMMON5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

# What names each observation (case-insensitive regular expressions, matched on word boundaries).
MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"(?:enlarged|widened|widening of the|prominent) (?:cardio)?mediastin\w*",
        r"(?:cardio)?mediastinal (?:silhouette|contours?) (?:is |are )?(?:mildly |moderately |markedly )?"
        r"(?:enlarged|widened|prominent)",
        r"mediastin\w* (?:is |are )?(?:mildly |moderately |markedly )?(?:enlarged|widened|widening)",
        r"mediastinal widening", r"widened mediastinum",
    ),
    "Cardiomegaly": (
        r"cardiomegaly", r"cardiac enlargement", r"enlarged (?:heart|cardiac (?:silhouette|shadow|size))",
        r"(?:heart|cardiac silhouette|cardiac shadow|heart size|cardiac size)(?: is| are)?(?: again)?"
        r"(?: mildly| moderately| markedly| slightly| borderline| significantly)? (?:enlarged|increased|large)",
        r"(?:mildly|moderately|markedly|borderline) enlarged (?:heart|cardiac)",
        r"(?:heart|cardiac) size (?:is )?(?:at the )?upper limits? of normal",
        r"(?:cardiomediastinal|cardiac) silhouette (?:is )?(?:mildly |moderately )?enlarged",
    ),
    "Lung Lesion": (
        r"nodules?", r"nodular (?:opacit\w+|densit\w+|lesions?)", r"mass(?:es)?", r"tumou?rs?", r"lesions?",
        r"neoplas\w*", r"carcinoma", r"metasta\w*", r"malignan\w*", r"cavitary", r"cavitation",
    ),
    "Lung Opacity": (
        r"opacit(?:y|ies)", r"opacification", r"densit(?:y|ies)", r"infiltrates?", r"infiltration",
        r"air ?space (?:disease|opacit\w+)", r"haziness", r"hazy", r"interstitial (?:markings?|prominence|"
        r"opacit\w+|disease|pattern|thickening|changes?)", r"reticular\w*", r"ground[- ]glass",
        r"increased (?:lung )?markings",
    ),
    "Edema": (
        r"edema", r"(?:pulmonary |vascular |interstitial )congestion", r"heart failure", r"\bchf\b",
        r"congestive", r"(?:pulmonary )?vascular (?:prominence|engorgement|redistribution)",
        r"cephalization", r"kerley",
    ),
    "Consolidation": (r"consolidat\w*",),
    "Pneumonia": (
        r"pneumonias?", r"bronchopneumonia", r"pneumonitis", r"infectio\w*", r"infectious", r"aspiration",
    ),
    "Atelectasis": (r"atelecta\w*", r"collapse[sd]?", r"volume loss"),
    "Pneumothorax": (r"pneumothora\w*", r"hydropneumothora\w*"),
    "Pleural Effusion": (
        r"(?:pleural )?effusions?", r"pleural fluid", r"hydrothorax", r"hydropneumothora\w*",
        r"(?:blunting of the |blunted |blunting )(?:left |right |bilateral |both )?costophrenic",
        r"costophrenic (?:angles? |sulc\w+ |recess\w* )?(?:\w+ )?blunting",
        r"costophrenic (?:angles? |sulc\w+ )?(?:are |is )?blunted",
    ),
    "Pleural Other": (
        r"pleural (?:thickening|plaques?|scarring|calcification\w*|based|parenchymal scarring)",
        r"fibrothorax", r"pleural[- ]parenchymal",
    ),
    "Fracture": (r"fractur\w*",),
    "Support Devices": (
        r"pacemaker", r"pacer", r"catheters?", r"picc", r"(?:central|venous|jugular|subclavian) line",
        r"(?:chest|endotracheal|et|nasogastric|ng|feeding|tracheostomy|enteric) tubes?", r"tracheostomy",
        r"port[- ]?a[- ]?cath", r"mediport", r"(?:infusion|chest) port", r"stents?", r"\bicd\b",
        r"defibrillator", r"(?:cardiac )?(?:valve replacement|prosthetic valve)", r"leads?\b",
        r"(?:spinal|nerve) stimulator", r"drains?\b", r"devices?", r"\bcvc\b", r"shunt(?: tubing)?",
        r"tubing", r"hardware", r"(?:internal )?fixation", r"prosthe\w+", r"bone anchor",
    ),
}

# Phrases that deny an observation outright (they do not name it, but report it absent).
NEGATIVE_PHRASES: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        r"(?:heart|cardiac)(?: size| silhouette| shadow)?(?: and \w+(?: \w+)?)? (?:is |are |appears |appear |"
        r"remains? )?(?:grossly )?(?:normal|within normal limits|unremarkable|not enlarged|stable in size)",
        r"normal (?:heart|cardiac) (?:size|silhouette)", r"(?:heart|cardiac) size normal",
    ),
    "Enlarged Cardiomediastinum": (
        r"(?:cardio)?mediastin\w*(?: silhouette| contours?)?(?: and \w+(?: \w+)?)? (?:is |are |appears |"
        r"appear |remains? )?(?:grossly )?(?:normal|within normal limits|unremarkable|stable)",
        r"normal (?:cardio)?mediastin\w*",
    ),
    "Lung Opacity": (r"lungs? (?:are |is |appear |remain )?(?:grossly )?clear", r"clear lungs?"),
}

# Words that look like a mention but are not one (kept out before mentions are read).
NOT_MENTIONS: tuple[str, ...] = (
    r"granulomatous (?:disease|infection|process|change\w*)", r"(?:prior|previous|old|remote|healed) "
    r"(?:granulomatous )?(?:infection|infectious process)", r"sequelae of (?:prior |previous )?\w+ infection",
)

# More specific observations keep the words they share with less specific ones.
_SPECIFIC_FIRST = ("Pneumothorax", "Pleural Other", "Pleural Effusion", "Consolidation", "Pneumonia",
                   "Atelectasis", "Edema", "Cardiomegaly", "Enlarged Cardiomediastinum", "Lung Lesion",
                   "Fracture", "Support Devices", "Lung Opacity")

PRE_NEGATION = (
    r"no", r"not", r"without", r"negative for", r"free of", r"clear of", r"no evidence of", r"no sign of",
    r"no signs of", r"absence of", r"absent", r"rule out", r"ruled out", r"resolution of", r"resolved",
    r"removal of", r"removed", r"never", r"nor", r"neither", r"no definite", r"no new", r"no focal",
    r"no acute", r"exclude[sd]?", r"nothing to suggest", r"no radiographic evidence of", r"no findings of",
    r"no typical findings of", r"clearing of", r"interval resolution of",
)
POST_NEGATION = (
    r"(?:is|are|was|were) not (?:seen|identified|present|visualized|demonstrated|appreciated|noted|evident)",
    r"(?:has|have) resolved", r"(?:is|are) (?:no longer|absent)", r"not (?:seen|identified|present|visualized)",
    r"resolved", r"(?:has|have) been removed",
)
UNCERTAINTY = (
    r"may", r"might", r"could", r"possibl[ey]", r"probabl[ey]", r"likely", r"questionabl[ey]", r"suspect\w*",
    r"suspicious", r"concerning", r"concern for", r"suggest\w*", r"versus", r"vs\.?", r"cannot be excluded",
    r"cannot exclude", r"can not be excluded", r"not excluded", r"not entirely excluded",
    r"not be excluded", r"differential", r"consider", r"equivocal", r"borderline", r"indeterminate",
    r"representing", r"represents?", r"presumably", r"presumed", r"favou?r\w*", r"compatible with",
    r"consistent with", r"worrisome", r"question of", r"or\b", r"vs\b",
)
# Uncertainty cues that make the label uncertain only when they come before the mention
# ("consistent with pneumonia", "atelectasis or scarring" is still atelectasis... but uncertain).
TERMINATORS = (
    r"but", r"however", r"otherwise", r"although", r"though", r"except", r"aside from", r"apart from",
    r"which", r"with the exception of", r"other than", r"given", r"and there is", r"there is", r"there are",
)

_FLAGS = re.IGNORECASE


def _alt(patterns: Iterable[str]) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")\b", _FLAGS)


_MENTION_RE = {k: _alt(v) for k, v in MENTIONS.items()}
_NEGPHRASE_RE = {k: _alt(v) for k, v in NEGATIVE_PHRASES.items()}
_NOT_MENTION_RE = _alt(NOT_MENTIONS)
_PRE_NEG_RE = _alt(PRE_NEGATION)
_POST_NEG_RE = _alt(POST_NEGATION)
_UNCERTAIN_RE = _alt([u for u in UNCERTAINTY if u not in ("consistent with", "compatible with")])
# Uncertainty that looks like negation ("cannot exclude"): read before the negation cues.
_HEDGED_NEG_RE = _alt((r"cannot (?:be )?exclude[d]?", r"can not (?:be )?exclude[d]?", r"not (?:be )?(?:entirely )?excluded",
                       r"cannot (?:be )?ruled? out", r"not (?:be )?ruled out"))
_TERM_RE = re.compile(r"(?:;|,\s*(?=(?:but|however|otherwise|although|which)\b)|\b(?:" + "|".join(TERMINATORS)
                      + r")\b)", _FLAGS)
_SENT_RE = re.compile(r"(?<=[.!?])\s+|\n+|(?<=\.)(?=[A-Z])|\s+(?=\d+\.\s)")


def sentences(text: str) -> list[str]:
    """Sentences of a report (splits at sentence ends, line breaks and numbered items "2. ")."""
    parts = _SENT_RE.split(text or "")
    return [p.strip() for p in parts if p and p.strip()]


def _clauses(sentence: str) -> list[str]:
    out, start = [], 0
    for m in _TERM_RE.finditer(sentence):
        out.append(sentence[start:m.start()])
        start = m.start()  # the terminator begins the next clause (its cue words stay out of this one)
    out.append(sentence[start:])
    return [c for c in out if c.strip()]


@dataclass(frozen=True)
class Mention:
    observation: str
    label: int  # 1 positive, -1 uncertain, 0 negative
    text: str  # the words that named it
    clause: str


def mentions(text: str) -> list[Mention]:
    """Every observation mention in ``text`` with its label (see the module docstring)."""
    found: list[Mention] = []
    for sent in sentences(text):
        for clause in _clauses(sent):
            taken: list[tuple[int, int]] = [m.span() for m in _NOT_MENTION_RE.finditer(clause)]
            for obs in ("Cardiomegaly", "Enlarged Cardiomediastinum", "Lung Opacity"):
                for m in _NEGPHRASE_RE[obs].finditer(clause):
                    found.append(Mention(obs, 0, m.group(0), clause))
                    taken.append(m.span())
            for obs in _SPECIFIC_FIRST:
                for m in _MENTION_RE[obs].finditer(clause):
                    s, e = m.span()
                    if any(s < te and ts < e for ts, te in taken):
                        continue
                    taken.append((s, e))
                    found.append(Mention(obs, _assert(clause, s, e), m.group(0), clause))
    return found


def _assert(clause: str, start: int, end: int) -> int:
    before, after = clause[:start], clause[end:]
    if _HEDGED_NEG_RE.search(before) or _HEDGED_NEG_RE.search(after):
        return -1
    if _PRE_NEG_RE.search(before) or _POST_NEG_RE.search(after):
        return 0
    if _UNCERTAIN_RE.search(before) or _UNCERTAIN_RE.search(after):
        return -1
    return 1


def label(text: str) -> dict[str, int]:
    """The CheXpert-14 labels of one text: {observation: 1 | -1 | 0}; unmentioned ones are left out."""
    out: dict[str, int] = {}
    rank = {1: 3, -1: 2, 0: 1}
    for m in mentions(text):
        if m.observation not in out or rank[m.label] > rank[out[m.observation]]:
            out[m.observation] = m.label
    if not any(v in (1, -1) for k, v in out.items() if k != "Support Devices"):
        out["No Finding"] = 1
    return out


def present_matrix(texts: Sequence[str]) -> np.ndarray:
    """(len(texts), 14) 0/1: an observation is present when labelled positive or uncertain."""
    y = np.zeros((len(texts), len(OBSERVATIONS)), dtype=np.int8)
    for i, t in enumerate(texts):
        lab = label(t)
        for j, obs in enumerate(OBSERVATIONS):
            y[i, j] = int(lab.get(obs, 0) != 0)
    return y


def _f1(tp: float, fp: float, fn: float) -> float:
    d = 2 * tp + fp + fn
    return float(2 * tp / d) if d else float("nan")


def f1_from_matrices(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """The three observation F1 scores from present matrices (rows = reports)."""
    tp = (pred & ref).sum(0).astype(float)
    fp = (pred & (1 - ref)).sum(0).astype(float)
    fn = ((1 - pred) & ref).sum(0).astype(float)
    c5 = [OBSERVATIONS.index(o) for o in COMMON5]
    seen = ref.sum(0) > 0
    macro = [_f1(tp[j], fp[j], fn[j]) for j in range(len(OBSERVATIONS)) if seen[j]]
    return {
        "obs_f1_rules_micro14": _f1(tp.sum(), fp.sum(), fn.sum()),
        "obs_f1_rules_micro5": _f1(tp[c5].sum(), fp[c5].sum(), fn[c5].sum()),
        "obs_f1_rules_macro14": float(np.mean(macro)) if macro else float("nan"),
    }


def observation_f1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Observation F1 of drafts against references, by the rule labeller (see the module docstring)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return f1_from_matrices(present_matrix(predictions), present_matrix(references))


# --- validation against the MeSH terms of the Open-i (IU) reports ----------------------------------

# The first component of an Open-i MeSH "major" term -> the CheXpert observation it states.
MESH_TO_OBSERVATION: dict[str, str] = {
    "Cardiomegaly": "Cardiomegaly", "Opacity": "Lung Opacity", "Airspace Disease": "Lung Opacity",
    "Density": "Lung Opacity", "Infiltrate": "Lung Opacity", "Nodule": "Lung Lesion", "Mass": "Lung Lesion",
    "Pulmonary Edema": "Edema", "Pulmonary Congestion": "Edema", "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia", "Pulmonary Atelectasis": "Atelectasis", "Pneumothorax": "Pneumothorax",
    "Pleural Effusion": "Pleural Effusion", "Fractures, Bone": "Fracture",
    "Catheters, Indwelling": "Support Devices", "Implanted Medical Device": "Support Devices",
    "Medical Device": "Support Devices", "Tube, Inserted": "Support Devices", "Stents": "Support Devices",
    "Pacemaker, Artificial": "Support Devices",
}


def mesh_observations(terms: Sequence[str]) -> set[str] | None:
    """The observations a report's MeSH major terms state, or None for "No Indexing".

    ``Thickening/pleura...`` is Pleural Other, ``Mediastinum/enlarged|widened`` Enlarged
    Cardiomediastinum; No Finding when no term maps to one of the 13 findings besides Support Devices
    (the labeller's own No Finding rule, so both sides mean the same)."""
    if any(t.strip() == "No Indexing" for t in terms):
        return None
    out: set[str] = set()
    for t in terms:
        parts = [p.strip() for p in t.split("/")]
        head = parts[0]
        if head in MESH_TO_OBSERVATION:
            out.add(MESH_TO_OBSERVATION[head])
        if head == "Thickening" and any("pleura" in p.lower() for p in parts[1:]):
            out.add("Pleural Other")
        if head == "Mediastinum" and any(p.lower() in ("enlarged", "widened") for p in parts[1:]):
            out.add("Enlarged Cardiomediastinum")
    if not out - {"Support Devices"}:
        out.add("No Finding")
    return out


def agreement(texts: Sequence[str], truth: Sequence[set[str]]) -> dict[str, dict[str, float]]:
    """Per observation (and ``micro``): n, precision, recall and F1 of the labeller's present
    observations (positive or uncertain) against sets of true observations."""
    pred = present_matrix(texts)
    ref = np.array([[int(o in t) for o in OBSERVATIONS] for t in truth], dtype=np.int8).reshape(-1, len(OBSERVATIONS))
    out = {}
    for j, o in enumerate([*OBSERVATIONS, "micro"]):
        p, r = (pred, ref) if o == "micro" else (pred[:, j], ref[:, j])
        tp, fp, fn = float((p & r).sum()), float((p & (1 - r)).sum()), float(((1 - p) & r).sum())
        out[o] = {"n": int(r.sum()), "precision": tp / (tp + fp) if tp + fp else float("nan"),
                  "recall": tp / (tp + fn) if tp + fn else float("nan"), "f1": _f1(tp, fp, fn)}
    return out
