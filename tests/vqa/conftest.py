"""A tiny synthetic VQA set (JSON + PNG pictures) and a model trained on it through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medweave.vqa.testing import N_IMAGES, picture, tiny_set, write_tiny_set  # noqa: F401  (shared support)


def medweave(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real ``medweave`` command in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "medweave.cli", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"medweave {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_model(tiny_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-model") / "model"
    medweave("vqa", "train", "--data", str(tiny_set), "--out", str(out), "--epochs", "40", "--seeds", "2", "--json")
    return out
