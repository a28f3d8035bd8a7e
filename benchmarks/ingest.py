"""DICOM ingest benchmark: medweave's ingest against a bare pydicom loop.

Writes N small CT-like DICOM files (128x128 int16 slices in series of 20, with patient names, ids,
birth dates and institutions to de-identify), then measures, each in a fresh subprocess so that the
peak memory (ru_maxrss) belongs to that run alone:

* bare: ``pydicom.dcmread(f)`` and ``ds.pixel_array`` for every file;
* medweave: ``medweave.ingest.ingest`` of the same files into a fresh store (sniffing, fingerprinting,
  de-identification, pixel statistics, blob writes, catalog commits, series volumes).

for N and 10 x N files, and prints one table. Target: medweave >= 0.5x the bare rate, and a peak
memory that does not grow with N.

    python benchmarks/ingest.py --n 200
"""

from __future__ import annotations

import argparse
import json
import resource
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
        report = ingest(files, store, progress=False)
    if report.n_failed:
        raise SystemExit(f"medweave failed on {report.n_failed} files: {report.errors[:3]}")


WORKERS = {"bare": run_bare, "medweave": run_medweave}


def worker(kind: str, list_file: Path, store_dir: Path) -> None:
    """Import what the run needs, then time it alone; print seconds and peak memory as JSON."""
    files = [Path(p) for p in list_file.read_text().split("\n") if p]
    if kind == "medweave":
        import medweave.ingest.adapters.dicom  # noqa: F401  (imports are not part of the rate)
    else:
        import pydicom.pixels  # noqa: F401
    start = time.perf_counter()
    WORKERS[kind](files, store_dir)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "files": len(files), "peak_mb": peak_mb}))


def measure(kind: str, files: list[Path], work: Path) -> dict:
    list_file = work / f"{kind}-{len(files)}.txt"
    list_file.write_text("\n".join(map(str, files)))
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--list", str(list_file),
         "--store", str(work / f"store-{kind}-{len(files)}")],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="files in the small run (the large one has 10x)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--list", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.list, args.store)
    with tempfile.TemporaryDirectory(prefix="medweave-bench-") as tmp:
        work = Path(tmp)
        files = write_files(work / "dicom", 10 * args.n)
        print(f"{'N':>6} {'files/s bare':>13} {'files/s medweave':>17} {'ratio':>6} "
              f"{'peak MB bare':>13} {'peak MB medweave':>17}")
        for n in (args.n, 10 * args.n):
            bare, mw = measure("bare", files[:n], work), measure("medweave", files[:n], work)
            rate_bare, rate_mw = n / bare["seconds"], n / mw["seconds"]
            print(f"{n:>6} {rate_bare:>13.0f} {rate_mw:>17.0f} {rate_mw / rate_bare:>6.2f} "
                  f"{bare['peak_mb']:>13.0f} {mw['peak_mb']:>17.0f}")


if __name__ == "__main__":
    main()
