"""Shared fixtures: where the real data lives, and helpers that open real stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from medweave.settings import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data folder; tests that need it skip with the reason when it is absent."""
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared data not found at {d} (set MEDWEAVE_DATA to its folder)")
    return d


def _write_text_files(folder: Path, n: int, patients: int = 10) -> list[Path]:
    """n small plain-text reports spread over ``patients`` patients (file prefix = patient)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"pt{i % patients:04d}_r{i:05d}.txt"
        p.write_text(f"Report {i}. Findings: {'opacity' if i % 3 == 0 else 'clear lungs'}.\n")
        paths.append(p)
    return paths


@pytest.fixture
def text_files():
    """A function writing n small reports into a folder (see ``_write_text_files``)."""
    return _write_text_files


def _items_by_file(store, root: Path) -> dict:
    """{file name: item row} for the files under ``root``, found through their keyed ``unit_id``
    (stored paths are de-identified, so a test cannot match file names against them)."""
    ids = {store.unit_id(p): p.name for p in Path(root).rglob("*") if p.is_file()}
    return {ids[r.unit_id]: r for r in store.items().itertuples() if r.unit_id in ids}


@pytest.fixture
def by_file():
    """A function mapping file names under a folder to their stored item rows (see ``_items_by_file``)."""
    return _items_by_file
