"""A fast reader for the common shape of a DICOM file, giving the same data set pydicom gives.

``pydicom.dcmread`` spends most of its time on bookkeeping around each element. For files of the
common shape — a Part 10 file (preamble, ``DICM``, file meta) whose body is little endian, explicit
or implicit VR, and ends where its last element ends — this module walks the elements itself with
``struct`` and hands pydicom the same undecoded ``RawDataElement`` objects that ``dcmread`` would
(values are decoded lazily by pydicom, exactly as after ``dcmread``). It also returns where each
top-level element lies in the bytes, which the de-identification uses to patch them.

Anything else — no preamble, big endian, deflated, a VR that is not one, a length past the end,
stray item tags, trailing bytes — returns None, and the caller reads the file with pydicom. A test
compares the two readers on every file of pydicom's test corpus.
"""

from __future__ import annotations

import struct

from pydicom.datadict import dictionary_VR
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset

from ...store.deid_dicom import interned_tag, new_dataset

IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")  # deflated explicit VR LE, deflated image frames
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
_LONG = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                  b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}) | _LONG
_TAG = struct.Struct("<HH")
_EXPLICIT_HEADER = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (a long VR's is after it)
_IMPLICIT_HEADER = struct.Struct("<HHI")  # group, element, 32-bit length
_VR_NAMES = {vr: vr.decode() for vr in _VRS}
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class _Unsupported(Exception):
    """The file is not of the shape this reader handles: let pydicom read it."""


def _header(data: bytes, pos: int, implicit: bool) -> tuple[int, str | None, int, int]:
    """(tag, VR or None, value length, header length) of the element at ``pos``."""
    if pos + 8 > len(data):
        raise _Unsupported
    group, element = _TAG.unpack_from(data, pos)
    tag = (group << 16) | element
    if implicit or group == 0xFFFE:
        return tag, None, _U32.unpack_from(data, pos + 4)[0], 8
    vr = data[pos + 4:pos + 6]
    if vr not in _VRS:
        raise _Unsupported
    if vr in _LONG:
        if pos + 12 > len(data):
            raise _Unsupported
        return tag, vr.decode(), _U32.unpack_from(data, pos + 8)[0], 12
    return tag, vr.decode(), _U16.unpack_from(data, pos + 6)[0], 8


def _skip_items(data: bytes, pos: int, implicit: bool) -> int:
    """From the first item of an undefined-length value to its Sequence Delimitation Item; returns
    the delimiter's position."""
    while True:
        tag, _, length, _ = _header(data, pos, True)
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise _Unsupported
        pos += 8
        if length == UNDEFINED:
            pos = _skip_item_elements(data, pos, implicit) + 8
        else:
            pos += length
        if pos > len(data):
            raise _Unsupported


def _skip_item_elements(data: bytes, pos: int, implicit: bool) -> int:
    """Through the elements of an undefined-length item; returns its Item Delimitation Item's position."""
    while True:
        if pos + 8 > len(data):
            raise _Unsupported
        group, element = _TAG.unpack_from(data, pos)
        if (group << 16) | element == ITEM_END:
            return pos
        _, _, length, size = _header(data, pos, implicit)
        pos += size
        pos = _skip_items(data, pos, implicit) + 8 if length == UNDEFINED else pos + length
        if pos > len(data):
            raise _Unsupported


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip("\x00 ")


def read(data: bytes) -> tuple[Dataset, dict[int, tuple[int, int]]] | None:
    """(data set, spans) for a file of the common shape, else None. ``spans`` maps each top-level
    tag to the (start, end) of its bytes."""
    try:
        return _read(data)
    except (_Unsupported, struct.error):
        return None


def _read(data: bytes):
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    meta = new_dataset(FileMetaDataset)
    pos, end = 132, len(data)
    while pos + 8 <= end and data[pos:pos + 2] == b"\x02\x00":
        tag, vr, length, size = _header(data, pos, False)
        if length == UNDEFINED or pos + size + length > end:
            return None
        value = data[pos + size:pos + size + length]
        key = interned_tag(tag)
        meta._dict[key] = RawDataElement(key, vr, length, value, pos + size, False, True)
        pos += size + length
    ts_elem = meta._dict.get(interned_tag(0x00020010))
    if ts_elem is None:
        return None
    ts = _text(ts_elem.value)
    if ts == BIG_ENDIAN or ts in DEFLATED:
        return None
    implicit = ts == IMPLICIT_LE
    elements: dict = {}
    spans: dict[int, tuple[int, int]] = {}
    previous = -1
    # The element headers, read here rather than by ``_header`` (one call fewer per element: the
    # loop is most of the reading). Either way: a header past the end, or not a VR, is pydicom's job.
    header = _IMPLICIT_HEADER.unpack_from if implicit else _EXPLICIT_HEADER.unpack_from
    u32, vr_names, long_vrs = _U32.unpack_from, _VR_NAMES, _LONG
    while pos < end:
        start = pos
        if pos + 8 > end:
            return None
        if implicit:
            group, element, length = header(data, pos)
            vr, size = None, 8
        else:
            group, element, raw_vr, length = header(data, pos)
            vr = vr_names.get(raw_vr)
            if vr is None:
                return None
            size = 8
            if raw_vr in long_vrs:
                if pos + 12 > end:
                    return None
                length, size = u32(data, pos + 8)[0], 12
        if group == 0x0002 or group == 0xFFFE:
            return None  # meta elements in the body, stray items: pydicom's job
        tag = (group << 16) | element
        if tag <= previous:
            return None  # elements out of order: pydicom's job
        previous = tag
        vstart = start + size
        if length == UNDEFINED:
            if vr is None:
                try:
                    known = str(dictionary_VR(tag))
                except KeyError:
                    return None
                if known != "SQ" and tag != PIXEL_DATA:
                    return None
            elif vr not in ("SQ", "OB", "OW"):
                return None  # (an undefined-length UN is a sequence in implicit VR: pydicom's job)
            vend = _skip_items(data, vstart, implicit)
            pos = vend + 8
        else:
            vend = vstart + length
            if vend > end:
                return None
            pos = vend
        key = interned_tag(tag)
        elements[key] = RawDataElement(key, vr, length, data[vstart:vend], vstart, implicit, True)
        spans[tag] = (start, pos)
    if not elements:
        return None
    ds = new_dataset(Dataset, elements)
    meta.set_original_encoding(False, True, default_encoding)
    ds.file_meta = meta
    ds.preamble = data[:128]
    encoding = default_encoding
    if interned_tag(0x00080005) in elements:
        try:
            encoding = convert_encodings(convert_raw_data_element(elements[interned_tag(0x00080005)]).value)
        except ValueError:  # a character set name Python cannot even look up (a NUL in it): pydicom's job
            return None
    ds.set_original_encoding(implicit, True, encoding)
    return ds, spans
