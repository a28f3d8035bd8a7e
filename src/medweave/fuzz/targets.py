"""The fuzz targets, their seeds (the real files the tests use) and what counts as a finding.

Each ``Target`` has ``setup(work_dir)``, which prepares what the input needs beside it (the companion
files of a record, a mapping, an images folder, an app) and returns ``one_input(data: bytes)``. An
adapter target writes the input under a fixed name in ``work_dir`` and reads it as the ingest runner's
reader does (``units`` then ``read``, every item built), then checks each item as the store would
before committing it (known fields, column types, JSON-able labels and meta). The tool's own refusal
(``IngestError``, ``NotADataFile``; ``ConfigError``, ``TaskError``, ``WorkflowError``; an API error
below 500 with a JSON message) is a pass; ``Finding`` or any other exception is a finding.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import math
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..settings import shared_data_dir

REPO = Path(__file__).resolve().parents[3]  # the checkout (tests/data lives there); absent in a wheel
SECRET = b"medweave fuzzing: a fixed secret"


class Finding(Exception):
    """What the target saw that the tool should never do (a 500, an item the store would refuse...)."""


@dataclass
class Target:
    name: str
    description: str
    setup: Callable[[Path], Callable[[bytes], None]]
    seeds: Callable[[], list[tuple[str, bytes]]]
    max_len: int = 4096
    instrument: tuple[str, ...] = ("medweave",)  # packages atheris instruments for coverage
    notes: str = ""


# --- where the seeds come from -------------------------------------------------------------------


def data_dir() -> Path:
    return Path(os.environ.get("MEDWEAVE_DATA") or shared_data_dir())


def _pkg_dir(module: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent if spec and spec.origin else None


def _files(folder: Path | None, names: list[str]) -> list[tuple[str, bytes]]:
    if folder is None:
        return []
    return [(n, (folder / n).read_bytes()) for n in names if (folder / n).is_file()]


def _pydicom_seeds() -> list[tuple[str, bytes]]:
    base = _pkg_dir("pydicom")
    names = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "test-SR.dcm", "reportsi.dcm", "SC_rgb_small_odd.dcm",
             "SC_rgb_rle.dcm", "SC_rgb_small_odd_jpeg.dcm", "JPEGLSNearLossless_08.dcm", "ExplVR_BigEndNoMeta.dcm",
             "UN_sequence.dcm", "nested_priv_SQ.dcm", "no_meta_group_length.dcm", "rtdose_1frame.dcm",
             "empty_charset_LEI.dcm", "meta_missing_tsyntax.dcm"]
    return _files(base / "data" / "test_files" if base else None, names)


def _nifti_seeds() -> list[tuple[str, bytes]]:
    base = _pkg_dir("nibabel")
    folder = base / "tests" / "data" if base else None
    out = _files(folder, ["resampled_anat_moved.nii", "row_major.dconn.nii"])
    for n in ("standard.nii.gz", "example_nifti2.nii.gz"):
        if folder is not None and (folder / n).is_file():
            out.append((n, (folder / n).read_bytes()))
    return out


def _image_seeds() -> list[tuple[str, bytes]]:
    nih = data_dir() / "nih-cxr14-800" / "train"
    out = []
    for cls in ("0_normal", "1_abnormal"):
        folder = nih / cls
        if folder.is_dir():
            out += [(p.name, p.read_bytes()) for p in sorted(folder.glob("*.png"))[:2]]
    out += _files(data_dir() / "vqa-rad" / "images", ["synpic59536.jpg"])
    if out:  # the same picture as TIFF (the third format the adapter reads)
        from PIL import Image

        buf = io.BytesIO()
        Image.open(io.BytesIO(out[0][1])).save(buf, format="TIFF")
        out.append((out[0][0] + ".tiff", buf.getvalue()))
    return out


def _openi_members(limit: int = 4) -> list[tuple[str, bytes]]:
    tgz = data_dir() / "iu-xray-reports" / "NLMCXR_reports.tgz"
    if not tgz.is_file():
        return []
    out = []
    with tarfile.open(tgz, "r:gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".xml"):
                out.append((Path(m.name).name, tar.extractfile(m).read()))
                if len(out) >= limit:
                    break
    return out


def _openi_tgz_seeds() -> list[tuple[str, bytes]]:
    members = _openi_members(2)
    if not members:
        return []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(f"ecgen-radiology/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return [("two-reports.tgz", buf.getvalue())]


def _text_seeds() -> list[tuple[str, bytes]]:
    out = _files(REPO / "tests" / "data" / "deid", ["notes.txt"])
    summ = data_dir() / "openi-summ" / "train.jsonl"
    if summ.is_file():
        with open(summ, encoding="utf-8") as fh:
            for i, line in zip(range(3), fh):
                rec = json.loads(line)
                out.append((f"openi-summ-{i}.txt", f"FINDINGS: {rec['inputs']}\nIMPRESSION: {rec['target']}\n".encode()))
    return out


def _fhir_seeds() -> list[tuple[str, bytes]]:
    out = []
    for sub in ("fhir", "fhir-hl7", "fhir-hl7-subjects"):
        folder = REPO / "tests" / "data" / sub
        if folder.is_dir():
            out += [(f"{sub}/{p.name}", p.read_bytes()) for p in sorted(folder.glob("*.json"))]
    return out


def _vqa_images() -> list[str]:
    return ["synpic59536.jpg", "synpic46720.jpg"]


def _vqa_seeds() -> list[tuple[str, bytes]]:
    path = data_dir() / "vqa-rad" / "trainset.json"
    if not path.is_file():
        return []
    records = [r for r in json.loads(path.read_text()) if r["image_name"] in _vqa_images()]
    return [("vqa-rad-two-pictures.json", json.dumps(records[:6], indent=1).encode()),
            ("vqa-rad-one.json", json.dumps(records[:1]).encode())]


# --- WFDB: records cut to a few hundred frames (fast to read), names made fixed -----------------

_WFDB_RECORDS = {  # record -> (new name, frames kept, bytes per frame of each signal file, header bytes)
    "100": ("rec", 1200, {"100.dat": 3}, {"100.dat": 0}),
    "s0010_re": ("rec2", 100, {"s0010_re.dat": 24, "s0010_re.xyz": 6}, {}),
    "a103l": ("rec3", 250, {"a103l.mat": 6}, {"a103l.mat": 24}),
}


def _wfdb_header(record: str) -> bytes | None:
    """The real header of ``record`` with its sample count cut and its files renamed (see above)."""
    hea = data_dir() / "wfdb" / f"{record}.hea"
    if not hea.is_file():
        return None
    new, frames, files, _ = _WFDB_RECORDS[record]
    out, seen_record_line = [], False
    for ln in hea.read_text().splitlines():
        if not seen_record_line and ln.strip() and not ln.lstrip().startswith("#"):
            first = ln.split()
            first[0] = new
            if len(first) > 3:
                first[3] = str(frames)
            ln, seen_record_line = " ".join(first), True
        for old in files:
            if ln.startswith(old + " "):
                ln = ln.replace(old, old.replace(record, new), 1)
        out.append(ln)
    return ("\n".join(out) + "\n").encode()


def _wfdb_companions(folder: Path) -> None:
    """The signal files of the cut records (and record 100's real annotations) in ``folder``."""
    src = data_dir() / "wfdb"
    for record, (new, frames, files, offsets) in _WFDB_RECORDS.items():
        for name, per_frame in files.items():
            if (src / name).is_file():
                with open(src / name, "rb") as fh:
                    data = fh.read(offsets.get(name, 0) + frames * per_frame)
                (folder / name.replace(record, new)).write_bytes(data)
    if (src / "100.atr").is_file():
        (folder / "rec.atr").write_bytes((src / "100.atr").read_bytes())


def _wfdb_header_seeds() -> list[tuple[str, bytes]]:
    return [(f"{r}.hea", h) for r in _WFDB_RECORDS if (h := _wfdb_header(r)) is not None]


def _wfdb_signal_seeds() -> list[tuple[str, bytes]]:
    src = data_dir() / "wfdb" / "100.dat"
    if not src.is_file():
        return []
    with open(src, "rb") as fh:
        return [("100.dat (first 1200 frames)", fh.read(1200 * 3))]


# --- checking items as the store would ------------------------------------------------------------

_INT_RANGE = {"INTEGER": 2**31, "BIGINT": 2**63}


def check_items(items: list, adapter_name: str) -> None:
    """Raise ``Finding`` for an item the store's commit would refuse or store wrong."""
    import numpy as np

    from ..store.catalog import ITEM_FIELDS, Modality, canonical_json

    for it in items:
        Modality(it.modality)
        it.item_id(it.content_hash())
        if not isinstance(it.patient_id, str) or not it.patient_id:
            raise Finding(f"{adapter_name}: item without a patient id ({it.patient_id!r})")
        if it.blob is not None and not isinstance(it.blob, (bytes, bytearray)):
            raise Finding(f"{adapter_name}: blob of type {type(it.blob).__name__}")
        unknown = set(it.fields) - set(ITEM_FIELDS)
        if unknown:
            raise Finding(f"{adapter_name}: unknown item fields {sorted(unknown)}")
        for key, value in it.fields.items():
            kind = ITEM_FIELDS[key]
            if value is None:
                continue
            if kind == "VARCHAR":
                ok = isinstance(value, str) and "\x00" not in value
            elif kind == "DOUBLE":
                ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            elif kind in _INT_RANGE:
                ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
                    and -_INT_RANGE[kind] <= int(value) < _INT_RANGE[kind]
            elif kind == "TIMESTAMP":
                ok = isinstance(value, (dt.date, dt.datetime)) and 1 <= value.year <= 9999
            else:
                ok = True
            if not ok:
                raise Finding(f"{adapter_name}: field {key} ({kind}) = {value!r:.80} of type {type(value).__name__}")
        for part in ("labels", "meta"):
            value = getattr(it, part)
            if value:
                text = canonical_json(value)
                if "NaN" in text and _has_nan(value):
                    raise Finding(f"{adapter_name}: {part} holds NaN (not JSON): {text[:80]}")


def _has_nan(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isnan(obj) or math.isinf(obj)
    if isinstance(obj, dict):
        return any(_has_nan(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_nan(v) for v in obj)
    return False


def _refused(exc: BaseException, what: str) -> None:
    """The tool's own refusal must say why."""
    if not str(exc).strip():
        raise Finding(f"{what}: {type(exc).__name__} without a reason") from exc


# --- adapter targets -----------------------------------------------------------------------------


def adapter_target(name: str, adapter: str, input_name: str, seeds, description: str, max_len: int = 4096,
                   options: dict | None = None, forced: bool = False, companions=None,
                   instrument: tuple[str, ...] = ("medweave",)) -> Target:
    def setup(work: Path) -> Callable[[bytes], None]:
        from ..ingest.base import ADAPTERS, IngestContext, IngestError, NotADataFile
        from ..store.deid import Deidentifier

        work.mkdir(parents=True, exist_ok=True)
        if companions:
            companions(work)
        cls = ADAPTERS.get(adapter)
        deid = Deidentifier(SECRET)
        path = work / input_name
        opts = dict(options or {})

        def one_input(data: bytes) -> None:
            path.write_bytes(data)
            a = cls()  # a fresh instance: no cache from the previous input
            ctx = IngestContext(store=None, deid=deid, options=opts, forced=forced)
            try:
                for unit in a.units(path, ctx):
                    ctx.warnings, ctx.seen_ids = [], set()
                    try:
                        items = list(a.read(unit, ctx))
                    except (IngestError, NotADataFile) as exc:
                        _refused(exc, adapter)
                        continue
                    check_items(items, adapter)
            except (IngestError, NotADataFile) as exc:
                _refused(exc, adapter)
            finally:
                if adapter == "openi":
                    list(a.finish(ctx))  # closes the archives it opened

        return one_input

    return Target(name, description, setup, seeds, max_len, instrument)


def _csv_companions(work: Path) -> None:
    src = REPO / "tests" / "data" / "tables" / "visits.mapping.toml"
    text = src.read_text() if src.is_file() else 'form = "wide"\npatient = "patient_id"\n'
    (work / "visits.mapping.toml").write_text(text)


def _csv_seeds() -> list[tuple[str, bytes]]:
    return _files(REPO / "tests" / "data" / "tables", ["visits.csv"])


def _vqa_companions(work: Path) -> None:
    (work / "images").mkdir(exist_ok=True)
    for name in _vqa_images():
        src = data_dir() / "vqa-rad" / "images" / name
        if src.is_file():
            (work / "images" / name).write_bytes(src.read_bytes())


def _wfdb_signal_companions(work: Path) -> None:
    header = _wfdb_header("100")
    if header is not None:
        (work / "rec.hea").write_bytes(header)


def _wfdb_signal_setup(work: Path) -> Callable[[bytes], None]:
    """The signal file is the input; the header beside it (record 100, cut) stays as it is."""
    from ..ingest.base import ADAPTERS, IngestContext, IngestError, NotADataFile
    from ..store.deid import Deidentifier

    work.mkdir(parents=True, exist_ok=True)
    _wfdb_signal_companions(work)
    deid, hea, dat = Deidentifier(SECRET), work / "rec.hea", work / "rec.dat"

    def one_input(data: bytes) -> None:
        dat.write_bytes(data)
        a = ADAPTERS.get("wfdb")()
        ctx = IngestContext(store=None, deid=deid)
        try:
            for unit in a.units(hea, ctx):
                check_items(list(a.read(unit, ctx)), "wfdb")
        except (IngestError, NotADataFile) as exc:
            _refused(exc, "wfdb")

    return one_input


def _dicom_header_setup(work: Path) -> Callable[[bytes], None]:
    """The DICOM reader alone (``read_dataset``: medweave's fast reader, else pydicom), no pixels."""
    from ..ingest.adapters.dicom import read_dataset
    from ..ingest.base import IngestError

    def one_input(data: bytes) -> None:
        try:
            ds, spans = read_dataset(data)
        except IngestError as exc:
            _refused(exc, "dicom")
            return
        if spans is not None:
            for tag, (start, end) in spans.items():
                if not 0 <= start <= end <= len(data):
                    raise Finding(f"element {tag:08x} said to lie at {start}..{end} of {len(data)} bytes")

    return one_input


def _nifti_header_setup(work: Path) -> Callable[[bytes], None]:
    """The NIfTI/MGH parser alone (``nifti.parse`` and the item's fields), from bytes."""
    from ..ingest.adapters.nifti import parse, volume_fields
    from ..ingest.base import IngestError

    def one_input(data: bytes) -> None:
        try:
            volume = parse(data, "volume.nii")
        except IngestError as exc:
            _refused(exc, "nifti")
            return
        fields, meta = volume_fields(volume)
        if _has_nan(meta):
            raise Finding(f"nifti: meta holds NaN or infinity: {json.dumps(meta, default=str)[:120]}")

    return one_input


# --- loader targets ------------------------------------------------------------------------------


def _config_seeds(suffix: str) -> Callable[[], list[tuple[str, bytes]]]:
    def seeds():
        out = [(p.name, p.read_bytes()) for p in sorted((REPO / "configs").glob(f"*{suffix}"))]
        return out
    return seeds


def loader_target(name: str, file_name: str, load: str, seeds, description: str, max_len: int = 4096) -> Target:
    def setup(work: Path) -> Callable[[bytes], None]:
        from ..agents.workflow import WorkflowError, load_workflow
        from ..config import ConfigError, load_config
        from ..evaluate.samples import TaskError
        from ..evaluate.tasks import load_task

        work.mkdir(parents=True, exist_ok=True)
        path = work / file_name
        fn = {"config": load_config, "task": load_task, "workflow": load_workflow}[load]
        allowed = (ConfigError, TaskError, WorkflowError)

        def one_input(data: bytes) -> None:
            path.write_bytes(data)
            try:
                fn(path)
            except allowed as exc:
                _refused(exc, load)

        return one_input

    return Target(name, description, setup, seeds, max_len)


def _task_seeds() -> list[tuple[str, bytes]]:
    folder = REPO / "src" / "medweave" / "evaluate" / "tasks"
    return [(p.name, p.read_bytes()) for p in sorted(folder.glob("*.yaml"))]


def _workflow_seeds() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((REPO / "configs").glob("*.yaml"))]


# --- the API: request bodies ----------------------------------------------------------------------

BOUNDARY = "mwfuzzboundary"
# (method, path, content type): the first input byte picks one, the rest is the body (or query string)
ROUTES = [
    ("POST", "/api/predict", "application/json"),
    ("POST", "/api/ask", f"multipart/form-data; boundary={BOUNDARY}"),
    ("POST", "/api/similar", f"multipart/form-data; boundary={BOUNDARY}"),
    ("POST", "/api/upload", f"multipart/form-data; boundary={BOUNDARY}"),
    ("POST", "/v1/chat/completions", "application/json"),
    ("GET", "/api/cases", None),
    ("GET", "/api/cases/{case}/explain", None),
    ("GET", "/api/cases/{case}/similar", None),
]  # /api/transcribe is left to schemathesis: each input would run Whisper


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> bytes:
    out = b""
    for k, v in fields.items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    for k, (fname, data) in files.items():
        out += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"; filename="{fname}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _api_seeds() -> list[tuple[str, bytes]]:
    pics = _image_seeds()
    png = pics[0][1] if pics else b"\x89PNG\r\n\x1a\n"
    csv = (_csv_seeds() or [("visits.csv", b"patient_id,x\nA,1\n")])[0][1]
    seeds = [
        (0, json.dumps({"case_id": "P0001"}).encode()),
        (1, multipart({"question": "Is there an opacity in the lungs?", "k": "3"}, {"image": ("x.png", png)})),
        (1, multipart({"question": "What organ is shown?"}, {})),
        (2, multipart({"k": "2"}, {"image": ("scan.png", png)})),
        (3, multipart({}, {"files": ("visits.csv", csv)})),
        (4, json.dumps({"model": "medweave", "messages": [{"role": "user", "content": "Is the chest normal?"}],
                        "max_tokens": 8}).encode()),
        (5, b"split=test&offset=0&limit=5"),
        (6, b"P0001?parts=modalities,tabular&fast=1"),
        (7, b"P0001?modality=image&k=3"),
    ]
    return [(f"{ROUTES[i][1]} #{n}", bytes([i]) + body) for n, (i, body) in enumerate(seeds)]


def _api_setup(work: Path) -> Callable[[bytes], None]:
    """The app as `medweave serve` builds it: with the model of ``MEDWEAVE_FUZZ_MODEL`` (and its store)
    when set, else with a store of a few ingested test files; calls go to the ASGI app in-process."""
    import asyncio
    import logging
    from urllib.parse import quote

    from ..ingest import ingest
    from ..serve.app import create_app
    from ..store import Store

    logging.getLogger("medweave.serve").setLevel(logging.CRITICAL)
    work.mkdir(parents=True, exist_ok=True)
    model = os.environ.get("MEDWEAVE_FUZZ_MODEL")
    vqa = os.environ.get("MEDWEAVE_FUZZ_VQA_MODEL")
    if model:
        app = create_app(model_dir=model, vqa_model_dir=vqa or None, rate_limit=0, max_upload_bytes=1 << 20)
    else:
        store = work / "store"
        src = work / "src"
        src.mkdir(exist_ok=True)
        for name, data in _csv_seeds() + [("P1_note.txt", b"Findings: clear lungs. Impression: normal.\n")]:
            (src / name).write_bytes(data)
        _csv_companions(src)
        with Store(store, write=True) as st:
            ingest([src], st, progress=False, workers=1)
        app = create_app(store=store, vqa_model_dir=vqa or None, rate_limit=0, max_upload_bytes=1 << 20)
    loop = asyncio.new_event_loop()

    async def call(method: str, path: str, query: bytes, ctype: str | None, body: bytes):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode("utf-8", "surrogateescape"),
                 "query_string": query, "root_path": "", "server": ("127.0.0.1", 8000),
                 "client": ("127.0.0.1", 5555),
                 "headers": [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode())]
                 + ([(b"content-type", ctype.encode())] if ctype else [])}
        sent = False
        out: dict[str, Any] = {"body": b""}

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
                out["headers"] = dict(message.get("headers") or [])
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        await app(scope, receive, send)
        return out

    def one_input(data: bytes) -> None:
        if not data:
            return
        method, path, ctype = ROUTES[data[0] % len(ROUTES)]
        rest = data[1:]
        query = b""
        if method == "GET":
            head, _, query = rest.partition(b"?")
            if "{case}" in path:
                path = path.replace("{case}", quote(head.decode("utf-8", "replace"), safe=""))
            else:
                query = rest
            rest = b""
        out = loop.run_until_complete(call(method, path, query, ctype, rest))
        status = out.get("status")
        if status is None:
            raise Finding(f"{method} {path}: no response")
        if status >= 500 and status != 503:
            raise Finding(f"{method} {path}: HTTP {status}: {out['body'][:300]!r}")
        if status >= 400:
            try:
                err = json.loads(out["body"])["error"]
                ok = isinstance(err.get("message"), str) and err["message"].strip() and err.get("code") == status
            except (ValueError, KeyError, TypeError, AttributeError):
                ok = False
            if not ok:
                raise Finding(f"{method} {path}: HTTP {status} without a JSON error message: {out['body'][:200]!r}")
            if b"Traceback" in out["body"] or b'File "/' in out["body"]:
                raise Finding(f"{method} {path}: a stack trace in the error: {out['body'][:200]!r}")

    return one_input


# --- the list ------------------------------------------------------------------------------------

TARGETS: dict[str, Target] = {t.name: t for t in [
    adapter_target("dicom", "dicom", "image.dcm", _pydicom_seeds, "DICOM files (pydicom's test files)",
                   max_len=16 * 1024, instrument=("medweave", "pydicom")),
    Target("dicom-header", "the DICOM reader alone (file meta and data set, no pixels)", _dicom_header_setup,
           _pydicom_seeds, 4096, ("medweave", "pydicom")),
    Target("nifti-header", "the NIfTI/MGH header parser alone, from bytes", _nifti_header_setup, _nifti_seeds,
           4096, ("medweave", "nibabel")),
    adapter_target("nifti", "nifti", "P1_volume.nii", _nifti_seeds, "NIfTI-1/2 volumes, gzipped or not (nibabel's test data)",
                   max_len=24 * 1024, instrument=("medweave", "nibabel")),
    adapter_target("image", "image", "P1_picture.png", _image_seeds, "PNG, JPEG, TIFF pictures (NIH CXR14, VQA-RAD)",
                   max_len=16 * 1024),
    adapter_target("text", "text", "P1_note.txt", _text_seeds, "plain-text reports and notes, through the scrubber",
                   max_len=2048),
    adapter_target("openi-xml", "openi", "report.xml", _openi_members, "Open-i XML reports (Indiana collection)",
                   max_len=4096),
    adapter_target("openi-tgz", "openi", "reports.tgz", _openi_tgz_seeds, "a .tgz of Open-i XML reports",
                   max_len=8 * 1024),
    adapter_target("csv", "csv", "visits.csv", _csv_seeds, "a CSV table with its TOML mapping beside it",
                   max_len=4096, companions=_csv_companions),
    adapter_target("fhir", "fhir", "resource.json", _fhir_seeds, "FHIR R4 JSON resources and Bundles (HL7's examples)",
                   max_len=16 * 1024),  # fhir.resources is too large to instrument
    adapter_target("wfdb-header", "wfdb", "rec.hea", _wfdb_header_seeds,
                   "WFDB headers (MIT-BIH 100, PTB s0010_re, PhysioNet 2015 a103l), signals and annotations beside",
                   max_len=4096, companions=_wfdb_companions, instrument=("medweave", "wfdb")),
    Target("wfdb-signal", "WFDB signal file (.dat, format 212) of MIT-BIH record 100 under its header",
           _wfdb_signal_setup, _wfdb_signal_seeds, 8 * 1024, ("medweave", "wfdb")),
    adapter_target("vqa", "vqa", "questions.json", _vqa_seeds, "VQA-RAD question JSON with its images folder",
                   max_len=4096, companions=_vqa_companions),
    loader_target("config-toml", "experiment.toml", "config", _config_seeds(".toml"), "experiment configs (TOML)"),
    loader_target("task-yaml", "task.yaml", "task", _task_seeds, "evaluation task files (YAML)"),
    loader_target("workflow-yaml", "workflow.yaml", "workflow", _workflow_seeds, "agent workflow files (YAML)"),
    Target("api", "HTTP request bodies of the API routes (JSON, multipart, query strings)", _api_setup, _api_seeds,
           16 * 1024, ("medweave",)),
]}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise KeyError(f"unknown fuzz target {name!r}; targets: {', '.join(TARGETS)}")
    return TARGETS[name]
