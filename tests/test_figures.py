"""Figures drawn from several threads at once (the server draws saliency overlays and signal plots in
request threads, and explains with captum, which imports pyplot itself): every one a valid PNG, the
same bytes as drawn alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r"""
    import io, json, sys, threading
    import numpy as np
    assert "matplotlib" not in sys.modules  # a fresh interpreter: the first pyplot import is in the threads
    sys.setswitchinterval(1e-6)  # switch threads as often as Python can, imports included
    from PIL import Image
    from medweave.explain.features import _captum_attr, overlay_png
    from medweave.report.plots import signal_plot

    rng = np.random.default_rng(0)
    picture = rng.uniform(-1, 1, (3, 224, 224)).astype(np.float32)
    saliency = rng.random((224, 224))
    signal = rng.standard_normal((3, 500))
    jobs = [lambda: overlay_png(picture, saliency, "occlusion"),
            lambda: signal_plot(signal, 100.0, ["I", "II", "III"]),
            lambda: _captum_attr().Occlusion.__name__.encode()]
    n, rounds = 9, 5  # the first round races the first imports, the others only the drawing
    out = []

    def run(i, start, got):
        start.wait()
        try:
            got[i] = jobs[i % 3]()
        except BaseException as exc:
            got[i] = exc

    for _ in range(rounds):
        start, got = threading.Barrier(n), [None] * n
        threads = [threading.Thread(target=run, args=(i, start, got)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out += got
    alone = [job() for job in jobs]  # each drawn again on its own
    report = []
    for i, got in enumerate(out):
        if isinstance(got, BaseException):
            report.append(f"call {i}: {type(got).__name__}: {got}")
        elif i % 3 == 2:
            report.append("ok" if got == b"Occlusion" else f"call {i}: {got!r}")
        else:
            img = Image.open(io.BytesIO(got))
            img.verify()
            ok = img.format == "PNG" and min(img.size) > 100 and got == alone[i % 3]
            report.append("ok" if ok else f"call {i}: {img.format} {img.size}, same as alone: {got == alone[i % 3]}")
    print(json.dumps(report))
""")


def test_overlays_and_signal_plots_drawn_from_threads_at_once_are_all_valid_pngs():
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the backend is medweave's choice: Agg
    for _ in range(2):  # two fresh interpreters
        done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report == ["ok"] * 45, [r for r in report if r != "ok"]
