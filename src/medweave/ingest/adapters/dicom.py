"""DICOM: images (single- and multi-frame), series stacked into volumes, ECG waveforms, SR text.

Each file is read once (its bytes, then pydicom over them), de-identified (``store.deid_dicom``), and
becomes:

* an IMAGE item (a multi-frame 3D stack such as an enhanced CT/MR: a VOLUME item) whose blob is the
  de-identified DICOM file — the original bytes patched where the profile changed something — with
  geometry fields and decoded pixel statistics;
* SIGNAL items for the multiplex groups of a waveform object (blob: a channels x samples ``.npy``);
* a TEXT item for a structured report (its content tree as scrubbed text).

A picture whose header says it carries burned-in annotation is kept out unless the option
``burned_in=allow`` is given. DICOMDIRs are skipped (an index, not a data file); other objects (RT
plans, presentation states, ...) are reported with their SOP class. After all files, ``finish``
stacks the single-frame slices of each series found in the store into a VOLUME item ordered by
slice position.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import struct
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import iter_pixels
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ...store.catalog import Item, Modality
from ...store.deid_dicom import (DeidResult, DicomFacts, deidentify, element_spans, fast_get, parse_da,
                                 parse_keep_private, write_patched, write_whole)
from .. import base as _base
from . import dicom_fast
from ..base import Adapter, IngestContext, IngestError, Unit

# "skipped, not a data file" (the runner's NotADataFile) where the runner has it; a failure otherwise
NotADataFile = getattr(_base, "NotADataFile", IngestError)

log = logging.getLogger(__name__)

DICOMDIR_SOP = "1.2.840.10008.1.3.10"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Multi-frame SOP classes whose frames are slices of one 3D stack even without per-frame positions.
VOLUME_SOP_NAMES = ("Enhanced CT Image Storage", "Enhanced MR Image Storage", "Enhanced PET Image Storage",
                    "Legacy Converted Enhanced CT Image Storage", "Legacy Converted Enhanced MR Image Storage",
                    "Legacy Converted Enhanced PET Image Storage", "Breast Tomosynthesis Image Storage",
                    "RT Dose Storage")
_VRS = {b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"OB", b"OW", b"PN", b"SH", b"SQ",
        b"TM", b"UI", b"UL", b"US", b"UN", b"ST", b"LT"}
_ALL_VRS = _VRS | {b"AT", b"FD", b"FL", b"OD", b"OF", b"OL", b"OV", b"SL", b"SS", b"SV", b"UC", b"UR", b"UT",
                   b"UV"}
NATIVE_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR")


_PYDICOM_LOGGERS: tuple[int, list[logging.Logger]] = (-1, [])


def _pydicom_loggers() -> list[logging.Logger]:
    """pydicom's logger and its children (pixel decoders), listed again when loggers were added."""
    global _PYDICOM_LOGGERS
    known = logging.Logger.manager.loggerDict
    if _PYDICOM_LOGGERS[0] != len(known):
        children = [logging.getLogger(name) for name, lg in list(known.items())
                    if name.startswith("pydicom.") and isinstance(lg, logging.Logger)]
        _PYDICOM_LOGGERS = (len(known), [logging.getLogger("pydicom"), *children])
    return _PYDICOM_LOGGERS[1]


@contextmanager
def quiet_pydicom():
    """Silence pydicom's warnings and log lines, whose messages may quote identifying values. The
    loggers are disabled rather than given a level: ``setLevel`` clears the cache of every logger of
    the process, which cost more than reading a small file."""
    loggers = _pydicom_loggers()
    before = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, was in zip(loggers, before):
            lg.disabled = was


# --- reading and writing --------------------------------------------------------------------------


def _first_element_valid(head: bytes, size: int) -> bool:
    """Whether a file without the DICM preamble starts with a plausible data element (either byte
    order; explicit VR, or implicit with a length that fits the file)."""
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(order + "HH", head[:4])
        if group % 2 or not 0x0002 <= group <= 0x7FE0:
            continue
        if head[4:6] in _ALL_VRS:
            return True
        if struct.unpack(order + "I", head[4:8])[0] <= size - 8:
            return True
    return False


def load_dataset(path: Path, data: bytes | None = None) -> Dataset:
    """Read a DICOM file (with or without preamble and file meta) or raise ``IngestError``."""
    return read_dataset(path.read_bytes() if data is None else data)[0]


def read_dataset(data: bytes) -> tuple[Dataset, dict[int, tuple[int, int]] | None]:
    """The data set in ``data`` and where its top-level elements lie (None: unknown), or raise
    ``IngestError``. Files of the common shape are read by ``dicom_fast``, the rest by pydicom."""
    fast = dicom_fast.read(data)
    if fast is not None:
        return fast
    if data[128:132] != b"DICM" and not _first_element_valid(data[:8], len(data)):
        raise IngestError("not a DICOM file: no DICM preamble and no valid element at offset 0")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise IngestError(f"not a readable DICOM file ({type(exc).__name__}: {exc}); "
                          "expected a DICOM Part 10 file or a raw DICOM data set") from exc
    if not any(tag.group > 0x0002 for tag in ds.keys()):
        ended = [str(w.message) for w in caught if "End of file reached before delimiter" in str(w.message)]
        if ended:  # pydicom drops the whole data set when an undefined-length value never ends
            raise IngestError("the file ends inside an undefined-length value (pixel data fragments or a "
                              "sequence) before its delimiter (FFFE,E0DD): truncated")
        raise IngestError("no DICOM data elements found; expected a DICOM data set")
    _check_lengths(ds)
    _ensure_transfer_syntax(ds)
    return ds, element_spans(ds, data)


UNDEFINED_LENGTH = 0xFFFFFFFF


def _element_name(tag: int) -> str:
    name = keyword_for_tag(tag) or "an element"
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {name}"


def _check_lengths(ds: Dataset) -> None:
    """Refuse a file whose declared lengths point past its end (a truncated file, or a length
    patched or written wrong). pydicom reads such a value short without a word, and a short pixel
    value could then be decoded or padded into a picture the file does not hold. Checked: every
    top-level element of defined length (the file meta's too), and the fragments of encapsulated
    (undefined-length) pixel data. The fast reader never gets here: it hands every such file to
    pydicom."""
    meta = getattr(ds, "file_meta", None)
    for elements in (meta._dict if meta is not None else {}, ds._dict):
        for tag, elem in elements.items():
            if not isinstance(elem, RawDataElement) or not isinstance(elem.value, (bytes, bytearray)):
                continue
            left = len(elem.value)
            if elem.length != UNDEFINED_LENGTH:
                if left < elem.length:
                    raise IngestError(f"element {_element_name(tag)} declares {elem.length} bytes but only "
                                      f"{left} are left in the file (truncated, or a wrong length)")
            elif tag == 0x7FE00010:
                _check_fragments(elem.value, 0 if elem.is_little_endian else 1)


def _check_fragments(value: bytes, big: int) -> None:
    """The items of encapsulated pixel data (offset table, fragments) each fit what is left."""
    fmt = ">HHI" if big else "<HHI"
    pos, n = 0, 0
    while pos + 8 <= len(value):
        group, element, length = struct.unpack_from(fmt, value, pos)
        if (group, element) == (0xFFFE, 0xE0DD):
            return
        if (group, element) != (0xFFFE, 0xE000):
            return  # not an item: pydicom's decoder reports it
        left = len(value) - pos - 8
        if length != UNDEFINED_LENGTH and length > left:
            raise IngestError(f"pixel data item {n} declares {length} bytes but only {left} are left in the "
                              "file (truncated, or a wrong length)")
        pos += 8 + length
        n += 1


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a data set read without file meta the transfer syntax it was encoded with."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def encode_dataset(ds: Dataset) -> bytes:
    """The data set as a DICOM Part 10 file, encoded whole (deterministic bytes)."""
    return write_whole(ds)


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` of ``array`` into bytes (deterministic, no pickle). A numeric array whose header
    fits format 1.0 (the version ``np.save`` picks then) is written as that header and its data
    joined in one copy; ``np.save`` into a buffer copied a series volume three times."""
    array = np.ascontiguousarray(array)
    if array.dtype.kind in "biufc" and not array.dtype.hasobject:
        head = io.BytesIO()
        try:
            np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(array))
        except ValueError:  # a header too long for 1.0: np.save's own choice of version
            pass
        else:
            return b"".join((head.getvalue(), memoryview(array).cast("B")))
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# --- attribute helpers ---------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    f = _float(value)
    return None if f is None or f != int(f) else int(f)


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _floats(value: Any, n: int) -> list[float] | None:
    """A multi-valued numeric attribute with exactly ``n`` values, else None."""
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _functional(ds: Dataset, macro: str, keyword: str, frame: int = 0) -> Any:
    """An attribute from a functional group macro: shared groups first, then the frame's own."""
    for top, index in (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", frame)):
        groups = fast_get(ds, top)
        if groups and len(groups) > index:
            inner = groups[index].get(macro)
            if inner and keyword in inner[0]:
                return inner[0].get(keyword)
    return None


def _attr(ds: Dataset, keyword: str, macro: str, frame: int = 0) -> Any:
    """A top-level attribute, else the same attribute inside a functional group macro."""
    value = fast_get(ds, keyword)
    return value if value not in (None, "") else _functional(ds, macro, keyword, frame)


def _code_meaning(seq: Any) -> str:
    return str(seq[0].get("CodeMeaning", "")).strip() if seq else ""


def _sop(ds: Dataset) -> tuple[str, str]:
    """(SOP class UID, its name) of a data set, from the data set or its file meta."""
    uid = str(fast_get(ds, "SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "").strip()
    name = _uid_name(uid) if uid else ""
    return uid, (name if name and name != uid else "")


@lru_cache(maxsize=1024)
def _uid_name(uid: str) -> str:
    """pydicom's name of a UID (memoised: a series' slices ask for the same SOP class each time)."""
    return UID(uid).name


def _describe_sop(ds: Dataset) -> str:
    """The SOP class by name (a UID only when the class is unknown: error reasons are scrubbed as
    free text, which would mistake parts of a dotted UID for dates)."""
    uid, name = _sop(ds)
    if not uid:
        return "object without a SOP Class UID"
    return name or f"object of unknown SOP class {uid}"


def _timestamp(ds: Dataset) -> dt.datetime | None:
    """When the item was acquired (already date-shifted when de-identified)."""
    value = _text(fast_get(ds, "AcquisitionDateTime"))
    if value and parse_da(value[:8]):
        return _combine(parse_da(value[:8]), value[8:])
    for prefix in ("Acquisition", "Content", "Series", "Study"):
        day = parse_da(fast_get(ds, f"{prefix}Date"))
        if day:
            return _combine(day, str(fast_get(ds, f"{prefix}Time") or ""))
    return None


def _combine(day: dt.date, tm: str) -> dt.datetime:
    digits = tm.split(".")[0].strip()
    parts = [int(digits[i:i + 2]) if digits[i:i + 2].isdigit() else 0 for i in (0, 2, 4)]
    hh, mm, ss = (min(parts[0], 23), min(parts[1], 59), min(parts[2], 59))
    return dt.datetime(day.year, day.month, day.day, hh, mm, ss)


# --- geometry ------------------------------------------------------------------------------------


def _orientation(ds: Dataset) -> list[float] | None:
    return _floats(_attr(ds, "ImageOrientationPatient", "PlaneOrientationSequence"), 6)


def _normal(orientation: list[float]) -> tuple[float, float, float]:
    """The slice normal: row direction x column direction (plain floats: faster than numpy for 3)."""
    (a1, a2, a3), (b1, b2, b3) = orientation[:3], orientation[3:]
    return (a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1)


def _frame_position(ds: Dataset, normal, frame: int) -> float | None:
    ipp = _floats(_attr(ds, "ImagePositionPatient", "PlanePositionSequence", frame), 3)
    return None if ipp is None else round(sum(p * n for p, n in zip(ipp, normal)) + 0.0, 6)


def _frame_positions(ds: Dataset, frames: int) -> list[float]:
    """Slice positions of every frame (projections on the slice normal), when known."""
    orientation = _orientation(ds)
    if orientation is None:
        return []
    normal = _normal(orientation)
    first = _frame_position(ds, normal, 0)
    offsets = _floats(fast_get(ds, "GridFrameOffsetVector"), frames) if frames > 1 else None
    if first is not None and offsets is not None:  # RT dose grids
        return [round(first + o, 6) for o in offsets]
    per_frame = fast_get(ds, "PerFrameFunctionalGroupsSequence")
    if frames > 1 and per_frame and len(per_frame) == frames:
        positions = [_frame_position(ds, normal, i) for i in range(frames)]
        return [] if None in positions else positions
    return [] if first is None else [first]


def _orientation_key(orientation: list[float] | None) -> str | None:
    if orientation is None:
        return None
    return ",".join(f"{round(v, 4) + 0.0:.4f}" for v in orientation)


def _is_stack(ds: Dataset, frames: int, positions: list[float]) -> bool:
    """True when the frames of a multi-frame object are slices of one 3D volume."""
    if frames < 2:
        return False
    if len(positions) == frames:
        return len(set(positions)) == frames
    image_type = [str(v).upper() for v in (fast_get(ds, "ImageType") or [])]
    _, name = _sop(ds)
    return name in VOLUME_SOP_NAMES or (name.startswith("Nuclear Medicine") and "TOMO" in " ".join(image_type))


def _frame_count(ds: Dataset) -> int:
    value = fast_get(ds, "NumberOfFrames")
    if value in (None, ""):
        return 1
    n = _int(value)
    if n is None or n < 1:
        raise IngestError(f"NumberOfFrames {str(value)!r} is not a whole number >= 1")
    return n


def _transfer_syntax(ds: Dataset) -> str:
    """The transfer syntax UID of a data set's file meta as text ("" when there is none), read
    without building pydicom's ``UID`` objects (``file_meta.get`` cost as much as a pixel statistic)."""
    meta = getattr(ds, "file_meta", None)
    value = fast_get(meta, "TransferSyntaxUID") if meta is not None else None
    return str(value).strip() if value else ""


_PIXEL_DATA_TAG = 0x7FE00010
_NATIVE_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian)


def native_pixels(ds: Dataset, correct: bool = True) -> np.ndarray | None:
    """The stored pixel values of uncompressed ("native") pixel data as a flat array, read straight
    from the bytes; None when the data is compressed or laid out in a way this fast path does not
    cover (bit-packed, YBR subsampled, float), which pydicom then decodes. Equal to what pydicom's
    ``pixel_array`` holds (pydicom does not correct unused high bits by default either). With
    ``correct=False`` the bits above Bits Stored are left as they are (``_unused_bits`` does it)."""
    ts = _transfer_syntax(ds)
    if ts not in _NATIVE_SYNTAXES:
        return None
    bits, samples = _int(fast_get(ds, "BitsAllocated")), _int(fast_get(ds, "SamplesPerPixel")) or 1
    rows, cols, sign = _int(fast_get(ds, "Rows")), _int(fast_get(ds, "Columns")), _int(fast_get(ds, "PixelRepresentation"))
    photometric = str(fast_get(ds, "PhotometricInterpretation") or "").strip().upper()
    if bits not in (8, 16, 32) or not rows or not cols or sign not in (0, 1) or photometric not in NATIVE_PHOTOMETRIC:
        return None
    raw = ds._dict.get(_PIXEL_DATA_TAG)
    value = raw.value if raw is not None else None
    if not isinstance(value, (bytes, bytearray)):
        return None
    size = rows * cols * samples * _frame_count(ds) * bits // 8
    if len(value) not in (size, size + 1):
        return None
    order = ">" if ts == ExplicitVRBigEndian else "<"
    flat = np.frombuffer(value, dtype=f"{order}{'i' if sign else 'u'}{bits // 8}", count=size * 8 // bits)
    return _unused_bits(flat, bits, _int(fast_get(ds, "BitsStored"))) if correct else flat


def _stored_range(allocated: int, stored: int | None, signed: bool) -> tuple[int, int] | None:
    """The values pixels of ``stored`` bits can hold (None: every value of the allocated bits)."""
    if not stored or stored >= allocated:
        return None
    return (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)


def _unused_bits(array: np.ndarray, allocated: int, stored: int | None, lo: Any = None, hi: Any = None) -> np.ndarray:
    """Ignore the bits above Bits Stored, as pydicom does for native data (a shift left, then right:
    sign extension for signed pixels, masking for unsigned ones). Pixels already within the stored
    range (the usual case: the unused bits are zero, or copies of the sign) are returned as they are:
    the shifts would change nothing, and two passes over the array are saved (``lo`` / ``hi``: the
    array's minimum and maximum, when already known)."""
    bounds = _stored_range(allocated, stored, array.dtype.kind == "i")
    if bounds is None:
        return array
    if array.size:
        if lo is None:
            lo, hi = array.min(), array.max()
        if bounds[0] <= lo and hi <= bounds[1]:
            return array
    shift = allocated - stored
    return (array << shift) >> shift


def _corrected_range(array: np.ndarray, allocated: int, stored: int | None) -> tuple[np.ndarray, Any, Any]:
    """``_unused_bits(array, ...)`` with its minimum and maximum, for a non-empty array: the range
    that tells whether the shifts change anything is the range the statistics report when they do
    not, so it is computed once (two passes over the pixels, not four)."""
    lo, hi = array.min(), array.max()
    fixed = _unused_bits(array, allocated, stored, lo, hi)
    return (array, lo, hi) if fixed is array else (fixed, fixed.min(), fixed.max())


def _exact_sum(array: np.ndarray, lo: float, hi: float) -> float:
    """``float(array.sum(dtype=float64))``, exactly: integer pixels are summed in integers when every
    partial sum is an integer below 2**53 (then the float64 sum is exact too, and equal), which is
    twice as fast; anything else is summed in float64 as before."""
    if array.dtype.kind in "iu":
        bound = max(abs(lo), abs(hi)) * array.size
        if bound < 2**31 and array.dtype.itemsize <= 2:
            return float(array.sum(dtype=np.int32))
        if bound < 2**53:
            return float(array.sum(dtype=np.int64))
    return float(array.sum(dtype=np.float64))


def _pixel_stats(ds: Dataset) -> dict[str, float]:
    """Min, max and mean of the decoded pixel data, frame by frame (bounded memory)."""
    flat = native_pixels(ds, correct=False)
    if flat is not None:
        if flat.size == 0:
            raise IngestError("pixel data is empty; expected at least one pixel")
        flat, lo, hi = _corrected_range(flat, flat.dtype.itemsize * 8, _int(fast_get(ds, "BitsStored")))
        lo, hi = float(lo), float(hi)
        return {"min": lo, "max": hi, "mean": round(_exact_sum(flat, lo, hi) / flat.size, 6)}
    lo, hi, total, count = np.inf, -np.inf, 0.0, 0
    try:
        for frame in iter_pixels(ds):
            lo = min(lo, float(frame.min()))
            hi = max(hi, float(frame.max()))
            total += float(frame.sum(dtype=np.float64))
            count += frame.size
    except Exception as exc:
        raise IngestError(f"pixel data cannot be decoded ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); transfer syntax "
                          f"{ds.file_meta.TransferSyntaxUID.name}") from exc
    if count == 0:
        raise IngestError("pixel data is empty; expected at least one pixel")
    return {"min": lo, "max": hi, "mean": round(total / count, 6)}


# --- items ---------------------------------------------------------------------------------------


class _Context(NamedTuple):
    """What every item of one file shares."""

    patient_id: str
    study_id: str | None
    facts: DicomFacts
    patient_attrs: dict[str, Any]
    study_attrs: dict[str, Any]
    fields: dict[str, Any]


def _shared(ds: Dataset, patient_id: str, facts: DicomFacts, ctx: IngestContext) -> _Context:
    study_id = ctx.study(patient_id, facts.study_key) if facts.study_key else None
    fields = {
        "dicom_modality": _text(fast_get(ds, "Modality")),
        "body_part": _text(fast_get(ds, "BodyPartExamined")),
        "series_id": _text(fast_get(ds, "SeriesInstanceUID")),
        "time": _timestamp(ds),
        "age": facts.age,
    }
    return _Context(
        patient_id=patient_id,
        study_id=study_id,
        facts=facts,
        patient_attrs={"sex": facts.sex, "namespace": ctx.namespace},
        study_attrs={"date": facts.study_date, "description": facts.study_description},
        fields=fields,
    )


def _item(shared: _Context, modality: Modality, blob: bytes, ext: str, fields: dict, meta: dict,
          source_key: str = "") -> Item:
    return Item(
        patient_id=shared.patient_id, study_id=shared.study_id, modality=modality, blob=blob, blob_ext=ext,
        fields={**shared.fields, **fields}, meta=meta, source_key=source_key,
        patient_attrs=shared.patient_attrs, study_attrs=shared.study_attrs,
    )


def _image_meta(ds: Dataset) -> dict[str, Any]:
    """Non-identifying technical facts about an image."""
    uid, name = _sop(ds)
    ts = _transfer_syntax(ds)
    meta = {
        "sop_class_uid": uid,
        "sop_class": name or None,
        "sop_instance_uid": _text(fast_get(ds, "SOPInstanceUID")),
        "transfer_syntax": ts,
        "transfer_syntax_name": _uid_name(ts) if ts else "",
        "photometric_interpretation": _text(fast_get(ds, "PhotometricInterpretation")),
        "samples_per_pixel": _int(fast_get(ds, "SamplesPerPixel")),
        "bits_allocated": _int(fast_get(ds, "BitsAllocated")),
        "bits_stored": _int(fast_get(ds, "BitsStored")),
        "pixel_representation": _int(fast_get(ds, "PixelRepresentation")),
        "rescale_slope": _float(_attr(ds, "RescaleSlope", "PixelValueTransformationSequence")),
        "rescale_intercept": _float(_attr(ds, "RescaleIntercept", "PixelValueTransformationSequence")),
        "manufacturer": _text(fast_get(ds, "Manufacturer")),
        "model": _text(fast_get(ds, "ManufacturerModelName")),
        "series_number": _int(fast_get(ds, "SeriesNumber")),
        "series_description": _text(fast_get(ds, "SeriesDescription")),
        "image_type": "\\".join(str(v) for v in fast_get(ds, "ImageType") or []) or None,
        "burned_in_annotation": _text(fast_get(ds, "BurnedInAnnotation")),
        "orientation": _orientation_key(_orientation(ds)),
    }
    return {k: v for k, v in meta.items() if v is not None}


def image_item(result: DeidResult, blob: bytes, shared: _Context) -> Item:
    """An IMAGE (or, for a 3D multi-frame stack, a VOLUME) item holding the de-identified file."""
    ds = result.ds
    frames = _frame_count(ds)
    positions = _frame_positions(ds, frames)
    stack = _is_stack(ds, frames, positions)
    spacing = _floats(_attr(ds, "PixelSpacing", "PixelMeasuresSequence"), 2) or _floats(
        fast_get(ds, "ImagerPixelSpacing"), 2)
    meta = _image_meta(ds)
    meta["pixel_stats"] = _pixel_stats(ds)
    if stack and len(positions) == frames:
        meta["frame_positions"] = positions
    fields = {
        "format": "dicom",
        "view_position": _text(fast_get(ds, "ViewPosition")),
        "pixel_spacing_x": spacing[1] if spacing else None,
        "pixel_spacing_y": spacing[0] if spacing else None,
        "slice_thickness": _float(_attr(ds, "SliceThickness", "PixelMeasuresSequence")),
        "rows": _int(fast_get(ds, "Rows")),
        "cols": _int(fast_get(ds, "Columns")),
        "frames": frames,
        "position": positions[0] if positions else None,
        "instance_number": _int(fast_get(ds, "InstanceNumber")),
    }
    modality = Modality.VOLUME if stack else Modality.IMAGE
    item = _item(shared, modality, blob, ".dcm", fields, meta)
    # a slice ``finish`` may stack into a series volume (``_SLICE_WHERE``): its bytes are kept at hand
    item.read_back = (modality == Modality.IMAGE and frames == 1 and fields["position"] is not None
                      and item.fields.get("series_id") is not None and meta.get("orientation") is not None)
    return item


def _channel_name(channel: Dataset, index: int) -> str:
    name = _code_meaning(channel.get("ChannelSourceSequence")) or _text(channel.get("ChannelLabel"))
    return (name or f"channel {index + 1}").replace(",", ";")


def waveform_items(ds: Dataset, shared: _Context) -> list[Item]:
    """One SIGNAL item per multiplex group: a channels x samples float32 array in physical units."""
    items = []
    for index, group in enumerate(ds.WaveformSequence):
        rate = _float(group.get("SamplingFrequency"))
        if not rate or rate <= 0:
            raise IngestError(f"waveform group {index}: SamplingFrequency {group.get('SamplingFrequency')!r} "
                              "is not a positive number")
        signal = np.asarray(ds.waveform_array(index), dtype=np.float32).T
        channels = list(group.get("ChannelDefinitionSequence") or [])
        units = {_text(c.ChannelSensitivityUnitsSequence[0].get("CodeValue"))
                 for c in channels if c.get("ChannelSensitivityUnitsSequence")}
        fields = {
            "format": "dicom-waveform",
            "sampling_rate": rate,
            "n_channels": int(signal.shape[0]),
            "n_samples": int(signal.shape[1]),
            "channel_names": ",".join(_channel_name(c, i) for i, c in enumerate(channels)),
            "unit": units.pop() if len(units) == 1 else None,
        }
        meta = {
            "sop_class": _sop(ds)[1] or None,
            "multiplex_group": _text(group.get("MultiplexGroupLabel")),
            "originality": _text(group.get("WaveformOriginality")),
            "sample_interpretation": _text(group.get("WaveformSampleInterpretation")),
            "units": sorted(u for u in units if u) if units else None,
        }
        items.append(_item(shared, Modality.SIGNAL, npy_bytes(signal), ".npy", fields,
                           {k: v for k, v in meta.items() if v is not None}, source_key=f"waveform{index}"))
    return items


_SR_TEMPORAL = {"DATE": "Date", "TIME": "Time", "DATETIME": "DateTime"}


def _content_value(item: Dataset) -> str:
    """The value of one SR content item as text (empty for containers and references)."""
    kind = str(item.get("ValueType", "")).upper()
    if kind == "TEXT":
        return str(item.get("TextValue", "")).strip()
    if kind == "CODE":
        return _code_meaning(item.get("ConceptCodeSequence"))
    if kind == "NUM" and item.get("MeasuredValueSequence"):
        measured = item.MeasuredValueSequence[0]
        unit = _code_meaning(measured.get("MeasurementUnitsCodeSequence"))
        return f"{measured.get('NumericValue', '')} {unit}".strip()
    if kind in _SR_TEMPORAL:
        return str(item.get(_SR_TEMPORAL[kind], "")).strip()
    return ""


def _sr_lines(items: Any, depth: int = 0) -> list[str]:
    """The SR content tree as indented 'concept: value' lines."""
    lines = []
    for item in items or []:
        concept, value = _code_meaning(item.get("ConceptNameCodeSequence")), _content_value(item)
        text = f"{concept}: {value}" if concept and value else concept or value
        if text:
            lines.append("  " * depth + text)
        lines += _sr_lines(item.get("ContentSequence"), depth + 1)
    return lines


def report_item(ds: Dataset, shared: _Context, ctx: IngestContext) -> Item:
    """A TEXT item with the scrubbed content of a structured report."""
    title = _code_meaning(fast_get(ds, "ConceptNameCodeSequence"))
    body = _sr_lines(fast_get(ds, "ContentSequence"))
    if not any(":" in line for line in body):
        raise IngestError(f"DICOM {_describe_sop(ds)}: the report has no text, code or numeric content")
    text = ctx.scrub("\n".join(([title] if title else []) + body), shared.facts.known).replace("\x00", "")
    fields = {"format": "dicom-sr", "text": text}
    meta = {"sop_class": _sop(ds)[1] or None, "completion": _text(fast_get(ds, "CompletionFlag")),
            "verification": _text(fast_get(ds, "VerificationFlag"))}
    return _item(shared, Modality.TEXT, text.encode("utf-8"), ".txt", fields,
                 {k: v for k, v in meta.items() if v is not None})


def dataset_items(result: DeidResult, encode, shared: _Context, ctx: IngestContext) -> list[Item]:
    """The items of one de-identified data set, by what it holds (``encode()`` gives its blob)."""
    ds = result.ds
    uid, _ = _sop(ds)
    if uid == DICOMDIR_SOP:
        raise NotADataFile("a DICOMDIR (Media Storage Directory): an index of the files beside it, "
                           "not a data file; the files it lists are ingested on their own")
    if any(k in ds for k in PIXEL_KEYWORDS):
        if result.burned_in and str(ctx.options.get("burned_in", "")).lower() not in ("allow", "yes", "true", "1"):
            raise IngestError("burned-in annotation: the file says BurnedInAnnotation = YES (names or ids "
                              "may be drawn into the pixels, where header de-identification cannot reach "
                              "them); not stored. Review such pictures, then ingest them with "
                              "--option burned_in=allow")
        return [image_item(result, encode(), shared)]
    if fast_get(ds, "WaveformSequence"):
        return waveform_items(ds, shared)
    if fast_get(ds, "ContentSequence") and (str(fast_get(ds, "Modality", "")) == "SR" or "SR" in _sop(ds)[1].split()):
        return [report_item(ds, shared, ctx)]
    raise IngestError(f"DICOM {_describe_sop(ds)}: no pixel data, waveform or report text to ingest")


# --- series volumes ------------------------------------------------------------------------------

_SLICE_WHERE = """
adapter = ? AND modality = 'image' AND frames = 1 AND series_id IS NOT NULL AND position IS NOT NULL
AND json_extract_string(meta, '$.orientation') IS NOT NULL
"""
# Newest series first: the slices this run just wrote are still in the store's memory (``read_blob``).
_GROUPS_SQL = f"""
SELECT series_id, rows, cols, json_extract_string(meta, '$.orientation') AS orientation FROM items
WHERE {_SLICE_WHERE} GROUP BY ALL HAVING count(*) >= 2 ORDER BY max(rowid) DESC, series_id, rows, cols, orientation
"""
# The slices of some series: plain columns, and the meta as text, parsed once per row in Python
# (ten json_extract calls per row cost more than the rest of stacking a small slice).
_SLICES_SQL = """
SELECT item_id, patient_id, study_id, series_id, rows, cols, position, blob, dicom_modality, body_part,
       pixel_spacing_x, pixel_spacing_y, slice_thickness, CAST(meta AS VARCHAR) AS meta
FROM items
WHERE adapter = ? AND modality = 'image' AND frames = 1 AND series_id IS NOT NULL AND position IS NOT NULL
AND series_id IN (SELECT unnest(?))
"""


def _opt(value: Any, kind) -> Any:
    return None if value is None else kind(value)


def _slice_row(row: tuple) -> "_Slice | None":
    """A ``_Slice`` from a row of ``_SLICES_SQL`` (None: a slice without an orientation)."""
    *plain, meta_text = row
    meta = json.loads(meta_text) if meta_text else {}
    orientation = meta.get("orientation")
    if orientation is None:
        return None
    return _Slice(*plain, orientation=str(orientation),
                  instance=str(meta.get("sop_instance_uid") or plain[0]),
                  transfer_syntax=_opt(meta.get("transfer_syntax"), str),
                  photometric=_opt(meta.get("photometric_interpretation"), str),
                  samples=_opt(meta.get("samples_per_pixel"), int), bits=_opt(meta.get("bits_allocated"), int),
                  bits_stored=_opt(meta.get("bits_stored"), int),
                  signed=_opt(meta.get("pixel_representation"), int),
                  slope=_opt(meta.get("rescale_slope"), float), intercept=_opt(meta.get("rescale_intercept"), float))


GROUPS_PER_QUERY = 64  # series read per query: one scan of the catalog for many series, memory bounded
_BUILT_SQL = """
SELECT json_extract_string(meta, '$.members_digest') FROM items
WHERE adapter = ? AND modality = 'volume' AND format = 'dicom-series'
"""


class _Slice(NamedTuple):
    item_id: str
    patient_id: str
    study_id: str | None
    series_id: str
    rows: int
    cols: int
    position: float
    blob: str
    dicom_modality: str | None
    body_part: str | None
    pixel_spacing_x: float | None
    pixel_spacing_y: float | None
    slice_thickness: float | None
    orientation: str
    instance: str
    transfer_syntax: str | None = None
    photometric: str | None = None
    samples: int | None = None
    bits: int | None = None
    bits_stored: int | None = None
    signed: int | None = None
    slope: float | None = None
    intercept: float | None = None


def series_stacks(con, adapter: str) -> Iterator[list[_Slice]]:
    """Groups of >= 2 distinct single-frame slices (same series, size and orientation) that no
    series volume covers yet, each ordered by position. One row per SOP instance (the same
    instance stored in several encodings counts once). Reads the slices of GROUPS_PER_QUERY series
    per query (one catalog scan for many series), so memory is bounded by that many series, not by
    the store."""
    built = {r[0] for r in con.execute(_BUILT_SQL, [adapter]).fetchall()}
    groups = con.execute(_GROUPS_SQL, [adapter]).fetchall()
    for first in range(0, len(groups), GROUPS_PER_QUERY):
        chunk = groups[first:first + GROUPS_PER_QUERY]
        wanted = set(chunk)
        rows = [r for r in map(_slice_row, con.execute(_SLICES_SQL, [adapter, sorted({g[0] for g in chunk})]).fetchall())
                if r is not None]
        rows.sort(key=lambda r: (r.series_id, r.rows, r.cols, r.orientation, r.position, r.item_id))
        by_group: dict[tuple, list[_Slice]] = {}
        for row in rows:  # ordered by group, then position
            key = (row.series_id, row.rows, row.cols, row.orientation)
            if key in wanted:
                by_group.setdefault(key, []).append(row)
        for key in chunk:
            unique: dict[str, _Slice] = {}
            for row in by_group.get(key, []):
                unique.setdefault(row.instance, row)
            members = list(unique.values())
            positions = [m.position for m in members]
            if len(members) < 2 or len(set(positions)) != len(positions):
                continue  # a single slice, or several slices per position (multi-echo, time series)
            if members_digest(members) not in built:
                yield members


def members_digest(members: list[_Slice]) -> str:
    return hashlib.sha256(",".join(s.item_id for s in members).encode()).hexdigest()[:32]


def _stored_plane(data: bytes, member: _Slice) -> np.ndarray | None:
    """The pixels of a single-frame native slice medweave stored, read from the end of its blob
    (Pixel Data is the last element medweave writes), or None when the blob is not laid out so."""
    if (member.transfer_syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian) or member.samples != 1
            or member.bits not in (8, 16, 32) or member.signed not in (0, 1)
            or member.photometric not in ("MONOCHROME1", "MONOCHROME2")):
        return None
    size = member.rows * member.cols * member.bits // 8
    padded = size + size % 2
    if member.transfer_syntax == ImplicitVRLittleEndian:
        header = struct.pack("<HHI", 0x7FE0, 0x0010, padded)
    else:
        vr = b"OB" if member.bits == 8 else b"OW"
        header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, padded)
    if len(data) < padded + len(header) or data[-padded - len(header):-padded] != header:
        return None
    value = memoryview(data)[len(data) - padded:len(data) - padded + size]
    dtype = f"<{'i' if member.signed else 'u'}{member.bits // 8}"
    plane = np.frombuffer(value, dtype=dtype).reshape(member.rows, member.cols)
    return _unused_bits(plane, member.bits, member.bits_stored)


def _rescaled(data: bytes, member: _Slice | None = None) -> np.ndarray:
    plane = _stored_plane(data, member) if member is not None else None
    if plane is not None:
        array, slope, intercept = plane, member.slope, member.intercept
    else:
        ds = pydicom.dcmread(io.BytesIO(data))
        array = ds.pixel_array
        slope, intercept = _float(fast_get(ds, "RescaleSlope")), _float(fast_get(ds, "RescaleIntercept"))
    slope = slope or 1.0
    intercept = intercept or 0.0
    if slope == 1.0 and intercept == 0.0:
        return array
    if slope.is_integer() and intercept.is_integer() and array.dtype.kind in "iu":
        out = array.astype(np.int32)  # (in place from here: the same int32 arithmetic, one array)
        if slope != 1.0:
            out *= int(slope)
        if intercept != 0.0:
            out += int(intercept)
        return out
    return array * slope + intercept


def stack_volume(read_blob, members: list[_Slice]) -> np.ndarray:
    """The slices' rescaled pixels stacked in order: int16/int32 when integral, else float32."""
    volume: np.ndarray | None = None
    for i, member in enumerate(members):
        plane = _rescaled(read_blob(member.blob), member)
        if volume is None:
            integral = plane.dtype.kind in "iu"
            volume = np.empty((len(members), *plane.shape), dtype=np.int32 if integral else np.float32)
        if plane.shape != volume.shape[1:]:
            raise IngestError(f"slice {i} has shape {plane.shape}, expected {volume.shape[1:]}")
        if volume.dtype == np.int32 and plane.dtype.kind not in "iu":
            volume = volume.astype(np.float32)
        volume[i] = plane
    if volume.dtype == np.int32 and volume.size and volume.min() >= -32768 and volume.max() <= 32767:
        volume = volume.astype(np.int16)
    return volume


def volume_item(members: list[_Slice], volume: np.ndarray) -> Item:
    """The VOLUME item of a stacked series."""
    first = members[0]
    positions = [s.position for s in members]
    gaps = np.diff(positions)
    fields = {
        "format": "dicom-series", "dicom_modality": first.dicom_modality, "body_part": first.body_part,
        "rows": first.rows, "cols": first.cols, "frames": len(members),
        "pixel_spacing_x": first.pixel_spacing_x, "pixel_spacing_y": first.pixel_spacing_y,
        "slice_thickness": first.slice_thickness, "series_id": first.series_id, "position": positions[0],
    }
    meta = {
        "members": [s.item_id for s in members],
        "members_digest": members_digest(members),
        "positions": positions,
        "slice_spacing": round(float(np.median(gaps)), 6),
        "uniform_spacing": bool(np.ptp(gaps) <= 0.01 * max(abs(float(np.median(gaps))), 1e-6)),
        "orientation": first.orientation,
        "dtype": str(volume.dtype),
        "shape": list(volume.shape),
        "rescaled": True,
    }
    return Item(patient_id=first.patient_id, study_id=first.study_id, modality=Modality.VOLUME,
                blob=npy_bytes(volume), blob_ext=".npy", fields=fields, meta=meta,
                source_key=f"series:{first.series_id}:{members_digest(members)[:12]}")


# --- the adapter ---------------------------------------------------------------------------------


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A preamble-less data set starting with a group 0002/0008 element (little endian)."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00") or head[3] != 0:
        return False
    return head[4:6] in _VRS or int.from_bytes(head[4:8], "little") < 1024


class DicomAdapter(Adapter):
    """DICOM files: images, multi-frame volumes, series volumes, waveforms and structured reports."""

    name = "dicom"
    version = "1"
    option_names = ("burned_in", "keep_private")
    extensions = (".dcm", ".dicom")
    description = "DICOM images, series, ECG waveforms and structured reports (de-identified)"

    def sniff(self, path: Path, head: bytes) -> float:
        if head[128:132] == b"DICM":
            return 1.0
        if path.name.lower().endswith(self.extensions):
            return 0.6
        return 0.3 if _looks_like_raw_dicom(head) else 0.0

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        with quiet_pydicom():
            try:
                data = _base.source_bytes(unit.path)  # the bytes its fingerprint hashed
            except OSError as exc:
                raise IngestError(f"cannot read the file ({exc.strerror})") from None
            ds, spans = read_dataset(data)  # and where each element lies, before anything changes
            try:
                keep_private = parse_keep_private(ctx.options.get("keep_private"))
            except ValueError as exc:
                raise IngestError(f"--option {exc}") from None
            try:
                result = deidentify(ds, ctx.deid, ctx.namespace, keep_private)
            except (NotImplementedError, BytesLengthException) as exc:
                # pydicom decodes an element when it is first read: a VR it has no codec for, a length
                # that is not a multiple of the value size (the message names the tag, never a value)
                raise IngestError(f"pydicom cannot decode an element: {str(exc).split('. To replace')[0]}") from None
            seen = getattr(ctx, "seen_ids", None)
            if seen is not None:  # the raw keys this unit used, for scrubbing its stored path
                seen.update(result.facts.known)
            try:
                items = dataset_items(result, lambda: write_patched(result, data, spans),
                                      _shared(result.ds, result.patient_id, result.facts, ctx), ctx)
            except IngestError as exc:
                raise IngestError(ctx.scrub(str(exc), result.facts.known)) from None
            except Exception as exc:
                if isinstance(exc, NotADataFile):
                    raise
                raise IngestError(ctx.scrub(f"{type(exc).__name__}: {exc}", result.facts.known)) from None
        return iter(items)

    def finish(self, ctx: IngestContext) -> Iterator[tuple[Unit, list[Item]]]:
        """One VOLUME item per series of single-frame slices in the store not yet stacked (not with
        the option ``series=defer``: the listener stacks when an association ends, not after every
        instance, which would give a volume of each partial series)."""
        if str(ctx.options.get("series", "")).lower() == "defer":
            return
        for members in series_stacks(ctx.store.con, self.name):
            try:
                with quiet_pydicom():
                    volume = stack_volume(ctx.store.read_blob, members)
            except Exception as exc:  # the runner has no error channel here: log and go on
                log.warning("series %s not stacked: %s: %s", members[0].series_id, type(exc).__name__, exc)
                continue
            yield Unit(Path(f"dicom-series:{members[0].series_id}"), virtual=True), [volume_item(members, volume)]
