"""Ingest third-party files (written by other toolkits) set by set and print, per set: files, units,
ingested, skipped (not a data file), failed (with the most common reasons) and crashed (a reader's
bug: an unexpected exception; must be 0).

Sets, where they can be had offline (PyPI / npm packages; a set that is not installed is listed as
not available, with how to get it):

  pydicom-data        DICOM files of pydicom's test data package (pip: pydicom-data)
  pydicom             DICOM files inside pydicom's own wheel (pydicom/data/test_files)
  nibabel             nibabel's test volumes (nibabel/tests/data): NIfTI-1/2, MGH, Analyze headers, ...
  pyedflib            EDF/EDF+/BDF files written by EDFlib's generator (pyedflib/tests/data)
  hl7-fhir-r4         the FHIR R4 specification's examples (npm: hl7.fhir.r4.examples, 5,307 files)
  physionet           the shared PhysioNet WFDB records ($MEDWEAVE_DATA/wfdb)

Usage: python benchmarks/corpus.py [--only NAME ...] [--cache DIR] [--reasons N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path


def _package_dir(module: str, *parts: str) -> Path | None:
    try:
        mod = __import__(module, fromlist=["__file__"])
    except ImportError:
        return None
    path = Path(mod.__file__).parent.joinpath(*parts)
    return path if path.is_dir() else None


def _hl7_examples(cache: Path) -> Path | None:
    """The FHIR R4 examples, unpacked from the npm package into ``cache`` (npm is one of the registries
    this project may use; without npm the set is not available)."""
    target = cache / "hl7.fhir.r4.examples" / "package"
    if target.is_dir():
        return target
    if shutil.which("npm") is None:
        return None
    (cache / "hl7.fhir.r4.examples").mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["npm", "pack", "hl7.fhir.r4.examples@4.0.1", "--silent"], cwd=cache, capture_output=True,
                         text=True, timeout=600)
    tgz = cache / "hl7.fhir.r4.examples-4.0.1.tgz"
    if res.returncode != 0 or not tgz.is_file():
        return None
    with tarfile.open(tgz) as tar:
        tar.extractall(cache / "hl7.fhir.r4.examples", filter="data")
    return target if target.is_dir() else None


def sets(cache: Path) -> dict[str, tuple[Path | None, str, str]]:
    """name -> (folder or None, what reads it elsewhere, how to get it)."""
    from medweave.settings import shared_data_dir

    physionet = Path(shared_data_dir()) / "wfdb"
    return {
        "pydicom-data": (_package_dir("data_store", "data"), "pydicom", "pip install pydicom-data"),
        "pydicom": (_package_dir("pydicom", "data", "test_files"), "pydicom", "pip install pydicom"),
        "nibabel": (_package_dir("nibabel", "tests", "data"), "nibabel", "pip install nibabel"),
        "pyedflib": (_package_dir("pyedflib", "tests", "data"), "pyedflib", "pip install pyedflib"),
        "hl7-fhir-r4": (_hl7_examples(cache), "fhir.resources", "npm pack hl7.fhir.r4.examples"),
        "physionet": (physionet if physionet.is_dir() else None, "wfdb", "the shared data ($MEDWEAVE_DATA)"),
    }


def run_set(name: str, folder: Path, reasons: int) -> dict:
    from medweave.ingest import ingest
    from medweave.store.catalog import Store

    files = sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with Store(Path(tmp) / "store", write=True) as store:
            report = ingest([folder], store, progress=False, args=f"corpus {name}")
        seconds = time.perf_counter() - t0
    unexpected = set(report.unexpected)
    failed = [(p, r) for p, r in report.errors if p not in unexpected]
    crashed = [(p, r) for p, r in report.errors if p in unexpected]
    top = Counter(_shape(r) for _, r in failed).most_common(reasons)
    return {"name": name, "files": files, "units": report.n_units, "ingested": report.n_ok,
            "skipped": report.n_not_data, "failed": len(failed), "crashed": len(crashed),
            "seconds": seconds, "top_failures": top, "crashes": crashed[:reasons],
            "top_skips": Counter(_shape(r) for _, r in report.skipped).most_common(3),
            "failed_files": failed}


def _shape(reason: str) -> str:
    """A reason with file names and numbers folded, so that equal causes count together."""
    import re

    text = re.sub(r"\S+\.(?:dcm|nii|gz|hea|json|edf|bdf|hdr|img|mgh|mgz|txt|xml|dat)\b", "FILE", reason)
    return re.sub(r"\d+", "N", text)[:160]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="run only these sets")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "medweave-corpus")
    ap.add_argument("--reasons", type=int, default=4, help="failure reasons shown per set")
    ap.add_argument("--list-failed", action="store_true", help="print every failed file with its reason")
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    rows, missing = [], []
    for name, (folder, reader, how) in sets(args.cache).items():
        if args.only and name not in args.only:
            continue
        if folder is None:
            missing.append((name, how))
            continue
        print(f"ingesting {name} ({folder}) ...", file=sys.stderr, flush=True)
        rows.append({**run_set(name, folder, args.reasons), "reader": reader})
    print("| set | read elsewhere by | files | units | ingested | skipped (not data) | failed | crashed | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['reader']} | {r['files']} | {r['units']} | {r['ingested']} | {r['skipped']} | "
              f"{r['failed']} | {r['crashed']} | {r['seconds']:.0f} |")
    for r in rows:
        if r["top_failures"] or r["crashes"]:
            print(f"\n{r['name']}: most common failure reasons")
            for reason, n in r["top_failures"]:
                print(f"  {n} x {reason}")
            for path, reason in r["crashes"]:
                print(f"  CRASHED {path}: {reason}")
        if args.list_failed:
            for path, reason in r["failed_files"]:
                print(f"  FAILED {path}: {reason}")
        if r["top_skips"]:
            print(f"{r['name']}: most common skip reasons: " + "; ".join(f"{n} x {s}" for s, n in r["top_skips"]))
    for name, how in missing:
        print(f"\n{name}: not available here ({how})")
    return 1 if any(r["crashed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
