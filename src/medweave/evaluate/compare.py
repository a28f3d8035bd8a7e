"""``medweave eval compare RUN_A RUN_B``: per metric, B - A on the samples both runs answered, with a
paired bootstrap 95% interval clustered by picture, and the exact McNemar test on right/wrong
(exact-match metrics; the counts of samples only A or only B got right)."""

from __future__ import annotations

from typing import Any

from .harness import load_run
from .samples import TaskError
from .stats import mcnemar_exact, paired_difference

BINARY = {"overall_acc", "accuracy", "closed_acc", "open_acc", "closed_acc_yesno"}


def compare_runs(run_a: str, run_b: str, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    a, b = load_run(run_a), load_run(run_b)
    ra = {r["id"]: r for r in a["records"] if not r["variant"]}
    rb = {r["id"]: r for r in b["records"] if not r["variant"]}
    common = [i for i in ra if i in rb]
    if not common:
        raise TaskError(f"{run_a} and {run_b} share no sample ids: compare runs of the same task and data")
    metrics = [m for m in a["run"]["task"]["metrics"] if m in b["run"]["task"]["metrics"]]
    out: dict[str, Any] = {"a": {"dir": a["dir"], "backend": a["run"]["backend"]["name"], "task": a["run"]["task"]["name"]},
                           "b": {"dir": b["dir"], "backend": b["run"]["backend"]["name"], "task": b["run"]["task"]["name"]},
                           "common_samples": len(common), "only_a": len(ra) - len(common),
                           "only_b": len(rb) - len(common), "metrics": {}}
    for m in metrics:
        ids = [i for i in common if ra[i]["scores"].get(m) is not None and rb[i]["scores"].get(m) is not None]
        va = [float(ra[i]["scores"][m]) for i in ids]
        vb = [float(rb[i]["scores"][m]) for i in ids]
        res = paired_difference(va, vb, [ra[i]["cluster"] for i in ids], n_boot, seed)
        if m in BINARY:
            res["mcnemar"] = mcnemar_exact([x >= 1 for x in va], [x >= 1 for x in vb])
        out["metrics"][m] = res
    same = sum(ra[i]["extracted"] == rb[i]["extracted"] for i in common)
    out["same_answers"] = same
    return out
