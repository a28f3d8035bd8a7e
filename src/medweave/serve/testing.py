"""Running the app on a loopback port for tests and benchmarks: as a subprocess (``medweave serve``) or
in a thread of the current process (when a test needs to hand the app an object, e.g. a VQA answerer)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 120.0, headers: dict | None = None, proc=None) -> None:
    """Poll ``url/api/health`` until it answers (any HTTP status) or fail with what the process said."""
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url + "/api/health", headers=headers or {}, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise TimeoutError(f"server at {url} not ready after {timeout} s")


def start_server(store: Path | None, model: Path | None, extra: Sequence[str] = (), log: Path | None = None,
                 timeout: float = 120.0):
    """``medweave serve`` as a subprocess on a free loopback port; returns (process, base URL).
    ``store`` / ``model`` may be None (e.g. a VQA model alone: ``extra=["--vqa-model", DIR]``)."""
    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL
    parts = [*(["--store", str(store)] if store is not None else []),
             *(["--model", str(model)] if model is not None else [])]
    proc = subprocess.Popen([sys.executable, "-m", "medweave.cli", "serve", *parts, "--host", "127.0.0.1",
                             "--port", str(port), *extra], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=timeout, proc=proc, headers={"Authorization": "Bearer " + extra[list(extra).index("--token") + 1]}
                   if "--token" in extra else None)
    except Exception:
        proc.kill()
        raise
    return proc, url


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


class ThreadServer:
    """A uvicorn server for an app object, on a free loopback port, in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
