"""Peak memory of every parse path on a ~10 MB input: the fuzz targets' own code, one subprocess each.

    python benchmarks/memory.py                       # every target (about 10 MB each)
    python benchmarks/memory.py --targets csv,fhir --mb 5

The fuzz runs cap their inputs at 2-24 KB (``-max_len``), so they cannot show the issue's bound ("a
10 MB input never takes more than a bounded multiple of its size"). This script grows a seed of each
target (``medweave.fuzz.TARGETS``) to about ``--mb`` MB in a way that reaches the parser — a long
report, a big CSV, FHIR Bundle or VQA list, a large picture, DICOM pixel data or NIfTI volume, a WFDB
record of many frames, a long header or config — and runs it through the target's ``one_input`` (the
adapter's units and read, every item built and checked as the store would) in a fresh subprocess. The
child sets the target up and runs its seeds first (imports, warm caches), reads the input, then takes
its RSS as the baseline, with the kernel's peak RSS reset to it (``/proc/self/clear_refs``; where that
cannot be done, ``resource.getrusage``'s peak since start); the row's "peak above baseline" is the
peak RSS while the input is parsed, less that baseline. Also rows for compressed inputs that expand a thousandfold (an Open-i
tar bomb, a gzipped NIfTI padded with zeros): their ratio is against the bytes on disk.

Prints input size, peak RSS above the baseline, the ratio, seconds, and what became of the input
(ingested with its item count, or reported with the reason). Exits 1 if a row's ratio is over
``--bound`` (default 20) or a child fails.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

WORDS = ("the lungs are clear no acute disease heart size normal pleural effusion opacity right left lobe mild "
         "stable patient seen today for cough fever pain chest radiograph shows").split()


def _words(n_bytes: int, seed: int = 0) -> str:
    """Varied clinical-looking words (so that gzip does not shrink them a hundredfold)."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_bytes:
        w = " ".join(rng.choice(WORDS) for _ in range(12)) + ". "
        out.append(w)
        size += len(w)
    return "".join(out)[:n_bytes]


def _seed(name: str, index: int = 0) -> bytes:
    from medweave.fuzz.targets import get_target

    return get_target(name).seeds()[index][1]


# --- growing a seed to about N bytes, per target ----------------------------------------------------


def grow_dicom(n: int) -> bytes:
    """CT_small.dcm with its pixel data grown to a square of ~n bytes (16-bit, varied values)."""
    import numpy as np
    import pydicom
    import pydicom.data

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    side = int((n / 2) ** 0.5)
    rng = np.random.default_rng(0)
    ds.Rows = ds.Columns = side
    ds.PixelData = rng.integers(0, 4000, size=side * side, dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def grow_nifti(n: int) -> bytes:
    """A NIfTI-1 volume of ~n bytes (int16) with the header of nibabel's example."""
    import nibabel as nib
    import numpy as np

    side = int((n / 2) ** (1 / 3))
    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(rng.integers(0, 1000, size=(side, side, side), dtype=np.int16), np.eye(4))
    return img.to_bytes()


def grow_nifti_gz_bomb(n: int) -> bytes:
    """A small .nii.gz (its header declares a 64^3 volume) padded with zeros: ~1,000x on expansion."""
    import nibabel as nib
    import numpy as np

    img = nib.Nifti1Image(np.zeros((64, 64, 64), dtype=np.int16), np.eye(4))
    return gzip.compress(img.to_bytes() + bytes(n * 1000), compresslevel=9, mtime=0)


def grow_image(n: int) -> bytes:
    """The first NIH picture scaled up to ~n bytes of PNG (grey, noise added so PNG cannot shrink it)."""
    import numpy as np
    from PIL import Image

    seed = Image.open(io.BytesIO(_seed("image"))).convert("L")
    side = int(n ** 0.5 * 1.05)
    big = np.asarray(seed.resize((side, side)), dtype=np.int16)
    big = big + np.random.default_rng(0).integers(-40, 40, size=big.shape)
    buf = io.BytesIO()
    Image.fromarray(big.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def grow_text(n: int) -> bytes:
    seed = _seed("text").decode("utf-8", "replace")
    return (seed * (n // len(seed) + 1)).encode()[:n]


def _openi_report(findings: str, rid: str = "CXR9") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<eCitation><uId id="{rid}"/><MedlineCitation><Article>'
            f'<Abstract><AbstractText Label="FINDINGS">{findings}</AbstractText><AbstractText Label="IMPRESSION">'
            "No acute disease.</AbstractText></Abstract></Article></MedlineCitation></eCitation>\n").encode()


def grow_openi_xml(n: int) -> bytes:
    return _openi_report(_words(n))


def grow_openi_tgz(n: int) -> bytes:
    """The Indiana reports' own archive, its members repeated under new names until ~n bytes."""
    from medweave.fuzz.targets import data_dir

    src = data_dir() / "iu-xray-reports" / "NLMCXR_reports.tgz"
    with tarfile.open(src, "r:gz") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile() and m.name.endswith(".xml")]
    copies = max(1, round(n / src.stat().st_size))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for c in range(copies):
            for name, data in members:
                info = tarfile.TarInfo(f"copy{c}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def grow_openi_tgz_bomb(n: int) -> bytes:
    """One report whose findings are ~n * 1000 bytes of one letter, gzipped: a thousandfold."""
    data = _openi_report("a" * (n * 1000))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("ecgen-radiology/9.xml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def grow_csv(n: int) -> bytes:
    """visits.csv's rows repeated, each copy with new patient ids."""
    lines = _seed("csv").decode().splitlines()
    head, rows = lines[0], [r for r in lines[1:] if r.strip()]
    out, size, i = [head], len(head), 0
    while size < n:
        for r in rows:
            cells = r.split(",")
            cells[0] = f"{cells[0]}x{i}"
            line = ",".join(cells)
            out.append(line)
            size += len(line) + 1
        i += 1
    return ("\n".join(out) + "\n").encode()


def grow_fhir(n: int) -> bytes:
    """A Bundle of the seeds' Observations (or any resource naming a patient) repeated to ~n bytes."""
    from medweave.fuzz.targets import get_target

    resources = []
    for name, data in get_target("fhir").seeds():
        if "invalid" in name:  # the seeds the adapter must refuse
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        entries = [e.get("resource") for e in doc.get("entry", [])] if doc.get("resourceType") == "Bundle" else [doc]
        resources += [r for r in entries if isinstance(r, dict) and r.get("resourceType") in ("Patient", "Observation")]
    patients = [r for r in resources if r["resourceType"] == "Patient"][:1]
    obs = [r for r in resources if r["resourceType"] == "Observation" and "subject" in r][:5]
    entries = [{"resource": p} for p in patients]
    size, i = 0, 0
    while size < n:
        for o in obs:
            r = dict(o, id=f"obs-{i}")
            if patients:
                r["subject"] = {"reference": f"Patient/{patients[0].get('id')}"}
            entries.append({"resource": r})
            size += len(json.dumps(r))
            i += 1
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


def grow_wfdb_header(n: int) -> bytes:
    seed = _seed("wfdb-header")
    comments = "".join(f"# {line}\n" for line in _words(n).split(". "))
    return seed + comments.encode()[:n]


def grow_wfdb_signal(n: int) -> bytes:
    """MIT-BIH record 100's signal (format 212, 3 bytes a frame) repeated to ~n bytes; the header
    beside it is rewritten to that many frames (see ``_child``)."""
    from medweave.fuzz.targets import data_dir

    real = (data_dir() / "wfdb" / "100.dat").read_bytes()
    data = (real * (n // len(real) + 1))[:n]
    return data[: len(data) // 3 * 3]


def grow_vqa(n: int) -> bytes:
    records = json.loads(_seed("vqa"))
    out, size, i = [], 0, 0
    while size < n:
        for r in records:
            q = dict(r, qid=f"{r.get('qid', 'q')}-{i}", question=f"{r.get('question', '')} ({i})")
            out.append(q)
            size += len(json.dumps(q))
            i += 1
    return json.dumps(out).encode()


def _comment_grown(name: str, n: int, index: int = 0) -> bytes:
    seed = _seed(name, index)
    return seed + "".join(f"# {line}\n" for line in _words(n).split(". ")).encode()[:n]


def grow_api(n: int) -> bytes:
    """A predict request body of ~n bytes (a JSON object with a long field)."""
    return bytes([0]) + json.dumps({"case_id": "P0001", "note": _words(n)}).encode()


ROWS = {  # row name -> (fuzz target, grow function)
    "dicom": ("dicom", grow_dicom),
    "dicom-header": ("dicom-header", grow_dicom),
    "nifti-header": ("nifti-header", grow_nifti),
    "nifti": ("nifti", grow_nifti),
    "nifti-gz-bomb": ("nifti", grow_nifti_gz_bomb),
    "image": ("image", grow_image),
    "text": ("text", grow_text),
    "openi-xml": ("openi-xml", grow_openi_xml),
    "openi-tgz": ("openi-tgz", grow_openi_tgz),
    "openi-tgz-bomb": ("openi-tgz", grow_openi_tgz_bomb),
    "csv": ("csv", grow_csv),
    "fhir": ("fhir", grow_fhir),
    "wfdb-header": ("wfdb-header", grow_wfdb_header),
    "wfdb-signal": ("wfdb-signal", grow_wfdb_signal),
    "vqa": ("vqa", grow_vqa),
    "config-toml": ("config-toml", lambda n: _comment_grown("config-toml", n)),
    "task-yaml": ("task-yaml", lambda n: _comment_grown("task-yaml", n)),
    "workflow-yaml": ("workflow-yaml", lambda n: _comment_grown("workflow-yaml", n)),
    "api": ("api", grow_api),
}
BOMBS = {"nifti-gz-bomb", "openi-tgz-bomb"}  # grown to n/1000 bytes on disk


# --- the child ------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int | None:
    """Reset the kernel's peak RSS of this process to its current RSS (``clear_refs`` 5, Linux 4.0+)
    and return that RSS in KiB; None where it cannot be reset (then getrusage's peak since start is
    the baseline, which hides an input that stays under the set-up's own peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kb("VmRSS")
    except OSError:
        return None


def _child(target_name: str, input_path: str) -> None:
    import resource

    from medweave.fuzz import targets as T

    outcome: dict = {"items": 0, "reported": []}
    check, refused = T.check_items, T._refused

    def counting_check(items, adapter_name):
        outcome["items"] += len(items)
        return check(items, adapter_name)

    def noting_refusal(exc, what):
        outcome["reported"].append(str(exc)[:160])
        return refused(exc, what)

    T.check_items, T._refused = counting_check, noting_refusal
    target = T.get_target(target_name)
    work = Path(tempfile.mkdtemp(prefix=f"mw-mem-{target_name}-"))
    one_input = target.setup(work)
    for _, seed in target.seeds():  # warm up: imports and caches, as a long-running ingest has them
        try:
            one_input(seed[: target.max_len])
        except Exception:  # noqa: BLE001  a seed's outcome is not measured
            pass
    data = Path(input_path).read_bytes()
    if target_name == "wfdb-signal":  # the header beside the signal: as many frames as the input holds
        hea = (work / "rec.hea").read_text().splitlines()
        at = next(i for i, ln in enumerate(hea) if ln.strip() and not ln.lstrip().startswith("#"))
        first = hea[at].split()
        first[3] = str(len(data) // 3)
        hea[at] = " ".join(first)
        (work / "rec.hea").write_text("\n".join(hea) + "\n")
    outcome.update(items=0, reported=[])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = _reset_peak()  # the kernel's peak RSS reset to the current RSS (else the run's peak so far)
    t0 = time.perf_counter()
    error = None
    try:
        one_input(data)
    except Exception as exc:  # noqa: BLE001  a finding: reported as such
        error = f"{type(exc).__name__}: {str(exc)[:160]}"
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if hwm is not None:  # VmHWM after a reset: the peak of this input alone, above the RSS before it
        base, peak = hwm, _status_kb("VmHWM")
    print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "grown_mb": (peak - base) / 1024,
                      "seconds": seconds, "items": outcome["items"], "reported": outcome["reported"],
                      "error": error}))


def run_row(row: str, mb: float, folder: Path) -> dict:
    target, grow = ROWS[row]
    n = int(mb * 1e6)
    data = grow(n // 1000 if row in BOMBS else n)
    path = folder / f"{row.split()[0]}.input"
    path.write_bytes(data)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", target, str(path)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"row": row, "bytes": len(data), "error": (proc.stderr or "no output")[-300:], "wall": wall}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(row=row, bytes=len(data), wall=wall, ratio=out["grown_mb"] * 2**20 / len(data))
    path.unlink()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=10.0, help="input size in MB (10^6 bytes)")
    ap.add_argument("--targets", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--bound", type=float, default=20.0, help="largest ratio allowed (exit 1 above it)")
    ap.add_argument("--json", default="", help="also write the rows to this file")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    rows = [r.strip() for r in args.targets.split(",") if r.strip()] if args.targets else list(ROWS)
    folder = Path(tempfile.mkdtemp(prefix="mw-mem-"))
    results, bad = [], 0
    print(f"| input | bytes | peak above baseline MB | ratio | seconds | outcome |\n|---|---|---|---|---|---|", flush=True)
    for row in rows:
        r = run_row(row, args.mb, folder)
        results.append(r)
        if "ratio" not in r:
            bad += 1
            print(f"| {row} | {r['bytes']:,} | - | - | {r['wall']:.0f} | CHILD FAILED: {r['error']!r} |", flush=True)
            continue
        if r["error"]:
            outcome = f"FINDING: {r['error']}"
            bad += 1
        elif r["reported"]:
            outcome = f"reported: {r['reported'][0]}"
        else:
            outcome = f"ingested ({r['items']} items)" if ROWS[row][0] not in (
                "config-toml", "task-yaml", "workflow-yaml", "api", "dicom-header", "nifti-header") else "read"
        if r["ratio"] > args.bound and not (row in BOMBS and r["reported"]):  # a refused bomb: against its disk bytes
            bad += 1
            outcome += f" — OVER THE BOUND ({args.bound:g}x)"
        print(f"| {row} | {r['bytes']:,} | {r['grown_mb']:.1f} | {r['ratio']:.1f} | {r['seconds']:.1f} | "
              f"{outcome.replace('|', '/')} |", flush=True)
    load = os.getloadavg()
    bases = [r["base_mb"] for r in results if "base_mb" in r] or [0]
    print(f"\nbaseline: the child's RSS after setup, its seeds and reading the input ({min(bases):.0f}-{max(bases):.0f} MB); "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
