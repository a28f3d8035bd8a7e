"""Drafting benchmark: findings -> impression on the Open-i validate split, every method beside the
baselines; the observation labeller against the MeSH terms of the IU reports; drafts from pictures on
the phantom.

Impressions (``openi-summ``: knowledge base and fitting on train.jsonl only, scored on validate.jsonl):
ROUGE-1/2/L (rouge-score, no stemming; ROUGE-L also stemmed), BLEU (sacrebleu), the COCO metrics
(pycocoevalcap: BLEU-4, METEOR, ROUGE-L, CIDEr-D), the rule labeller's observation F1, each with a
bootstrap 95% interval where it has one; seconds per report (drafting only, after fitting; upper bounds
on a shared machine); the share of distinct drafts. Stochastic methods (``rerank``: its cross-fitting
folds and boosting seed) run over ``--seeds`` and print the mean and spread beside seed 0.

    python benchmarks/drafting.py                          # impressions + labeller + phantom
    python benchmarks/drafting.py --only impressions --seeds 0
    python benchmarks/drafting.py --only labeller
    python benchmarks/drafting.py --only phantom
    python benchmarks/drafting.py --json results.json      # also write every number
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from medweave.draft import load_split
from medweave.draft.model import make_drafter
from medweave.evaluate.text import text_report
from medweave.settings import shared_data_dir

# (row name, method, drafter options, what it is)
METHODS = [
    ("most-common", "most-common", {}, "baseline: the most common training impression for every report"),
    ("tfidf-nn", "nearest", {"text_index": "tfidf-plain"}, "baseline: impression of the nearest report, plain TF-IDF"),
    ("nearest-tfidf13", "nearest", {}, "nearest report, TF-IDF word 1-3-grams with case and punctuation"),
    ("nearest-bm25", "nearest", {"text_index": "bm25"}, "nearest report, BM25"),
    ("consensus", "consensus", {}, "consensus (MBR) among the 20 nearest reports' impressions"),
    ("consensus-bm25", "consensus", {"text_index": "bm25"}, "consensus, BM25 neighbours"),
    ("rerank", "rerank", {}, "retrieve, edit, rerank (learned)"),
]
DENSE = [
    ("nearest-dense", "nearest", {"text_index": "dense"}, "nearest report, e5-small embeddings"),
    ("consensus-hybrid", "consensus", {"text_index": "hybrid"}, "consensus, TF-IDF + BM25 + e5 fused (RRF)"),
]
SHOW = ["rouge1", "rouge2", "rougeL", "rougeL_stem", "bleu_sacre", "coco_bleu4", "coco_meteor", "coco_cider",
        "obs_f1_rules_micro14", "obs_f1_rules_micro5"]


def _cell(v: dict) -> str:
    if not isinstance(v, dict) or v.get("value") is None or np.isnan(v["value"]):
        return "-"
    if "lo" in v:
        return f"{v['value']:.1f} [{v['lo']:.1f}, {v['hi']:.1f}]"
    return f"{v['value']:.1f}"


def impressions(data: Path, seeds: list[int], dense: bool, n_boot: int) -> dict:
    train, valid = load_split(data, "train"), load_split(data, "validate")
    refs = [r.impression for r in valid]
    findings = [r.findings for r in valid]
    rows = {}
    methods = METHODS + (DENSE if dense else [])
    for name, method, opts, what in methods:
        for seed in (seeds if method == "rerank" else [0]):
            t0 = time.perf_counter()
            d = make_drafter(method, seed=seed, **opts).fit(train, progress=True)
            fit_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            drafts = d.draft(findings)
            per = (time.perf_counter() - t1) / len(findings)
            rep = text_report([x.text for x in drafts], refs, n_boot=n_boot)
            key = name if seed == seeds[0] or method != "rerank" else f"{name}@seed{seed}"
            kinds = {}
            for x in drafts:
                kinds[x.kind] = kinds.get(x.kind, 0) + 1
            rows[key] = {"what": what, "seed": seed, "fit_seconds": fit_s, "seconds_per_report": per,
                         "kinds": kinds, **rep}
            print(f"  {key}: ROUGE-L {rep['rougeL']['value']:.2f}  fit {fit_s:.0f} s  {per * 1000:.1f} ms/report",
                  file=sys.stderr, flush=True)
    print(f"\nFindings -> impression, Open-i validate ({len(valid)} reports; knowledge base and fitting on "
          f"{len(train)} training reports). x100; 95% bootstrap intervals over reports.\n")
    head = ["method", *SHOW, "distinct", "s/report"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key, r in rows.items():
        print("| " + " | ".join([key, *[_cell(r.get(k)) for k in SHOW], f"{r['distinct_share']['value']:.2f}",
                                 f"{r['seconds_per_report']:.4f}"]) + " |")
    rr = [r for k, r in rows.items() if k.split("@")[0] == "rerank"]
    if len(rr) > 1:
        vals = np.array([r["rougeL"]["value"] for r in rr])
        print(f"\nrerank over seeds {seeds}: ROUGE-L {vals.mean():.2f} +- {vals.std(ddof=1):.2f} "
              f"(min {vals.min():.2f}, max {vals.max():.2f})")
    print("\nwinning candidate kinds (rerank, first seed):", rows["rerank"]["kinds"] if "rerank" in rows else "-")
    return rows


def iu_reports(tgz: Path) -> list:
    from medweave.ingest.adapters.report import OpenIReport

    out = []
    with tarfile.open(tgz, "r:*") as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.endswith(".xml"):
                out.append(OpenIReport.parse(tar.extractfile(m).read()))
    return out


def labeller(data_dir: Path) -> dict:
    """The rule labeller on each IU report (findings + impression) against its MeSH terms."""
    from medweave.evaluate.observations import OBSERVATIONS, agreement, mesh_observations

    train_findings = {r.findings for r in load_split(data_dir / "openi-summ", "train")}
    groups: dict[str, tuple[list, list]] = {"dev (reports of openi-summ train)": ([], []), "other reports": ([], [])}
    for rep in iu_reports(data_dir / "iu-xray-reports" / "NLMCXR_reports.tgz"):
        text = " ".join(rep.sections.get(s, "") for s in ("FINDINGS", "IMPRESSION")).strip()
        truth = mesh_observations(rep.mesh_major)
        if not text or truth is None:
            continue
        g = "dev (reports of openi-summ train)" if rep.sections.get("FINDINGS", "").strip() in train_findings \
            else "other reports"
        groups[g][0].append(text)
        groups[g][1].append(truth)
    res = {g: agreement(t, y) for g, (t, y) in groups.items()}
    print("\nRule labeller vs the MeSH terms of the IU reports (findings + impression; uncertain counts as "
          "present). The rules were written looking at the dev group only.\n")
    names = list(res)
    print("| observation | " + " | ".join(f"{g}: n / P / R / F1" for g in names) + " |")
    print("|---|" + "---|" * len(names))
    for o in [*OBSERVATIONS, "micro"]:
        cells = []
        for g in names:
            a = res[g][o]
            cells.append(f"{a['n']} / {a['precision']:.2f} / {a['recall']:.2f} / {a['f1']:.2f}")
        print(f"| {o} | " + " | ".join(cells) + " |")
    print("reports: " + ", ".join(f"{g} {len(groups[g][0])}" for g in names))
    return res


def phantom(n_patients: int, n_boot: int) -> dict:
    from medweave.draft.report import phantom_benchmark

    res = phantom_benchmark(n_patients=n_patients, n_boot=n_boot)
    print(f"\nReports from pictures, phantom ({res['cases']} test cases with a picture and a report; knowledge "
          f"base: the train split's {res['kb_reports']} reports). x100.\n")
    head = ["method", "rougeL", "bleu_sacre", "coco_cider", "obs_f1_rules_micro14", "distinct", "citations ok",
            "flagged sentences"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in res["methods"].items():
        print("| " + " | ".join([name, _cell(r["rougeL"]), _cell(r["bleu_sacre"]), _cell(r.get("coco_cider", {})),
                                 _cell(r["obs_f1_rules_micro14"]), f"{r['distinct_share']['value']:.2f}",
                                 str(r.get("citations_ok", "-")), str(r.get("flagged", "-"))]) + " |")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=shared_data_dir())
    ap.add_argument("--only", choices=["impressions", "labeller", "phantom"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--dense", action="store_true", help="also e5 and hybrid retrieval (slow to encode on 2 cores)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--phantom-patients", type=int, default=300)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if not (a.data / "openi-summ" / "train.jsonl").is_file() and a.only != "phantom":
        sys.exit(f"openi-summ not found under {a.data} (set --data or MEDWEAVE_DATA)")
    out = {}
    if a.only in (None, "impressions"):
        out["impressions"] = impressions(a.data / "openi-summ", [int(s) for s in a.seeds.split(",")], a.dense,
                                         a.bootstrap)
    if a.only in (None, "labeller"):
        out["labeller"] = labeller(a.data)
    if a.only in (None, "phantom"):
        out["phantom"] = phantom(a.phantom_patients, a.bootstrap)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
