"""Ensemble members fitted in separate Python interpreters, side by side on the machine's cores
(``VqaConfig.fit_workers``; ``model._fit_members``).

A worker is ``python -m medweave.vqa.fitworker JOB_DIR SEED [SEED ...]``: a fresh interpreter, not a
``multiprocessing`` child, so a user's script that trains at its top level (no ``if __name__ ==
"__main__"`` guard) is never imported again by a worker. The parent writes the job once (``write_job``:
the training arrays as ``.npy``, the configuration as JSON); each worker fits its members with
``model._fit_member`` (so on ``cfg.threads`` threads, from the member's seed alone) and writes
``member-SEED.safetensors``, whole or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

ARRAYS = ("xi", "xq", "y", "closed", "t", "weight", "real")  # the job's arrays, in model._fit_member's order


def write_job(folder: Path, cfg, data: tuple) -> None:
    """Write ``data`` (``model._fit_member``'s tuple) and ``cfg`` into ``folder``."""
    *arrays, n_answers, n_qtypes, ctx, copies = data
    for name, a in zip(ARRAYS, arrays):
        np.save(folder / f"{name}.npy", np.asarray(a))
    if ctx is not None:
        np.save(folder / "ctx.npy", ctx)
    if copies is not None:
        np.save(folder / "copies.npy", copies[0])
        np.save(folder / "copies_pic.npy", np.asarray(copies[1]))
    (folder / "job.json").write_text(json.dumps({"cfg": asdict(cfg), "n_answers": n_answers, "n_qtypes": n_qtypes}))


def read_job(folder: Path) -> tuple:
    """(cfg, data) as ``write_job`` wrote them."""
    from .model import VqaConfig

    job = json.loads((folder / "job.json").read_text())
    arrays = [np.load(folder / f"{name}.npy") for name in ARRAYS]
    ctx = np.load(folder / "ctx.npy") if (folder / "ctx.npy").exists() else None
    copies = ((np.load(folder / "copies.npy"), np.load(folder / "copies_pic.npy"))
              if (folder / "copies.npy").exists() else None)
    return VqaConfig(**job["cfg"]), (*arrays, job["n_answers"], job["n_qtypes"], ctx, copies)


def run_workers(folder: Path, cfg, seeds_per_worker: list[list[int]]) -> list[dict]:
    """Start one worker per list of seeds, wait for all, and return the members' state dicts in seed
    order; a worker that fails is an error naming its members, its exit status and the end of its stderr."""
    from safetensors.torch import load_file

    import medweave

    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cfg.threads)))
    src = str(Path(medweave.__file__).resolve().parents[1])  # the workers import this very medweave
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    procs = [(seeds, subprocess.Popen([sys.executable, "-m", "medweave.vqa.fitworker", str(folder), *map(str, seeds)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env))
             for seeds in seeds_per_worker]
    failed = []
    try:
        for seeds, proc in procs:
            _, err = proc.communicate()
            if proc.returncode:
                tail = err.decode(errors="replace").strip().splitlines()[-5:]
                failed.append(f"members {seeds}: exit status {proc.returncode}: " + " | ".join(tail))
    finally:  # interrupted (Ctrl-C, an error here): no worker outlives the fit it was fitting for
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failed:
        raise RuntimeError("fitting the answerer's ensemble members in worker processes failed ("
                           + "; ".join(failed) + "); fit_workers=1 fits them in this process")
    return [load_file(folder / f"member-{s}.safetensors") for s in sorted(s for seeds in seeds_per_worker for s in seeds)]


def main(argv: list[str]) -> int:
    from safetensors.torch import save_file

    from .model import _fit_member

    folder, seeds = Path(argv[0]), [int(s) for s in argv[1:]]
    cfg, data = read_job(folder)
    for s in seeds:
        state = _fit_member(cfg, data, s)
        tmp = folder / f".member-{s}.part"
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        os.replace(tmp, folder / f"member-{s}.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
