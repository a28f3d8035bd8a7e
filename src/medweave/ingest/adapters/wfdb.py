"""PhysioNet WFDB records: a ``.hea`` header, its signal files (``.dat``, ``.mat``, ...) and
annotation files (``.atr``, ...), read with the ``wfdb`` package.

Each record becomes one SIGNAL item. Its blob is a deterministic ``.npz`` (a zip written with fixed
timestamps, readable with ``numpy.load``) holding ``signal`` (channels x samples, float32, physical
units) and, when the record has annotations, ``ann_sample`` (int64), ``ann_symbol`` (text) and
``ann_extension`` (which annotation file each came from). The item meta holds the units per channel,
the header comments parsed into a dict (scrubbed; values that are whole dates are shifted) and a
count per annotation symbol.

Header comments carry patient facts in a few known layouts: PTB's ``age: 81`` / ``sex: female`` /
``Reason for admission: ...`` (age, sex, label ``diagnosis``), MIT-BIH's ``69 M 1085 1629 x1``
(age, sex) and the PhysioNet 2015 alarm challenge's ``Asystole`` / ``False alarm`` (labels ``alarm``
and ``alarm_true``).

The patient is the record name (option ``patient_from = "record"``) or the folder holding it
(``"parent"``, as in PTB's ``patient001/s0010_re``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import io
import os
import re
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import wfdb

from ...store.catalog import Item, Modality
from ..base import Adapter, IngestContext, IngestError, NotADataFile, Unit, quoted
from .table import sha256_file

# Extensions PhysioNet uses for annotation files.
ANNOTATION_EXTENSIONS = frozenset({
    "atr", "ari", "ann", "qrs", "ecg", "apn", "st", "stf", "wabp", "wqrs", "sqrs", "gqrs", "jqrs",
    "pu", "pu0", "pu1", "man", "alarm", "trigger", "hypn", "resp", "arou", "epi", "marker", "all",
    "bih", "blh", "event", "atr_", "qrsc",
})
# Bytes per sample of the WFDB storage formats whose size is fixed.
BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5,
                    "310": 4 / 3, "311": 4 / 3}
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Files beside a record that are neither signals nor annotations.
SIDE_SUFFIXES = {".hea", ".txt", ".md", ".csv", ".json", ".png", ".jpg", ".pdf", ".html", ".xml", ".edf", ".wav",
                 ".mat", ".dat", ".gz", ".zip", ".tsv", ".py", ".sh"}
MIT_BIH_PATIENT_RE = re.compile(r"^\s*(\d{1,3}|\?+)\s+([MF?])\b")
ALARM_TRUTH_RE = re.compile(r"^\s*(true|false)\s+alarm\s*$", re.IGNORECASE)
COMMENT_DATE_FORMATS = ("%d/%m/%Y", "%d-%b-%y", "%d-%b-%Y", "%Y-%m-%d", "%d.%m.%Y")
DIAGNOSIS_KEYS = ("reason for admission", "diagnosis", "dx")


def deterministic_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive with fixed member timestamps and order, so equal arrays give equal bytes
    (``numpy.savez`` stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _header_lines(hea: Path) -> list[str]:
    try:
        lines = [ln.strip() for ln in hea.read_text(errors="replace").splitlines()]
    except OSError:
        return []
    return [ln for ln in lines if ln and not ln.startswith("#")]


def is_multisegment(hea: Path) -> bool:
    """True for the master header of a multi-segment record (``name/n_segments ...`` on line one)."""
    lines = _header_lines(hea)
    return bool(lines) and "/" in lines[0].split()[0]


def header_signal_files(hea: Path) -> list[str]:
    """The signal file names a header lists (its signal lines' first field), read without wfdb; for a
    multi-segment master header, the headers of its segments (and layout)."""
    lines = _header_lines(hea)
    if not lines:
        return []
    if "/" in lines[0].split()[0]:
        return [f"{ln.split()[0]}.hea" for ln in lines[1:] if ln.split() and ln.split()[0] != "~"]
    names = [ln.split()[0] for ln in lines[1:] if ln.split()]
    return [n for n in dict.fromkeys(names) if n != "~"]


def record_files(hea: Path) -> tuple[list[Path], list[Path]]:
    """(signal files, annotation files) of the record whose header is ``hea``, as present on disk.
    Annotation files are every other ``<record>.<ext>`` beside the header, whatever the extension
    (``.atr``, ``.qrs``, ``.gqrsh``, ``.anI``, ``.wabp``, ...): which of them wfdb reads is found when
    the record is read."""
    names = [n for n in header_signal_files(hea) if _plausible_name(n)]
    if is_multisegment(hea):
        signals: list[Path] = []
        for seg in names:
            seg_hea = hea.parent / seg
            if seg_hea.is_file():
                signals.append(seg_hea)
                signals += [hea.parent / n for n in header_signal_files(seg_hea)
                            if _plausible_name(n) and (hea.parent / n).is_file()]
    else:
        signals = [hea.parent / n for n in names if (hea.parent / n).is_file()]
    taken = {p.name for p in signals} | {hea.name}
    annotations = [hea.parent / n for n in names_starting(hea.parent, f"{hea.stem}.")
                   if n not in taken and Path(n).suffix.lower() not in SIDE_SUFFIXES and (hea.parent / n).is_file()]
    return signals, annotations


_LISTINGS: dict[str, tuple[int, list[str]]] = {}  # folder -> (its mtime, its sorted names); bounded
LISTING_SETTLED_NS = 2_000_000_000  # a folder changed less than 2 s ago is listed again each time


def names_starting(folder: Path, prefix: str) -> list[str]:
    """The sorted names in ``folder`` that start with ``prefix`` (what ``glob(escaped prefix + "*")``
    gives), from one sorted listing of the folder kept while its mtime stays the same: a binary search
    per record instead of a scan of the whole folder (which made ingest quadratic in the records of one
    folder: 30,000 ECGs beside each other cost 10x more per record than 3,000). A folder modified in
    the last 2 s is not kept (its mtime may not have ticked yet for the latest change)."""
    key = os.fspath(folder)
    try:
        mtime = os.stat(key).st_mtime_ns
    except OSError:
        return []
    hit = _LISTINGS.get(key)
    if hit is None or hit[0] != mtime:
        try:
            names = sorted(os.listdir(key))
        except OSError:
            return []
        hit = (mtime, names)
        if time.time_ns() - mtime >= LISTING_SETTLED_NS:
            if len(_LISTINGS) >= 64:
                _LISTINGS.clear()
            _LISTINGS[key] = hit
    names = hit[1]
    out, i = [], bisect.bisect_left(names, prefix)
    while i < len(names) and names[i].startswith(prefix):
        out.append(names[i])
        i += 1
    return out


def _plausible_name(name: str) -> bool:
    """A file name a header may name beside it: one that the file system could hold (a longer one is
    no file of the record; asking for it raises ENAMETOOLONG)."""
    return 0 < len(name.encode("utf-8", "surrogateescape")) <= 255 and "\x00" not in name


# --- header comments -----------------------------------------------------------------------------


def parse_comment_date(value: str) -> dt.date | None:
    """A comment value that is wholly a date (``01/10/1990``, ``29-Sep-90``), else None."""
    for fmt in COMMENT_DATE_FORMATS:
        try:
            return dt.datetime.strptime(value.strip(), fmt).date()
        except ValueError:
            continue
    return None


def parse_comments(comments: list[str], ctx: IngestContext, pid: str, known: list[str]) -> dict[str, Any]:
    """Header comments as ``{"fields": {key: value}, "lines": [...]}``: ``key: value`` lines into the
    dict (dates shifted, other values scrubbed), other lines kept in order, scrubbed."""
    fields: dict[str, Any] = {}
    lines: list[str] = []
    for raw in comments:
        text = raw.strip()
        if not text:
            continue
        key, sep, value = text.partition(":")
        if sep and key.strip() and value.strip() and len(key) <= 80:
            day = parse_comment_date(value)
            fields[key.strip()] = (ctx.shift(pid, day).isoformat() if day
                                   else ctx.scrub(value.strip(), known=known))
        else:
            lines.append(ctx.scrub(text, known=known))
    return {"fields": fields, "lines": lines}


def patient_facts(comments: list[str], parsed: dict[str, Any]) -> tuple[float | None, str | None, dict[str, Any]]:
    """(age, sex, labels) read from header comments in the PTB (parsed ``key: value`` fields),
    MIT-BIH (raw ``69 M ...`` line) and alarm-challenge (``Asystole`` / ``False alarm``) layouts."""
    fields = {k.lower(): v for k, v in parsed["fields"].items()}
    age = _number(fields.get("age"))
    sex = _sex(fields.get("sex"))
    labels: dict[str, Any] = {}
    for key in DIAGNOSIS_KEYS:
        if fields.get(key) and fields[key].lower() != "n/a":
            labels["diagnosis"] = fields[key]
            break
    for line in comments:
        m = MIT_BIH_PATIENT_RE.match(line)
        if m and age is None and sex is None:
            age, sex = _number(m.group(1)), _sex(m.group(2))
    truth = [ALARM_TRUTH_RE.match(line) for line in parsed["lines"]]
    if any(truth):
        labels["alarm_true"] = next(m for m in truth if m).group(1).lower() == "true"
        kinds = [line for line, m in zip(parsed["lines"], truth) if not m]
        if kinds:
            labels["alarm"] = kinds[0]
    return age, sex, labels


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _sex(value: Any) -> str | None:
    text = str(value or "").strip().lower()
    return {"f": "F", "female": "F", "m": "M", "male": "M"}.get(text)


# --- reading a record ----------------------------------------------------------------------------


def check_signal_sizes(header: wfdb.io.record.Record, hea: Path) -> None:
    """Fail with the file name when a signal file is shorter than its header says (headers without a
    signal length are checked by wfdb, which infers the length from the file)."""
    listed = len(header.file_name or [])
    if listed != (header.n_sig or 0) or len(header.fmt or []) != listed:
        raise IngestError(f"record {hea.stem}: the header's record line declares {header.n_sig} signal(s) but "
                          f"{listed} signal line(s) follow it")
    if header.sig_len is None:
        for name in dict.fromkeys(header.file_name or []):
            if name != "~" and not (hea.parent / name).is_file():
                raise IngestError(f"record {hea.stem}: signal file {name} named in the header is missing")
        return
    need: dict[str, float] = {}
    offsets: dict[str, int] = {}
    for name, fmt, offset in zip(header.file_name, header.fmt, header.byte_offset or [None] * header.n_sig):
        if name == "~" or fmt not in BYTES_PER_SAMPLE:
            continue
        need[name] = need.get(name, 0) + BYTES_PER_SAMPLE[fmt] * header.sig_len
        offsets[name] = int(offset or 0)
    for name, nbytes in need.items():
        path = hea.parent / name
        if not path.is_file():
            raise IngestError(f"record {hea.stem}: signal file {name} named in the header is missing")
        expected = int(np.ceil(nbytes)) + offsets[name]
        size = path.stat().st_size
        if size < expected:
            raise IngestError(f"record {hea.stem}: signal file {name} holds {size:,} bytes; the header implies "
                              f"{expected:,} ({header.sig_len:,} samples per channel) - truncated?")


def read_signal(hea: Path) -> tuple[wfdb.Record, dict[str, Any]]:
    """Read a record's header and physical signal, turning wfdb's errors into IngestErrors. A
    multi-segment record (fixed or variable layout) is read whole, as one signal: wfdb joins its
    segments (``m2s``), gaps (``~`` segments) as NaN. Returns the record and its segments' metadata."""
    base = str(hea.with_suffix(""))
    try:
        header = wfdb.rdheader(base)
    except Exception as exc:
        raise IngestError(f"{hea.name}: not a readable WFDB header ({quoted(exc)})") from exc
    segments: dict[str, Any] = {}
    if isinstance(header, wfdb.MultiRecord):
        names = [n for n in header.seg_name]
        layout = "variable" if names and names[0].endswith("_layout") else "fixed"
        segments = {"layout": layout, "n_segments": len(names),
                    "segments": [{"name": n, "n_samples": int(m)} for n, m in zip(names, header.seg_len)]}
        missing = [n for n in names if n != "~" and not (hea.parent / f"{n}.hea").is_file()]
        if missing:
            raise IngestError(f"record {hea.stem}: segment header(s) {', '.join(m + '.hea' for m in missing[:5])} "
                              "named in the multi-segment header are missing")
        for n in names:
            if n != "~" and not n.endswith("_layout"):
                check_signal_sizes(wfdb.rdheader(str(hea.parent / n)), hea.parent / f"{n}.hea")
    else:
        if not header.n_sig:
            raise IngestError(f"{hea.name}: the header describes no signals; expected at least one channel")
        check_signal_sizes(header, hea)
    try:
        record = wfdb.rdrecord(base, physical=True, m2s=True)
    except Exception as exc:
        raise IngestError(f"record {hea.stem}: signal data unreadable ({quoted(exc)})") from exc
    if record.p_signal is None or record.p_signal.ndim != 2 or record.p_signal.shape[1] != record.n_sig:
        raise IngestError(f"record {hea.stem}: expected samples x {record.n_sig} channels")
    if header.sig_len is not None and not segments and record.p_signal.shape[0] != header.sig_len:
        raise IngestError(f"record {hea.stem}: expected {header.sig_len:,} samples x {header.n_sig} channels")
    return record, segments


def read_annotations(hea: Path, files: list[Path]) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Sample indices, symbols, aux notes and source extension of every annotation file wfdb reads,
    in file order; and the files that are not annotation files (with the reason)."""
    samples, symbols, aux, exts, read, unread = [], [], [], [], [], []
    for path in files:
        ext = path.name[len(hea.stem) + 1:]
        try:
            ann = wfdb.rdann(str(hea.with_suffix("")), ext)
        except Exception:
            unread.append(path.name)
            continue
        read.append(ext)
        samples.append(np.asarray(ann.sample, dtype=np.int64))
        symbols.extend(ann.symbol or [""] * len(ann.sample))
        aux.extend((ann.aux_note or [""] * len(ann.sample)))
        exts.extend([ext] * len(ann.sample))
    if not read:
        return {}, read, unread
    return ({"ann_sample": np.concatenate(samples), "ann_symbol": np.array(symbols, dtype=str),
             "ann_aux_note": np.array(aux, dtype=str), "ann_extension": np.array(exts, dtype=str)}, read, unread)


def base_datetime(record: wfdb.Record) -> dt.datetime | None:
    if record.base_date is None:
        return None
    return dt.datetime.combine(record.base_date, record.base_time or dt.time())


class WfdbAdapter(Adapter):
    """PhysioNet WFDB records (``.hea`` header + signal and annotation files)."""

    name = "wfdb"
    version = "2"
    option_names = ("patient_from",)
    extensions = (".hea",)
    description = "PhysioNet WFDB records: header, signals, annotations"

    def sniff(self, path: Path, head: bytes) -> float:
        return 0.9 if path.suffix.lower() == ".hea" else 0.0

    def patient_rule(self, options: dict) -> str:
        if options.get("patient_from") == "parent":
            return "by folder: one patient per folder holding records (option patient_from=parent)"
        return "one patient per record name (option patient_from=parent: per folder)"

    def is_companion(self, path: Path) -> bool:
        """True for a signal or annotation file whose record header lies beside it, and for the
        segment and layout headers of a multi-segment record (read with its master header)."""
        if path.suffix.lower() == ".hea":
            return path.name in self._segment_headers(path.parent)
        hea = path.with_name(path.name.split(".", 1)[0] + ".hea")
        if hea.is_file() and path.name.startswith(hea.stem + ".") and path.suffix.lower() not in SIDE_SUFFIXES:
            return True
        hea = path.with_suffix(".hea")
        if hea.is_file() and path.name in header_signal_files(hea):
            return True
        return path.name in self._segment_signals(path.parent)

    def _segment_headers(self, folder: Path) -> set[str]:
        key = str(folder)
        cache = self.__dict__.setdefault("_segments", {})
        if key not in cache:
            names: set[str] = set()
            for master in folder.glob("*.hea"):
                if is_multisegment(master):
                    names.update(header_signal_files(master))
            cache[key] = names
        return cache[key]

    def _segment_signals(self, folder: Path) -> set[str]:
        out: set[str] = set()
        for seg in self._segment_headers(folder):
            out.update(header_signal_files(folder / seg))
        return out

    def units(self, path: Path, ctx: IngestContext) -> Iterator[Unit]:
        """The record's header is the unit; its companions' hashes make a changed .dat re-ingest."""
        lines = _header_lines(path)
        if lines and not is_multisegment(path) and len(lines[0].split()) >= 4 and lines[0].split()[3] == "0" \
                and path.stem.endswith("_layout"):
            raise NotADataFile("the layout header of a multi-segment record (no samples of its own)")
        signals, annotations = record_files(path)
        yield Unit(path, extra={"companions": {p.name: sha256_file(p) for p in signals + annotations}})

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        hea = unit.path
        record, segments = read_signal(hea)
        _, annotation_files = record_files(hea)
        annotations, ann_read, ann_unread = read_annotations(hea, annotation_files)
        if ann_unread:
            ctx.warn(f"record {hea.stem}: file(s) {', '.join(ann_unread)} beside it are not annotation files "
                     "wfdb reads; not stored")
        raw_pid = hea.parent.name if ctx.options.get("patient_from") == "parent" else record.record_name
        pid = ctx.patient(raw_pid)
        known = [raw_pid, record.record_name]
        parsed = parse_comments(record.comments or [], ctx, pid, known)
        age, sex, labels = patient_facts(record.comments or [], parsed)
        signal = np.ascontiguousarray(record.p_signal.T.astype(np.float32))
        blob = deterministic_npz({"signal": signal, **annotations})
        start = base_datetime(record)
        shifted = ctx.shift(pid, start) if start else None
        ecg_day = next((v for k, v in parsed["fields"].items() if "date" in k.lower() and "ecg" in k.lower()), None)
        fields: dict[str, Any] = {
            "format": "wfdb",
            "sampling_rate": float(record.fs),
            "n_channels": int(record.n_sig),
            "n_samples": int(signal.shape[1]),
            "channel_names": ",".join(n or "" for n in record.sig_name),  # a signal line may name none
        }
        if age is not None:
            fields["age"] = age
        if shifted:
            fields["time"] = shifted
        if "diagnosis" in labels:
            fields["label"] = labels["diagnosis"]
        elif "alarm_true" in labels:
            fields["label"] = "True alarm" if labels["alarm_true"] else "False alarm"
        meta: dict[str, Any] = {"units": list(record.units), "comments": parsed,
                                "formats": sorted({str(f) for f in (record.fmt or []) if f})}
        if segments:
            meta["multi_segment"] = segments
        if annotations:
            meta["annotations"] = {"count": int(len(annotations["ann_sample"])), "files": ann_read,
                                   "symbols": dict(sorted(Counter(annotations["ann_symbol"].tolist()).items()))}
        study_day = shifted.date() if shifted else (dt.date.fromisoformat(ecg_day) if _is_iso(ecg_day) else None)
        yield Item(
            patient_id=pid,
            study_id=ctx.study(pid, record.record_name),
            modality=Modality.SIGNAL,
            blob=blob,
            blob_ext=".npz",
            fields=fields,
            labels=labels,
            meta=meta,
            patient_attrs={"namespace": ctx.namespace, "sex": sex},
            study_attrs={"date": study_day, "description": f"WFDB record, {record.n_sig} channels"},
        )


def _is_iso(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None
