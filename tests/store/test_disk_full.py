"""The disk filling up mid-ingest, simulated by a file-size limit (RLIMIT_FSIZE) on a real `medweave
ingest` subprocess: the store stays consistent (no partial blob, every row's blob whole), the error
says what happened, and the same command without the limit ends with the store a clean run gives."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from medweave.ingest import ingest
from medweave.store import Store


def _limited(limit: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


@pytest.mark.slow
def test_ingest_past_a_file_size_limit_keeps_the_store_consistent(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"pt{i}_r{i}.txt").write_text(f"Findings {i}: clear lungs.\n")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1100, 1100), dtype=np.uint8)).save(src / "big.png")
    assert (src / "big.png").stat().st_size > 1_000_000
    store = tmp_path / "s"
    res = subprocess.run([sys.executable, "-m", "medweave.cli", "ingest", str(src), "--store", str(store)],
                         capture_output=True, text=True, timeout=900, preexec_fn=_limited(800_000))
    assert res.returncode == 1, res.stdout + res.stderr
    line = next(x for x in res.stdout.splitlines() if "FAILED" in x and "big.png" in x)
    assert "the store cannot take this file's data" in line and "file-size limit" in line, line
    assert "reader bug" not in res.stdout

    with Store(store) as st:
        rep = st.verify()
        assert rep.ok and rep.blobs == 3 and not rep.orphans, (rep.damaged, rep.orphans)
    assert not list((store / "blobs").glob("??/*.png"))  # the partial blob was removed

    with Store(store, write=True) as st:  # the same command, with room: only the failed file is read
        again = ingest([src], st, progress=False)
        assert again.n_ok == 1 and again.n_already == 3 and again.ok
        got = sorted(st.items()[["content_hash", "modality"]].itertuples(index=False))
    with Store(tmp_path / "clean", write=True) as st:
        ingest([src], st, progress=False)
        assert sorted(st.items()[["content_hash", "modality"]].itertuples(index=False)) == got
