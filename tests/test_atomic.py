"""Crash safety of everything medweave writes outside the store: ``kill -9`` (a real SIGKILL of a real
``medweave`` subprocess) at a random crash point and at a random moment of ``vqa train``, ``eval
run``, ``train`` and ``report``, over a complete older result: the folder or file left behind is never
taken for a complete one, and a re-run ends with the result of a clean run."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medweave import atomic

CLI = [sys.executable, "-m", "medweave.cli"]


def run(args: list[str], fault_log: Path | None = None, kill_at: int | None = None,
        timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDWEAVE_FAULT_")}
    if fault_log:
        env["MEDWEAVE_FAULT_LOG"] = str(fault_log)
    if kill_at:
        env["MEDWEAVE_FAULT_KILL"] = str(kill_at)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def kill_after(args: list[str], seconds: float) -> int:
    """Start the command, SIGKILL it after ``seconds`` (if still running); its return code."""
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()


def points(log: Path) -> list[str]:
    return [line.split("\t", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


# --- the primitives, in process ------------------------------------------------------------------

def test_write_replaces_whole_files_and_a_folder_marker_goes_first(tmp_path, monkeypatch):
    f = atomic.write_text(tmp_path / "a" / "x.json", '{"v": 1}')
    assert f.read_text() == '{"v": 1}' and not list(f.parent.glob(".*.tmp"))
    log = tmp_path / "faults.log"
    monkeypatch.setenv("MEDWEAVE_FAULT_LOG", str(log))
    folder = atomic.begin_folder(tmp_path / "a", "x.json")
    assert not (folder / "x.json").exists()
    atomic.write_bytes(folder / "w.bin", b"123")
    assert points(log) == ["marker removed: a/x.json", "written, not renamed: w.bin", "renamed: w.bin"]


def test_a_kill_between_write_and_rename_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old complete content")
    code = ("import sys; from medweave import atomic; atomic.write_text(sys.argv[1], 'new ' * 100000)")
    env = {**os.environ, "MEDWEAVE_FAULT_KILL": "1"}
    res = subprocess.run([sys.executable, "-c", code, str(target)], env=env, capture_output=True, timeout=120)
    assert res.returncode == -signal.SIGKILL
    assert target.read_text() == "old complete content"
    atomic.begin_folder(tmp_path, "nothing")  # the next writer of the folder removes the stray temp file
    assert not list(tmp_path.glob(".*.tmp"))


# --- real commands -------------------------------------------------------------------------------

def _vqa_sha(model: Path) -> str | None:
    from medweave.vqa import Answerer

    try:
        Answerer.load(model)
    except (FileNotFoundError, ValueError):
        return None
    return json.loads((model / "config.json").read_text())["weights_sha256"]


def _fusion_sha(model: Path) -> str | None:
    from medweave.train.trainer import load_checkpoint

    try:
        _, config = load_checkpoint(model)
    except (FileNotFoundError, ValueError):
        return None
    return config["weights_sha256"]


def _run_metrics(run_dir: Path):
    from medweave.evaluate.harness import load_run
    from medweave.evaluate.tasks import TaskError

    try:
        r = load_run(run_dir)
    except TaskError:
        return None
    return r["metrics"]["metrics"] if "metrics" in r["metrics"] else r["metrics"]


def _check_kills(tmp_path: Path, name: str, args, clean: Path, older: Path, state, rng: random.Random,
                 kinds=("point",), duration: float = 0.0) -> None:
    """``clean`` was written by ``args(clean)`` with a fault log, ``older`` by another complete run.
    Over a copy of ``older``: SIGKILL at a random crash point (and/or at a random moment); the state
    left is 'incomplete' (None), the older one or the clean one; a re-run gives the clean state."""
    log = tmp_path / f"{name}.faults"
    n = len(points(log))
    assert n >= 2, points(log)
    clean_state, before = state(clean), state(older)
    assert clean_state is not None and before is not None and before != clean_state
    for how in kinds:
        target = tmp_path / f"{name}-victim-{how}{older.suffix}"
        (shutil.copytree if older.is_dir() else shutil.copy2)(older, target)
        if how == "point":  # over an older folder, point 1 is its marker's removal, and the rest follow
            k = rng.randint(1, n)
            klog = tmp_path / f"{name}-kill.faults"
            res = run(args(target), fault_log=klog, kill_at=k)
            assert res.returncode == -signal.SIGKILL, (k, res.stderr[-1500:])
            where = points(klog)[-1]
        else:
            seconds = rng.uniform(0.3, 1.0) * duration
            code = kill_after(args(target), seconds)
            where = f"{seconds:.1f} s (rc {code})"
        left = state(target)  # incomplete (refused), the older result whole, or the new one whole
        assert left is None or left == before or left == clean_state, (name, how, where, left)
        res = run(args(target))
        assert res.returncode == 0, res.stderr[-1500:]
        assert state(target) == clean_state, (name, how, where)


def _clean_and_older(tmp_path: Path, name: str, args, older_args) -> tuple[Path, Path, float]:
    clean = tmp_path / f"{name}-clean"
    t0 = time.monotonic()
    res = run(args(clean), fault_log=tmp_path / f"{name}.faults")
    assert res.returncode == 0, res.stderr[-2000:]
    duration = time.monotonic() - t0
    older = tmp_path / f"{name}-older"
    res = run(older_args(older))
    assert res.returncode == 0, res.stderr[-2000:]
    return clean, older, duration


@pytest.mark.slow
def test_sigkill_during_vqa_train_and_eval_run(tmp_path):
    from medweave.vqa.testing import write_tiny_set

    rng = random.Random(11)
    data = write_tiny_set(tmp_path / "tiny")

    def vqa_args(out, epochs=20):
        return ["vqa", "train", "--data", str(data), "--out", str(out), "--seeds", "1", "--epochs", str(epochs)]

    vqa_model, older, _ = _clean_and_older(tmp_path, "vqa", vqa_args, lambda out: vqa_args(out, 7))
    _check_kills(tmp_path, "vqa", vqa_args, vqa_model, older, _vqa_sha, rng)

    task = tmp_path / "tiny.yaml"
    task.write_text(f"name: tiny\nlayout: vqa-rad\ndata: {data / 'train.json'}\n"
                    "prompt: \"{question}\\nAnswer the question using a single word or phrase.\"\n"
                    "metrics: [overall_acc, closed_acc, open_acc]\n")

    def eval_args(out, limit=24):
        return ["eval", "run", "--task", str(task), "--backend", "builtin", "--model", str(vqa_model), "--out",
                str(out), "--quiet", "--bootstrap", "50", "--limit", str(limit)]

    clean, older, _ = _clean_and_older(tmp_path, "eval", eval_args, lambda out: eval_args(out, 10))
    _check_kills(tmp_path, "eval", eval_args, clean, older, _run_metrics, rng)


@pytest.mark.slow
def test_sigkill_during_train_and_report(tmp_path):
    from medweave.demo import generate_phantom

    rng = random.Random(12)
    m = generate_phantom(tmp_path / "ph", n_patients=40, seed=5)

    def config(seed: int) -> Path:
        p = tmp_path / f"exp{seed}.toml"
        p.write_text(f"""
name = "faults"
[data]
paths = [{json.dumps(str(m.path("data")))}]
mapping = {json.dumps(str(m.mapping))}
store = {json.dumps(str(tmp_path / "store"))}
[cohort]
targets = ["disease"]
covariates = ["age", "sex"]
fractions = [0.6, 0.2, 0.2]
[model]
kind = "sequential"
modalities = ["table"]
hidden = 16
[train]
epochs = 8
seed = {seed}
""")
        return p

    def train_args(out, seed=1):
        return ["train", "--config", str(config(seed)), "--out", str(out), "--json"]

    clean, older, duration = _clean_and_older(tmp_path, "train", train_args, lambda out: train_args(out, 2))
    _check_kills(tmp_path, "train", train_args, clean, older, _fusion_sha, rng, ("point", "moment"), duration)

    def report_state(path: Path):
        if not path.is_file():
            return None
        text = path.read_text(encoding="utf-8")
        assert text.rstrip().endswith("</html>"), "a half-written report"
        text = re.sub(r"seconds: [^<]*", "seconds: (timing)", text)  # how long explaining took
        text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[^\s<\"]*", "TIME", text)
        # sampled attributions of the explained case vary in their last digits from run to run: the
        # report is compared by its whole text with the decimals masked (an older report differs anyway)
        return re.sub(r"[-+]?\d+\.\d+(?:e[-+]?\d+)?", "N", text)

    def report_args(out, cases="1"):
        return ["report", "--model", str(clean), "--out", str(out), "--cases", cases, "--bootstrap", "50"]

    rclean, rolder, _ = _clean_and_older(tmp_path, "report", lambda out: report_args(out.with_suffix(".html")),
                                         lambda out: report_args(out.with_suffix(".html"), "0"))
    _check_kills(tmp_path, "report", report_args, rclean.with_suffix(".html"), rolder.with_suffix(".html"),
                 report_state, rng)
