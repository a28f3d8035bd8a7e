"""The fuzz targets (``medweave.fuzz``) on their seeds, on seeded random mutations of them, and on every
input a fuzz run found (``tests/fuzz/crashes/<target>/``, each the minimised input of a bug that was
fixed): none may end in anything but the tool's own refusal. ``benchmarks/fuzz.py`` runs the same
targets under atheris."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from medweave.fuzz import TARGETS, Finding
from medweave.fuzz.targets import check_items

HERE = Path(__file__).resolve().parent
CRASHES = HERE / "crashes"
N_MUTATIONS = int(os.environ.get("MEDWEAVE_FUZZ_MUTATIONS", "25"))


@pytest.fixture(scope="module")
def ready(tmp_path_factory):
    """Each target's ``one_input``, set up once per module."""
    made: dict[str, object] = {}

    def get(name: str):
        if name not in made:
            made[name] = TARGETS[name].setup(tmp_path_factory.mktemp(f"fuzz-{name}"))
        return made[name]

    return get


def _seeds(name: str):
    seeds = TARGETS[name].seeds()
    if not seeds:
        pytest.skip(f"{name}: no seed files here (shared data or the package's test files absent)")
    return seeds


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of libFuzzer's simpler mutations: flip, set, insert, erase, duplicate or truncate bytes."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[min(i, len(b) - 1)] = rng.choice([0, 0xFF, 0x7F, 0x80, ord("9"), ord("-"), ord("\n")])
        elif op == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and b:
            del b[i:i + rng.randint(1, 16)]
        elif op == 4 and b:
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randint(1, 32)]
        elif op == 5:
            del b[i:]
    return bytes(b)


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_reads_its_seeds(name, ready):
    fn = ready(name)
    for seed_name, data in _seeds(name):
        fn(data)  # a Finding or any other exception fails the test, naming the seed in the trace


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_survives_mutations_of_its_seeds(name, ready, tmp_path):
    fn = ready(name)
    seeds = _seeds(name)
    rng = random.Random(f"medweave-fuzz-{name}")
    for i in range(N_MUTATIONS):
        data = mutate(rng.choice(seeds)[1][: TARGETS[name].max_len], rng)
        try:
            fn(data)
        except Exception as exc:
            kept = tmp_path / f"{name}-mutation-{i}"
            kept.write_bytes(data)
            raise AssertionError(f"{name}: mutation {i} ({kept}) gave {type(exc).__name__}: {exc}") from exc


def _crash_files():
    return sorted((p.parent.name, p) for p in CRASHES.glob("*/*") if p.is_file() and p.suffix != ".md")


@pytest.mark.parametrize("name,path", _crash_files(), ids=[f"{n}/{p.name}" for n, p in _crash_files()])
def test_fuzz_findings_stay_fixed(name, path, ready):
    ready(name)(path.read_bytes())


def test_every_finding_has_a_target():
    for name, _ in _crash_files():
        assert name in TARGETS, f"tests/fuzz/crashes/{name}: no such fuzz target"


def test_an_item_the_store_would_refuse_is_a_finding():
    from medweave.store.catalog import Item, Modality

    good = Item(patient_id="P1", study_id="S1", modality=Modality.TEXT, blob=b"x", fields={"text": "x", "age": 61.0})
    check_items([good], "text")
    for fields in ({"age": "sixty"}, {"rows": 2**40}, {"text": 3}, {"no_such_field": 1}):
        bad = Item(patient_id="P1", study_id="S1", modality=Modality.TEXT, blob=b"x", fields=fields)
        with pytest.raises(Finding):
            check_items([bad], "text")
    with pytest.raises(Finding):
        check_items([Item(patient_id="P1", study_id="S1", modality=Modality.TEXT, blob=b"x",
                          meta={"x": float("nan")})], "text")


@pytest.mark.slow
def test_fuzz_benchmark_runs_a_target_under_atheris(tmp_path):
    pytest.importorskip("atheris", reason="atheris not installed (pip install -e '.[fuzz]')")
    if not TARGETS["wfdb-signal"].seeds():
        pytest.skip("no WFDB record in the shared data")
    root = HERE.parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "fuzz.py"), "--seconds", "4", "--targets",
                           "wfdb-signal", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| wfdb-signal |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert int(cells[2].replace(",", "")) > 0 and int(cells[4].replace(",", "")) > 0, row  # executions, cov
    assert cells[-1] == "0", row
