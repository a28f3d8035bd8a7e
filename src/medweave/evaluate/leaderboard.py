"""``medweave eval report RUN_DIR... --out FILE.html``: one self-contained HTML page (figures inlined as
PNG) with a leaderboard per task (every metric with its clustered 95% interval), a plot of the first
metric with its intervals, the per-type breakdowns side by side, and every run's probe tables."""

from __future__ import annotations

import base64
import math
import time
from pathlib import Path
from typing import Any, Sequence

from .harness import load_run

TEMPLATES = Path(__file__).parent / "templates"


def fmt(v: Any) -> str:
    if isinstance(v, dict) and "value" in v:
        if not v.get("n"):
            return "–"
        ci = f" [{v['lo']:.3f}, {v['hi']:.3f}]" if isinstance(v.get("lo"), float) and not math.isnan(v["lo"]) else ""
        return f"{v['value']:.3f}{ci}"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def interval_plot(names: list[str], values: list[dict], title: str) -> str:
    """Horizontal bars of one metric per run with their 95% intervals (a PNG data URL)."""
    from ..figures import subplots, to_png

    y = list(range(len(names)))[::-1]
    vals = [v["value"] if v.get("n") else 0.0 for v in values]
    lo = [max(0.0, v["value"] - v["lo"]) if v.get("n") and not math.isnan(v["lo"]) else 0 for v in values]
    hi = [max(0.0, v["hi"] - v["value"]) if v.get("n") and not math.isnan(v["hi"]) else 0 for v in values]
    with subplots(figsize=(6.5, 0.5 + 0.45 * len(names))) as (fig, ax):
        ax.barh(y, vals, xerr=[lo, hi], color="#4a78b5", capsize=3)
        ax.set_yticks(y, names)
        ax.set_xlim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        png = to_png(fig, dpi=100)
    return "data:image/png;base64," + base64.b64encode(png).decode()


def probe_plot(rows: list[dict], metric: str, title: str) -> str:
    names = [r["variant"] for r in rows]
    vals = [r["metrics"][metric] for r in rows]
    return interval_plot(names, vals, title) if rows else ""


def build_context(run_dirs: Sequence[str]) -> dict[str, Any]:
    runs = [load_run(d) for d in run_dirs]
    tasks: dict[str, list[dict]] = {}
    for r in runs:
        tasks.setdefault(r["run"]["task"]["name"], []).append(r)
    boards = []
    for task, rs in tasks.items():
        metrics = rs[0]["run"]["task"]["metrics"]
        first = metrics[0]
        rs = sorted(rs, key=lambda r: -(r["metrics"]["metrics"][first]["value"]
                                        if r["metrics"]["metrics"][first].get("n") else -1))
        names = [r["run"]["backend"]["name"] for r in rs]  # the same model twice (e.g. builtin and over HTTP):
        labels = [n if names.count(n) == 1 else f"{n} ({Path(r['dir']).name})" for n, r in zip(names, rs)]  # + run
        rows = [{"name": label, "kind": r["run"]["backend"]["kind"], "dir": r["dir"],
                 "samples": r["metrics"]["samples"], "failed": r["metrics"]["failed"],
                 "values": [fmt(r["metrics"]["metrics"][m]) for m in metrics]} for label, r in zip(labels, rs)]
        breakdowns = []
        for field in rs[0]["run"]["task"].get("breakdown", []):
            keys = sorted({k for r in rs for k in r["metrics"]["breakdown"].get(field, {})})
            breakdowns.append({"field": field, "runs": labels,
                               "rows": [{"key": k, "values": [fmt(r["metrics"]["breakdown"].get(field, {}).get(k, {}))
                                                              for r in rs]} for k in keys]})
        probes = []
        for label, r in zip(labels, rs):
            for pname, table in (r["metrics"].get("probes") or {}).items():
                probes.append(probe_table(label, pname, table, metrics))
        boards.append({"task": task, "metrics": metrics, "rows": rows, "breakdowns": breakdowns, "probes": probes,
                       "plot": interval_plot([x["name"] for x in rows], [r["metrics"]["metrics"][first] for r in rs],
                                             f"{task}: {first} (95% interval, clustered by picture)"),
                       "data": rs[0]["run"]["data"]["path"], "split": rs[0]["run"]["task"].get("split")})
    return {"boards": boards, "generated": time.strftime("%Y-%m-%d %H:%M"),
            "runs": [{"dir": r["dir"], "backend": r["run"]["backend"]["name"], "task": r["run"]["task"]["name"],
                      "code": r["run"]["code_version"], "fingerprint": r["run"]["backend"]["fingerprint"],
                      "generation": r["run"]["generation"], "counts": r["run"]["counts"]} for r in runs]}


def probe_table(backend: str, name: str, table: dict, metrics: list[str]) -> dict[str, Any]:
    first = metrics[0]
    if name == "paired":
        rows = [{"cells": [k, str(v["pairs"]), fmt(v["pair_acc"]), fmt(v["true_acc"]), fmt(v["false_acc"])]}
                for k, v in table.get("by_kind", {}).items()]
        return {"backend": backend, "name": "paired (ProbMed-style)", "columns": ["fact", "pairs", "pair_acc",
                                                                                  "true_acc (yes)", "false_acc (no)"],
                "rows": rows, "note": f"random guessing: {table.get('random_pair_acc', 0.25):.0%} of pairs", "plot": ""}
    rows = [{"cells": [r["variant"], str(r["n"]), *[fmt(r["metrics"][m]) for m in metrics],
                       f"{r['delta']:+.3f}", fmt(r["agreement"])]} for r in table.get("rows", [])]
    return {"backend": backend, "name": name, "columns": ["variant", "n", *metrics, f"Δ {first}", "same answer"],
            "rows": rows, "note": table.get("note", ""),
            "plot": probe_plot(table.get("rows", []), first, f"{backend}: {name} probe, {first}")
            if table.get("rows") else ""}


def write_report(run_dirs: Sequence[str], out: str | Path) -> Path:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    page = env.get_template("leaderboard.html.j2").render(**build_context(run_dirs))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
