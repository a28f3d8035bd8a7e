"""DICOM ingest benchmark: medweave's ingest against a bare pydicom loop over the same files.

Writes 10 x N small CT-like DICOM files (128x128 int16 slices in series of 20, with patient names,
ids, birth dates, institutions and physicians to de-identify), then, for N and for 10 x N files:

* bare: ``pydicom.dcmread(f).pixel_array`` for every file;
* medweave: ``medweave.ingest.ingest`` of the same files into a fresh store (sniffing, fingerprints,
  de-identification, pixel statistics, blob writes, catalog commits, series volumes).

Each run is a fresh subprocess (so that its peak memory, ru_maxrss, is its own); the two commands
alternate (bare, medweave, bare, medweave, ...) ``--repeats`` times and the table shows the median
rate of each and the median of the per-pair ratios, so that load from other jobs on the machine
hits both alike; the CPU ratio (user + system seconds of each process, all its threads) is the
figure load from other jobs distorts least. Then one more process times the stages of medweave's DICOM adapter file by file
(the runner and catalog share is the rest of the medweave time). The load average is printed
before and after. Target: medweave >= 0.5x the bare rate, peak memory flat from N to 10 x N.

    python benchmarks/ingest.py --n 200 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERIES_LEN = 20
SIZE = 128
FIRST_NAMES = ["Ada", "Bram", "Cleo", "Dario", "Edda", "Femi", "Greta", "Hugo"]
LAST_NAMES = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Brennan", "Kowalski", "Ferreira", "Haddad"]


def _template():
    """One CT slice data set; ``write_files`` varies the identifying and geometric fields."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality, ds.BodyPartExamined = CTImageStorage, "CT", "CHEST"
    ds.PatientSex, ds.StudyTime, ds.StudyDescription = "M", "083000", "CT THORAX"
    ds.InstitutionName, ds.StationName = "Riverside General Hospital", "CT-SCANNER-2"
    ds.ReferringPhysicianName, ds.Manufacturer = "Okoye^Ngozi", "ACME Medical"
    ds.ImageOrientationPatient, ds.PixelSpacing, ds.SliceThickness = [1, 0, 0, 0, 1, 0], [0.7, 0.7], 2.5
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ds, ((xx - SIZE / 2) ** 2 + (yy - SIZE / 2) ** 2 < (SIZE / 3) ** 2).astype(np.int16)


def write_files(folder: Path, n: int) -> list[Path]:
    """``n`` slices in series of ``SERIES_LEN``, two series per patient, one file per slice."""
    from pydicom.uid import generate_uid

    ds, disc = _template()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        series, z = divmod(i, SERIES_LEN)
        patient = series // 2
        ds.PatientName = f"{LAST_NAMES[patient % 8]}^{FIRST_NAMES[patient // 8 % 8]}"
        ds.PatientID, ds.PatientBirthDate = f"MRN{100000 + patient}", f"19{50 + patient % 40}0612"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(patient)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(series)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(i)])
        ds.StudyDate, ds.AccessionNumber = f"2021{1 + series % 12:02d}15", f"A{series:07d}"
        ds.InstanceNumber, ds.ImagePositionPatient = z + 1, [-45.0, -45.0, 2.5 * z]
        ds.PixelData = (disc * (900 + 5 * z) + i % 7).tobytes()
        path = folder / f"img{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# --- workers (run in a fresh interpreter each) ----------------------------------------------------


def run_bare(files: list[Path], _store: Path) -> None:
    import pydicom

    for f in files:
        pydicom.dcmread(f).pixel_array


def run_medweave(files: list[Path], store_dir: Path) -> None:
    from medweave.ingest import ingest
    from medweave.store.catalog import Store

    with Store(store_dir, write=True) as store:
        report = ingest(files, store, progress=False, workers=1)
    if report.n_failed:
        raise SystemExit(f"medweave failed on {report.n_failed} files: {report.errors[:3]}")


def run_stages(files: list[Path], _store: Path) -> dict[str, float]:
    """Seconds per stage of the DICOM adapter over ``files`` (same code as ``DicomAdapter.read``)."""
    import hashlib

    from medweave.ingest.adapters import dicom as D
    from medweave.ingest.base import IngestContext
    from medweave.store.deid import Deidentifier
    from medweave.store.deid_dicom import deidentify, write_patched

    deid = Deidentifier(b"\x07" * 32)
    ctx = IngestContext(store=None, deid=deid)
    names = ("read + hash", "parse", "de-identify", "write (patch)", "pixels + fields")
    totals = dict.fromkeys(names, 0.0)
    for f in files:
        t0 = time.perf_counter()
        data = f.read_bytes()
        hashlib.sha256(data).hexdigest()
        t1 = time.perf_counter()
        with D.quiet_pydicom():
            ds, spans = D.read_dataset(data)
            t2 = time.perf_counter()
            result = deidentify(ds, deid, "default")
            t3 = time.perf_counter()
            blob = write_patched(result, data, spans)
            t4 = time.perf_counter()
            D.image_item(result, blob, D._shared(result.ds, result.patient_id, result.facts, ctx))
            t5 = time.perf_counter()
        for name, a, b in zip(names, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            totals[name] += b - a
    return totals


WORKERS = {"bare": run_bare, "medweave": run_medweave, "stages": run_stages}


def worker(kind: str, list_file: Path, store_dir: Path) -> None:
    """Import what the run needs, then time it alone; print seconds and peak memory as JSON."""
    files = [Path(p) for p in list_file.read_text().split("\n") if p]
    if kind == "bare":
        import pydicom.pixels  # noqa: F401
    else:
        from medweave.ingest.runner import _adapter_instances

        _adapter_instances([])  # imports every adapter once (imports are not part of the rate)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start, cpu_start = time.perf_counter(), usage.ru_utime + usage.ru_stime
    extra = WORKERS[kind](files, store_dir)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_start  # all threads (DuckDB's too)
    print(json.dumps({"seconds": seconds, "cpu": cpu, "files": len(files), "peak_mb": usage.ru_maxrss / 1024,
                      "stages": extra}))


def measure(kind: str, files: list[Path], work: Path, run: int) -> dict:
    list_file = work / f"{kind}-{len(files)}.txt"
    list_file.write_text("\n".join(map(str, files)))
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--list", str(list_file),
         "--store", str(work / f"store-{kind}-{len(files)}-{run}")],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="files in the small run (the large one has 10x)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating bare/medweave runs per size")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--list", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.list, args.store)
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="medweave-bench-") as tmp:
        work = Path(tmp)
        files = write_files(work / "dicom", 10 * args.n)
        print(f"{'N':>6} {'files/s bare':>13} {'files/s medweave':>17} {'ratio':>6} {'CPU ratio':>9} "
              f"{'peak MB bare':>13} {'peak MB medweave':>17}")
        medweave_seconds = {}
        for n in (args.n, 10 * args.n):
            bare, mw = [], []
            for run in range(args.repeats):
                bare.append(measure("bare", files[:n], work, run))
                mw.append(measure("medweave", files[:n], work, run))
            ratios = [b["seconds"] / m["seconds"] for b, m in zip(bare, mw)]
            cpu_ratios = [b["cpu"] / m["cpu"] for b, m in zip(bare, mw)]
            rate_bare = statistics.median(n / b["seconds"] for b in bare)
            rate_mw = statistics.median(n / m["seconds"] for m in mw)
            medweave_seconds[n] = statistics.median(m["seconds"] for m in mw)
            print(f"{n:>6} {rate_bare:>13.0f} {rate_mw:>17.0f} {statistics.median(ratios):>6.2f} "
                  f"{statistics.median(cpu_ratios):>9.2f} "
                  f"{max(b['peak_mb'] for b in bare):>13.0f} {max(m['peak_mb'] for m in mw):>17.0f}")
        n = 10 * args.n
        stages = measure("stages", files[:n], work, 0)["stages"]
        print(f"\nmedweave per file, {n} files (ms):")
        for name, seconds in stages.items():
            print(f"  {name:<34} {1000 * seconds / n:6.3f}")
        rest = medweave_seconds[n] - sum(stages.values())
        print(f"  {'runner + catalog (blobs, commits,':<34}\n  {' series volumes; the rest)':<34} "
              f"{1000 * rest / n:6.3f}")
        print(f"  {'total':<34} {1000 * medweave_seconds[n] / n:6.3f}")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
