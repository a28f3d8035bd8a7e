"""The evidence-based workflow against each single tool alone, on the same cases.

Prints one table per set: accuracy (95% bootstrap interval) and AUROC (interval) on the measured
cases, coverage (share answered; the workflow abstains when its rollouts disagree), tool calls
(steps) per case and seconds per case. Every decider is fitted on cases other than the measured
ones (the validation split, or half of the new images); a single tool is scored through the same
logistic decider fitted on its own value alone, so the comparison is like for like.

- phantom: a synthetic cohort (the demo's generator), fusion model, phantom VQA model trained on the
  training patients' pictures only; question "does this patient have the disease?" on the test split.
- nih: NIH ChestX-ray14 (800), abnormal vs normal; the fusion model (image + age, sex, view) trained
  on the source's train folder, the workflow fitted on half of the source's valid folder (new images)
  and measured on the other half (patients apart).
- vqa-rad: closed questions about VQA-RAD pictures held out of training (image split, 15%): the VQA
  tool asked once against the workflow asking it in three phrasings (rollouts), majority answer,
  abstaining when the phrasings disagree.
- LLM planner / decider (SmolLM2-135M through llama.cpp) beside the fixed plan / weighted decider on a
  few cases, when llama-cpp-python and the GGUF are installed (`make setup`).

    .venv/bin/python benchmarks/agent.py                       # phantom (nih, vqa-rad when the data is there)
    .venv/bin/python benchmarks/agent.py --sets phantom --patients 160 --llm-cases 6
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

from medweave.agents.tools import Toolbox
from medweave.agents.workflow import Runner, features, fixed_plan, parse_workflow, summarise

REPO = Path(__file__).resolve().parents[1]


def auroc_ci(y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    from sklearn.metrics import roc_auc_score

    from medweave.evaluate.metrics import bootstrap_ci

    keep = ~np.isnan(p)
    y, p = y[keep], p[keep]
    if len(np.unique(y)) < 2:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": int(len(y))}
    lo, hi = bootstrap_ci(y, p, roc_auc_score, True, n_boot, seed)
    return {"value": float(roc_auc_score(y, p)), "lo": lo, "hi": hi, "n": int(len(y))}


def fmt(v: dict | None) -> str:
    if not v or v.get("value") is None or v["value"] != v["value"]:
        return "-"
    return f"{v['value']:.3f} [{v['lo']:.2f}, {v['hi']:.2f}]"


def gather(runner: Runner, ids: list[str]) -> tuple[dict, dict]:
    """Evidence values and seconds per tool for each case (fixed plan, once)."""
    values, secs = {}, {}
    for cid in ids:
        v, steps = fixed_plan(runner.wf, runner.tb, cid, list(range(len(runner.wf.evidence))))
        values[cid] = v
        secs[cid] = {s["evidence"]: s["seconds"] for s in steps}
    return values, secs


def compare(title: str, wf_data: dict, tb: Toolbox, fit_ids: list[str], test_ids: list[str], n_boot: int,
            llm_cases: int) -> dict:
    from medweave.agents.workflow import WeightedDecider

    wf = parse_workflow(wf_data)
    runner = Runner(wf, tb)
    t0 = time.perf_counter()
    fit_vals, _ = gather(runner, fit_ids)
    runner.fit(case_ids=fit_ids, values=fit_vals)
    print(f"  evidence gathered on {len(fit_ids)} fitting cases in {time.perf_counter() - t0:.0f} s; weights: "
          + ", ".join(f"{k} {v:+.2f}" for k, v in runner.decider.info["weights"].items()), flush=True)
    y = np.array([int(runner.truth(c)) for c in test_ids])
    test_vals, test_secs = gather(runner, test_ids)
    rows = {}
    for ev in wf.evidence:  # each tool alone, through a decider fitted on its value alone
        single = parse_workflow({**wf_data, "evidence": [ev.model_dump()], "rollouts": {"n": 1}})
        dec = WeightedDecider(single).fit(np.array([features(single, {ev.name: fit_vals[c][ev.name]}) for c in fit_ids]),
                                          np.array([int(runner.truth(c)) for c in fit_ids]))
        p = np.array([dec.decide({ev.name: test_vals[c][ev.name]}, 0)[1] for c in test_ids])
        raw = np.array([np.nan if test_vals[c][ev.name] is None else test_vals[c][ev.name] for c in test_ids])
        recs = [{"truth": "yes" if t else "no", "majority": "yes" if q >= 0.5 else "no", "abstained": False,
                 "answer": "yes" if q >= 0.5 else "no", "steps": 1, "seconds": test_secs[c][ev.name], "agreement": 1.0}
                for c, t, q in zip(test_ids, y, p)]
        s = summarise(recs, n_boot)
        rows[f"{ev.name} alone ({ev.tool})"] = {"accuracy": s["accuracy_all"], "auroc": auroc_ci(y, raw, n_boot),
                                               "coverage": 1.0, "accuracy_answered": s["accuracy_all"],
                                               "steps": 1.0, "seconds": s["seconds_per_case"]}
    res = runner.run(test_ids)
    s = res["summary"]
    p = np.array([r["probability"] for r in res["records"]])
    rows[f"workflow: fixed plan + weighted, {wf.rollouts.n} rollouts"] = {
        "accuracy": s["accuracy_all"], "auroc": auroc_ci(y, p, n_boot), "coverage": s["coverage"]["value"],
        "accuracy_answered": s["accuracy_answered"], "steps": s["steps_per_case"], "seconds": s["seconds_per_case"]}
    rows.update(llm_rows(wf_data, tb, fit_ids, fit_vals, test_ids[:llm_cases], n_boot))
    print(f"\n{title}: {len(test_ids)} measured cases ({int(y.sum())} positive), deciders fitted on {len(fit_ids)}")
    head = (f"{'method':58s} {'accuracy (all)':>20s} {'AUROC':>20s} {'coverage':>8s} {'acc. answered':>20s} "
            f"{'steps/case':>10s} {'s/case':>7s}")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        print(f"{name:58s} {fmt(r['accuracy']):>20s} {fmt(r['auroc']):>20s} {r['coverage']:8.2f} "
              f"{fmt(r['accuracy_answered']):>20s} {r['steps']:10.1f} {r['seconds']:7.2f}", flush=True)
    return {"rows": rows, "weights": runner.decider.info}


def llm_rows(wf_data: dict, tb: Toolbox, fit_ids, fit_vals, ids: list[str], n_boot: int) -> dict:
    """SmolLM2 as planner (weighted decider) and as decider (fixed plan), on ``ids``."""
    from medweave.generate.testing import llama_cpp_available, smollm2_gguf

    gguf = smollm2_gguf()
    if not ids:
        return {}
    if not llama_cpp_available() or gguf is None:
        print("  LLM planner/decider: not measured (llama-cpp-python or the SmolLM2 GGUF absent; `make setup`)")
        return {}
    backend = {"kind": "llama-cpp", "options": {"model": str(gguf), "n_ctx": 2048}, "max_tokens": 48}
    from medweave.generate import load_backend

    llm = load_backend("llama-cpp", model=str(gguf), n_ctx=2048)
    out = {}
    for name, change in ((f"LLM planner (SmolLM2) + weighted, {len(ids)} cases",
                          {"planner": {"kind": "llm", "backend": backend, "max_steps": 4}}),
                         (f"fixed plan + LLM decider (SmolLM2), {len(ids)} cases",
                          {"decider": {"kind": "llm", "backend": backend}})):
        wf = parse_workflow({**wf_data, **change})
        runner = Runner(wf, tb, planner_llm=llm if wf.planner.kind == "llm" else None,
                        decider_llm=llm if wf.decider.kind == "llm" else None)
        if wf.decider.kind == "weighted":
            runner.fit(case_ids=fit_ids, values=fit_vals)
        res = runner.run(ids)
        s = res["summary"]
        y = np.array([int(runner.truth(c)) for c in ids])
        p = np.array([np.nan if r["probability"] is None else r["probability"] for r in res["records"]])
        out[name] = {"accuracy": s["accuracy_all"], "auroc": auroc_ci(y, p, n_boot) if wf.decider.kind == "weighted"
                     else None, "coverage": s["coverage"]["value"], "accuracy_answered": s["accuracy_answered"],
                     "steps": s["steps_per_case"], "seconds": s["seconds_per_case"]}
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
        return compare(f"Phantom ({patients} patients, SYNTHETIC), target disease", PHANTOM_WORKFLOW, tb, fit_ids,
                       test_ids, n_boot, llm_cases)
    finally:
        tb.close()


NIH_WORKFLOW = {
    "name": "nih-abnormal", "question": "Is this chest radiograph abnormal?", "target": "abnormal",
    "evidence": [
        {"name": "fusion model", "tool": "predict", "arguments": {"explain": False}, "value": "heads.abnormal"},
        {"name": "similar cases", "tool": "similar_cases", "arguments": {"modality": "image", "k": 15},
         "value": "mean(similar.*.targets.abnormal)"}],
    "decider": {"kind": "weighted", "fit_on": "valid"}, "rollouts": {"n": 3, "abstain_below": 0.67}, "timeout_s": 120,
}


def nih(work: Path, n_boot: int, llm_cases: int, limit: int | None) -> dict | None:
    from medweave.config import load_config
    from medweave.settings import shared_data_dir
    from medweave.train.pipeline import train_experiment

    if not (shared_data_dir() / "nih-cxr14-800").is_dir():
        print("NIH: skipped (no nih-cxr14-800 under MEDWEAVE_DATA)")
        return None
    model = work / "nih" / "model"
    if not (model / "config.json").exists():
        cfg = load_config(REPO / "configs" / "nih-cxr14.toml")
        train_experiment(cfg, model, progress=True)
    tb = Toolbox(model=model, log=False)
    runner = Runner(parse_workflow(NIH_WORKFLOW), tb)
    new = runner.cases("valid")  # the source's valid folder: images the model was not trained on
    half = {c: int(hashlib.sha256(str(tb.ctx.cohort.table["patient_id"].iloc[tb.ctx.row(c)]).encode()).hexdigest(), 16) % 2
            for c in new}
    fit_ids, test_ids = [c for c in new if half[c] == 0], [c for c in new if half[c] == 1]
    if limit:
        fit_ids, test_ids = fit_ids[:limit], test_ids[:limit]
    try:
        return compare("NIH ChestX-ray14 (800), abnormal vs normal, new images", NIH_WORKFLOW, tb, fit_ids, test_ids,
                       n_boot, llm_cases)
    finally:
        tb.close()


PARAPHRASES = ("{q}", "Looking at this image, {lq}", "Regarding the picture shown, {lq}")


def vqa_rad(work: Path, n_boot: int, limit: int | None) -> dict | None:
    """Closed questions about held-out VQA-RAD pictures: the VQA tool asked once (the single tool) against
    the workflow that asks it in three phrasings (rollouts) and answers the majority, abstaining unless
    they agree (abstain_below 1.0) or answering any 2-of-3 majority (0.67)."""
    import base64

    from medweave.settings import shared_data_dir
    from medweave.vqa.data import load_vqa
    from medweave.vqa.normalize import normalize_answer
    from medweave.vqa.pipeline import train_vqa
    from medweave.vqa.splits import make_split

    data = shared_data_dir() / "vqa-rad"
    if not (data / "trainset.json").is_file():
        print("VQA-RAD: skipped (no vqa-rad under MEDWEAVE_DATA)")
        return None
    model = work / "vqa-rad-images-split"
    if not (model / "config.json").exists():
        train_vqa(data, model, split="images")  # the held-out pictures are never trained on
    vqa = load_vqa(data)
    _, held = make_split("images", vqa.questions, 0.15, 0)
    qs = [vqa.questions[i] for i in held if vqa.questions[i].answer_type.upper() == "CLOSED"]
    if limit:
        qs = qs[:limit]
    store = work / "vqa-rad-store"  # the tools need a store folder (their log); an empty one will do
    if not (store / "catalog.duckdb").exists():
        from medweave.store import Store

        Store(store, write=True).close()
    tb = Toolbox(store=store, vqa_model=model, log=False)
    single, votes, secs = [], [], []
    try:
        for q in qs:
            pic = base64.b64encode((vqa.images_dir / q.image).read_bytes()).decode()
            lq = q.question[0].lower() + q.question[1:]
            answers, t0 = [], time.perf_counter()
            for k, form in enumerate(PARAPHRASES):
                r = tb.call("answer_question", {"question": form.format(q=q.question, lq=lq), "image_base64": pic})
                answers.append(normalize_answer(r["answer"]))
                if k == 0:
                    single.append((answers[0] == q.norm_answer, time.perf_counter() - t0))
            secs.append(time.perf_counter() - t0)
            votes.append((answers, q.norm_answer))
    finally:
        tb.close()
    rows = {"VQA model alone (answer_question once)": {
        "records": [{"truth": "t", "majority": "t" if ok else "f", "answer": "t" if ok else "f", "abstained": False,
                     "steps": 1, "seconds": s, "agreement": 1.0} for ok, s in single]}}
    for thr in (1.0, 0.67):
        recs = []
        for (answers, truth), s in zip(votes, secs):
            top = max(set(answers), key=answers.count)
            agree = answers.count(top) / len(answers)
            recs.append({"truth": "t", "majority": "t" if top == truth else "f", "abstained": agree < thr,
                         "answer": None if agree < thr else ("t" if top == truth else "f"), "steps": len(answers),
                         "seconds": s, "agreement": agree})
        rows[f"workflow: 3 phrasings, majority, abstain below {thr:.2f}"] = {"records": recs}
    print(f"\nVQA-RAD closed questions about {len({q.image for q in qs})} held-out pictures (image split, "
          f"15%): {len(qs)} questions")
    head = f"{'method':58s} {'accuracy (all)':>20s} {'coverage':>20s} {'acc. answered':>20s} {'steps/case':>10s} {'s/case':>7s}"
    print(head)
    print("-" * len(head))
    out = {}
    for name, r in rows.items():
        s = summarise(r["records"], n_boot)
        out[name] = s
        print(f"{name:58s} {fmt(s['accuracy_all']):>20s} {fmt(s['coverage']):>20s} {fmt(s['accuracy_answered']):>20s} "
              f"{s['steps_per_case']:10.1f} {s['seconds_per_case']:7.2f}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="phantom,nih,vqa-rad")
    ap.add_argument("--patients", type=int, default=200, help="phantom patients")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--llm-cases", type=int, default=6, help="cases for the LLM planner/decider rows (0: none)")
    ap.add_argument("--nih-limit", type=int, default=None, help="at most this many NIH cases per half")
    ap.add_argument("--vqa-limit", type=int, default=None, help="at most this many VQA-RAD closed questions")
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
        results["vqa-rad"] = vqa_rad(args.work, args.bootstrap, args.vqa_limit)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
