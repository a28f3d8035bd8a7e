"""De-identification of DICOM objects: the PS3.15 Basic Application Level Confidentiality Profile,
driven by the standard's own attribute table (``store.dicom_profile``), with these options:

* **Retain Longitudinal Temporal Information with Modified Dates** (113107): every date (DA) and
  date-time (DT) the profile would remove, empty or replace moves by the patient's offset (so
  intervals within a patient survive); times of day (TM) are kept. Dates the profile removes outright
  (admission, curve, overlay dates, ...) are removed. Dates not in the table move too.
* **Retain Patient Characteristics** (113108), in part: sex, age (capped at 90 years: HIPAA counts
  ages over 89), size and weight are kept; the birth date is emptied once the age is known.
* **Clean Descriptors** (113105), in part: study, series, protocol and procedure descriptions are kept
  with identifiers scrubbed out of them as free text.
* **Clean Structured Content** (113104) and **Clean Graphics** (113103): content and graphic
  annotation sequences are kept and cleaned item by item, like the rest (their text is scrubbed).

The basic profile's actions: ``X`` removes the attribute, ``Z`` empties it, ``D`` replaces it by a dummy
(a keyed pseudonym for text, so that equal identifiers stay equal; binary dummies are removed),
``U`` replaces a UID by a keyed one. Where the table allows a choice (``X/Z``, ``X/D``, ``X/Z/D``)
the attribute is removed, except the reference sequences (``X/Z/U*``), which are kept with their
UIDs replaced. The patient's name and id become the store's keyed pseudonym.

Beyond the table: private attributes are removed unless allow-listed (``keep_private``); elements of
unknown type (UN), retired group lengths, stray item tags at the top level and trailing padding are
dropped; every person name (PN) is emptied; every UID that the standard does not define (SOP classes,
transfer syntaxes, ...) is replaced by its keyed twin, so references stay consistent within a study
and across the store; and a final sweep looks, in every text value at any depth, for every identifier
value the object holds (patient name parts and ids, accession number, study id, admission id,
container and specimen identifiers, institution and station names, ...): a short text (SH, CS, AE,
PN) holding one is emptied, a longer one has it replaced by ``[ID]``.

The de-identified object is written by **patching the original bytes**: elements the profile leaves
untouched (most of them, and the pixel data above all) are copied byte for byte, changed elements are
encoded one by one, and the file meta group is rebuilt (a new instance UID, medweave's
implementation UID, no sender AE title). Deflated files, and files whose body is not encoded the way
their transfer syntax says, are re-encoded whole instead.

Burned-in annotation (``BurnedInAnnotation`` = YES) is reported in ``DeidResult.burned_in``: pixels
can carry names that no header profile removes. The adapter keeps such pictures out of the store
unless the user allows them.

Everything is deterministic for a given store key, so the same file always yields the same bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.sequence import Sequence
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

from .deid import Deidentifier
from .dicom_profile import basic_profile, masked_action

try:  # the table of UIDs defined by the standard (SOP classes, transfer syntaxes, ...)
    from pydicom._uid_dict import UID_dictionary as _KNOWN_UIDS
except ImportError:  # pragma: no cover - pydicom moved it
    _KNOWN_UIDS = {}

DEID_METHOD = "medweave PS3.15 basic: pseudonyms, shifted dates, new UIDs"  # LO: <= 64
DICOM_ROOT_UID = "1.2.840.10008."
MAX_AGE_YEARS = 90  # ages above 89 are aggregated, as HIPAA Safe Harbor asks
# medweave's implementation class UID (a UUID-derived 2.25 UID, fixed) and version name (SH)
IMPLEMENTATION_UID = "2.25.203417823591374866227043436207912316457"
IMPLEMENTATION_VERSION = "MEDWEAVE_1"
# CID 7050 codes of the profile and options applied (DeidentificationMethodCodeSequence)
PROFILE_CODES = (("113100", "Basic Application Confidentiality Profile"),
                 ("113107", "Retain Longitudinal With Modified Dates Option"),
                 ("113108", "Retain Patient Characteristics Option"),
                 ("113105", "Clean Descriptors Option"),
                 ("113104", "Clean Structured Content Option"),
                 ("113103", "Clean Graphics Option"))

# Options of the profile (see the module docstring).
KEEP_CHARACTERISTICS = ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")
CLEAN_DESCRIPTORS = (
    "StudyDescription", "SeriesDescription", "ProtocolName", "PerformedProcedureStepDescription",
    "RequestedProcedureDescription", "ContentLabel", "ContentDescription",
)
# Removed although the 2026c table keeps them or does not list them: identifying or free text.
EXTRA_REMOVE = (
    "PatientTelecomInformation", "MedicalRecordLocator", "CountryOfResidence", "RegionOfResidence",
    "PatientReligiousPreference", "Occupation", "MilitaryRank", "BranchOfService", "PatientBirthTime",
)
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE", "PN", "UR"})
_SHORT_TEXT_VRS = frozenset({"SH", "CS", "AE", "PN"})  # too short to edit: emptied instead
_DATE_VRS = frozenset({"DA", "DT"})
_BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN", "US", "SS", "UL", "SL", "FL", "FD",
                         "AT", "SV", "UV"})
_LONG_HEADER_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# Keywords of attributes whose values identify someone or something (tokens for the final sweep):
# the table's attributes named ...ID(s), ...Identifier, ...Number(s), ...Name(s), ...Address.
_IDENTIFIER_KEYWORD = re.compile(r"(?:IDs?|Identifier|Numbers?|Names?|Address|Telephone\w*)$")
# ... except names of things that are not people, places or devices (an ROI called "Liver" is no
# identifier, and sweeping for it would blank every text that says "liver").
_NOT_IDENTIFIERS = ("ProtocolName", "ROIName", "RTPlanName", "StructureSetName", "EntityName",
                    "PositionAcquisitionTemplateName", "TreatmentMachineName", "ClinicalTrialProtocolName")


def _tags(keywords) -> frozenset[int]:
    tags = {tag_for_keyword(k) for k in keywords}
    if None in tags:
        raise RuntimeError(f"keywords unknown to pydicom's dictionary: "
                           f"{[k for k in keywords if tag_for_keyword(k) is None]}")
    return frozenset(tags)


PATIENT_NAME = tag_for_keyword("PatientName")
PATIENT_ID = tag_for_keyword("PatientID")
PATIENT_AGE = tag_for_keyword("PatientAge")
BIRTH_DATE = tag_for_keyword("PatientBirthDate")
PIXEL_DATA = tag_for_keyword("PixelData")
BURNED_IN = tag_for_keyword("BurnedInAnnotation")
TEXT_VALUE = tag_for_keyword("TextValue")
TRAILING_PADDING = 0xFFFCFFFC
KEEP_TAGS = _tags(KEEP_CHARACTERISTICS)
CLEAN_TAGS = _tags(CLEAN_DESCRIPTORS)
EXTRA_REMOVE_TAGS = _tags(EXTRA_REMOVE)


def _vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


# The operation on an attribute the table lists, by its action and VR (see the module docstring).
REMOVE, EMPTY, PSEUDONYM, DUMMY, NEW_UID, SHIFT, KEEP, CLEAN, RECURSE = (
    "remove", "empty", "pseudonym", "dummy", "uid", "shift", "keep", "clean", "recurse")


def operation(tag: int, action: str, vr: str) -> str:
    """What medweave does with an attribute the profile lists with ``action`` (its VR ``vr``)."""
    if tag in (PATIENT_NAME, PATIENT_ID):
        return PSEUDONYM
    if tag in KEEP_TAGS:
        return KEEP
    if tag in CLEAN_TAGS:
        return CLEAN
    if tag == BIRTH_DATE or tag in EXTRA_REMOVE_TAGS:
        return EMPTY if action == "Z" else REMOVE
    may_stay = "Z" in action or "D" in action  # the profile expects a value (empty or dummy)
    if vr in _DATE_VRS and action != "U":
        return SHIFT if may_stay else REMOVE  # retain longitudinal information, modified dates
    if vr == "TM":
        return KEEP if may_stay else REMOVE  # times of day stay with their shifted dates
    if action == "U" or (vr == "UI" and action == "D"):
        return NEW_UID
    if action == "X/Z/U*":
        return RECURSE  # reference sequences: kept, their UIDs replaced
    if action == "Z":
        return EMPTY
    if action == "D":
        if vr == "SQ":
            return RECURSE  # clean structured content / graphics
        return DUMMY if vr in _TEXT_VRS or vr == "AS" else REMOVE
    if action == "Z/D":
        return EMPTY
    return REMOVE  # X, X/Z, X/D, X/Z/D


@dataclass(frozen=True)
class _Plan:
    ops: dict[int, str]  # tag -> operation, for every attribute of the table (and the extras)
    identifier_tags: frozenset[int]  # attributes whose values are tokens for the final sweep


def _build_plan() -> _Plan:
    by_tag, _ = basic_profile()
    ops = {tag: operation(tag, action, _vr_of(tag)) for tag, action in by_tag.items()}
    for tag in EXTRA_REMOVE_TAGS | KEEP_TAGS | CLEAN_TAGS:
        ops.setdefault(tag, operation(tag, "X", _vr_of(tag)))
    identifiers = {tag for tag in by_tag if _vr_of(tag) in _TEXT_VRS
                   and _IDENTIFIER_KEYWORD.search(keyword_for_tag(tag) or "")
                   and keyword_for_tag(tag) not in _NOT_IDENTIFIERS and ops[tag] not in (KEEP, CLEAN)}
    return _Plan(ops=ops, identifier_tags=frozenset(identifiers | {PATIENT_NAME, PATIENT_ID}))


PLAN = _build_plan()


def op_for(tag: int) -> str | None:
    """The operation for an attribute of the profile table; None when the table does not list it."""
    found = PLAN.ops.get(tag)
    if found is None and 0x5000 <= tag >> 16 <= 0x60FF:
        action = masked_action(tag)
        if action is not None:
            return operation(tag, action, _vr_of(tag))
    return found


@dataclass
class DicomFacts:
    """What the catalog may learn about a DICOM object, taken before de-identification.

    ``study_key`` (the original StudyInstanceUID) and ``known`` (identifier strings) stay in memory
    only: the first to derive the keyed study id, the second to scrub free text."""

    study_key: str | None = None
    study_date: dt.date | None = None  # shifted
    study_description: str | None = None  # scrubbed
    sex: str | None = None
    age: float | None = None  # years at the study, capped at MAX_AGE_YEARS
    known: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class DeidResult:
    """A de-identified data set with what the adapter needs to write and describe it."""

    ds: Dataset
    patient_id: str
    facts: DicomFacts
    changed: set[int] = field(default_factory=set)  # top-level tags whose bytes changed (or were added)
    burned_in: bool = False  # the object says its pixels carry burned-in annotation


# --- reading values quickly -------------------------------------------------------------------------

# The state of a fresh, empty Dataset / FileMetaDataset: ``new_dataset`` copies it instead of running
# pydicom's ``__init__``, whose dozen attribute assignments each pass through ``Dataset.__setattr__``
# (three data sets a file cost more than decoding the attributes ingest reads). The containers in it
# are made anew for each data set; if pydicom's data sets ever hold anything else, ``__init__`` is used.
_FRESH_CONTAINERS = {"_dict": dict, "_private_blocks": dict, "_pixel_id": dict,
                     "_pixel_array_opts": lambda: {"use_pdh": False}}


def _fresh_state(cls: type) -> dict | None:
    state = dict(cls().__dict__)
    for name, value in state.items():
        if name in _FRESH_CONTAINERS:
            if value != _FRESH_CONTAINERS[name]():
                return None
        elif not (value is None or isinstance(value, (bool, str))):
            return None
    return state


_FRESH_STATE = {cls: _fresh_state(cls) for cls in (Dataset, FileMetaDataset)}


def new_dataset(cls: type = Dataset, elements: dict | None = None):
    """``cls(elements)`` (``Dataset`` or ``FileMetaDataset``, its elements given as the dict itself,
    not copied or checked), built from a copy of a fresh one's state: the same object pydicom's
    constructor makes, at a tenth of the cost."""
    state = _FRESH_STATE.get(cls)
    if state is None:
        return cls(elements) if elements is not None else cls()
    ds = cls.__new__(cls)
    fresh = dict(state)
    for name, make in _FRESH_CONTAINERS.items():
        if name in fresh:
            fresh[name] = make()
    if elements is not None:
        fresh["_dict"] = elements
    ds.__dict__.update(fresh)
    return ds


_FAST_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                            "UC", "UI", "UR", "UT"})
_FAST_INT = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}


_INTERNED: dict[int, BaseTag] = {}
_INTERNED_MAX = 65536


def interned_tag(tag: int) -> BaseTag:
    """One ``BaseTag`` object per tag (``tag`` a plain int). Data sets whose keys are these objects
    are looked up by identity: any other key compares through ``BaseTag.__eq__``, a Python call,
    which cost more than the rest of reading an attribute."""
    key = _INTERNED.get(tag)
    if key is None:
        key = BaseTag(tag)
        if len(_INTERNED) < _INTERNED_MAX:  # (private tags are many: past the cap, plain objects)
            _INTERNED[tag] = key
    return key


@lru_cache(maxsize=None)
def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"not a DICOM keyword: {keyword!r}")
    return interned_tag(int(tag))


_FAST_MEMO: dict[tuple, object] = {}  # (tag, VR, raw bytes, little endian) -> decoded value
_FAST_MEMO_MAX = 16384  # entries (values of up to _FAST_MEMO_VALUE bytes): bounded memory
_FAST_MEMO_VALUE = 256
_NOT_FAST = object()  # memoised: this raw value goes through pydicom


def fast_get(ds: Dataset, keyword: str, default=None):
    """``ds.get(keyword)`` without pydicom's value conversion where the raw bytes are plain ASCII
    text or a small integer: text comes back as ``str`` (a list of ``str`` when multi-valued),
    numbers as ``int``. Anything else (sequences, other character sets, binary data) goes through
    pydicom. Much faster for the few dozen attributes ingest reads from every file. Decoded short
    values are memoised by their tag, VR, bytes and byte order (the slices of a series repeat most
    of them; the decoding is a function of those four alone)."""
    tag = _tag(keyword)
    elem = ds._dict.get(tag)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement) and isinstance(elem.value, (bytes, bytearray)):
        value = elem.value
        if type(value) is bytes and len(value) <= _FAST_MEMO_VALUE:
            key = (tag, elem.VR, value, elem.is_little_endian)
            hit = _FAST_MEMO.get(key)
            if hit is None:
                hit = _fast_decode(elem)
                if len(_FAST_MEMO) >= _FAST_MEMO_MAX:
                    _FAST_MEMO.clear()
                _FAST_MEMO[key] = tuple(hit) if type(hit) is list else hit
            elif type(hit) is tuple:
                return list(hit)  # (a fresh list each time, as before: callers may change it)
        else:
            hit = _fast_decode(elem)
        if hit is not _NOT_FAST:
            return hit
    try:
        return ds[tag].value
    except Exception:
        return default


def _fast_decode(elem: RawDataElement):
    """The value of a raw element decoded without pydicom (``fast_get``), or ``_NOT_FAST``."""
    vr, value = _vr(elem), elem.value
    if vr in _FAST_TEXT_VRS and value.isascii():
        text = value.decode("ascii").rstrip("\x00 ")
        if vr in ("LT", "ST", "UT"):
            return text
        parts = [v.strip(" \x00") for v in text.split("\\")] if text else [""]
        return parts[0] if len(parts) == 1 else parts
    code = _FAST_INT.get(vr)
    if code and len(value) == struct.calcsize(code):
        return struct.unpack(("<" if elem.is_little_endian is not False else ">") + code, value)[0]
    return _NOT_FAST


# --- small value parsers ---------------------------------------------------------------------------


def parse_da(value: object) -> dt.date | None:
    """A DICOM DA string (YYYYMMDD, or the old YYYY.MM.DD) as a date; None when absent or invalid."""
    text = str(value or "").strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def parse_age(value: object) -> float | None:
    """A DICOM AS string ('045Y', '006M', '003W', '010D') in years; None when absent or invalid."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY]?)\s*", str(value or ""))
    if not m:
        return None
    per_year = {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0, "": 1.0}[m.group(2)]
    return float(m.group(1)) / per_year


def _age(ds: Dataset) -> float | None:
    """Age in years at the study: PatientAge, else birth date to study/acquisition date."""
    age = parse_age(fast_get(ds, "PatientAge"))
    if age is None:
        born = parse_da(fast_get(ds, "PatientBirthDate"))
        seen = next((d for d in (parse_da(fast_get(ds, k)) for k in ("StudyDate", "SeriesDate", "AcquisitionDate",
                                                               "ContentDate")) if d), None)
        if born and seen and seen >= born:
            age = (seen - born).days / 365.25
    return None if age is None else round(min(age, MAX_AGE_YEARS), 3)


def _name_parts(value: object) -> list[str]:
    """Components of a person name (split at ^ and =) and their words."""
    return list(_name_parts_of(str(value or "")))


_NAME_SEPARATORS = re.compile(r"[\^=]")


@lru_cache(maxsize=4096)
def _name_parts_of(text: str) -> tuple[str, ...]:
    """``_name_parts`` of a text, memoised (the slices of a series name the same people)."""
    parts = [p.strip() for p in _NAME_SEPARATORS.split(text) if p.strip()]
    words = [w for p in parts for w in p.split() if w != p]
    return tuple(parts + words)


def _values(value: object) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, MultiValue)) else [value]


def known_identifiers(ds: Dataset) -> tuple[str, ...]:
    """Name parts and ids of the patient (length >= 3), longest first, for scrubbing text."""
    found: list[str] = []
    for kw in ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"):
        for value in _values(fast_get(ds, kw)):
            found += _name_parts(value)
    for kw in ("PatientID", "OtherPatientIDs"):
        found += [str(v).strip() for v in _values(fast_get(ds, kw))]
    for item in fast_get(ds, "OtherPatientIDsSequence") or []:
        found.append(str(item.get("PatientID", "")).strip())
    return _tokens(found)


def _tokens(values) -> tuple[str, ...]:
    return _sorted_tokens(tuple(values))


@lru_cache(maxsize=1024)
def _sorted_tokens(values: tuple[str, ...]) -> tuple[str, ...]:
    """The distinct values of 3+ characters, longest first (memoised: a series repeats them)."""
    return tuple(sorted({t for t in values if len(t) >= 3}, key=lambda t: (-len(t), t)))


def raw_patient_key(ds: Dataset) -> str:
    """The identifier a patient is pseudonymised from: PatientID, else the name, else the study."""
    for candidate in (fast_get(ds, "PatientID"), fast_get(ds, "PatientName")):
        text = str(candidate or "").strip()
        if text:
            return text
    study = str(fast_get(ds, "StudyInstanceUID") or "").strip()
    return f"unidentified-study:{study}" if study else "unidentified"


# --- the transformation ----------------------------------------------------------------------------


def _vr(elem: DataElement | RawDataElement) -> str:
    """The VR an element is handled as: the file's (explicit VR), else the dictionary's; an element
    the file calls UN but the dictionary knows is handled by its real VR."""
    vr = elem.VR
    if vr and vr != "UN":
        return str(vr)
    try:
        return str(dictionary_VR(elem.tag))
    except KeyError:
        return "UN"


def _ascii_values(raw: RawDataElement) -> list[str] | None:
    """The values of an undecoded text element when its bytes are plain ASCII (else None)."""
    value = raw.value
    if not isinstance(value, (bytes, bytearray)) or not value.isascii():
        return None
    text = value.decode("ascii").rstrip("\x00 ")
    return [v.strip(" \x00") for v in text.split("\\")] if text else []


@lru_cache(maxsize=4096)
def _token_pattern(token: str) -> re.Pattern:
    """Case-insensitive match of an identifier: anywhere for 4+ characters, as a word for 3."""
    escaped = re.escape(token)
    if len(token) >= 4:
        return re.compile(escaped, re.IGNORECASE)
    return re.compile(rf"(?<![0-9A-Za-z]){escaped}(?![0-9A-Za-z])", re.IGNORECASE)


def _map_values(value, fn):
    """Apply ``fn`` to a single value or to each value of a multi-valued element."""
    if isinstance(value, (list, MultiValue)):
        return [fn(v) for v in value]
    if value is None or value == "":
        return value
    return fn(value)


class _Cleaner:
    """Applies the profile to one data set (and its sequences) for one patient."""

    def __init__(self, deid: Deidentifier, patient_id: str, known: tuple[str, ...],
                 keep_private: frozenset[tuple[str, int, int]] = frozenset()):
        self.deid = deid
        self.pid = patient_id
        self.known = known  # the patient's names and ids (free-text scrubbing)
        self.keep_private = keep_private
        self.tokens: tuple[str, ...] = known  # every identifier value (the final sweep)
        self._set_tokens(known)
        self.encoding = (True, True)  # (implicit VR, little endian) of the raw values written
        self.changed: set[int] = set()
        self.memo: dict | None = None  # (tag, VR, raw value) -> outcome, shared by files of one context

    def use_memo(self) -> None:
        """Share element outcomes with earlier files of the same context: the same patient (its
        pseudonym, identifiers and every identifier value of the file), options and encoding, under
        the same key. Every outcome of a raw element is a function of its tag, VR and bytes in that
        context, so the slices of a series de-identify their shared header elements once."""
        memos = self.deid.__dict__.setdefault("_dicom_memos", {})
        context = (self.pid, self.known, self.tokens, self.keep_private, self.encoding)
        memo = memos.get(context)
        if memo is None:
            if len(memos) >= _MEMO_CONTEXTS:
                memos.clear()
            memo = memos[context] = {}
        self.memo = memo

    def _set_tokens(self, tokens: tuple[str, ...]) -> None:
        self.tokens = tokens
        self.patterns = [_token_pattern(t) for t in tokens]
        ascii_only = all(t.isascii() for t in tokens)
        self.raw_tokens = [t.lower().encode("ascii") for t in tokens] if ascii_only else None

    # --- identifier values, collected before anything changes ----------------------------------
    def collect(self, ds: Dataset) -> None:
        found: list[str] = list(self.known)
        self._collect(ds, found)
        self._set_tokens(_tokens(found))

    def _collect(self, ds: Dataset, found: list[str]) -> None:
        for tag, elem in list(ds._dict.items()):
            vr = _vr(elem)
            if vr == "SQ":
                for item in self._items(ds, tag):
                    self._collect(item, found)
            elif tag in PLAN.identifier_tags or vr == "PN":
                values = _ascii_values(elem) if isinstance(elem, RawDataElement) else None
                if values is None:
                    values = [str(v) for v in _values(ds[tag].value)]
                for v in values:
                    found += _name_parts(v) if vr == "PN" else [str(v).strip()]

    @staticmethod
    def _items(ds: Dataset, tag: int) -> list[Dataset]:
        """The items of a sequence; a sequence that cannot be decoded (it could hide anything) goes."""
        try:
            value = ds[tag].value
        except Exception:
            value = None
        if isinstance(value, Sequence):
            return list(value)
        if value not in (None, b"", ""):
            del ds[tag]
        return []

    # --- values ----------------------------------------------------------------------------------
    def shift_da(self, text: str) -> str:
        day = parse_da(text)
        return self.deid.shift(self.pid, day).strftime("%Y%m%d") if day else ""

    def shift_dt(self, text: str) -> str:
        text = str(text).strip()
        day = parse_da(text[:8])
        return self.shift_da(text[:8]) + text[8:] if day else ""

    def uid(self, value: str) -> str:
        value = str(value).strip(" \x00")
        if not value or value in _KNOWN_UIDS or value.startswith(DICOM_ROOT_UID):
            return value
        return self.deid.uid(value)

    def dummy(self, value: str, vr: str) -> str:
        """A keyed pseudonym for a text identifier (equal values give equal dummies)."""
        text = str(value).strip()
        if not text:
            return ""
        if vr == "AS":
            return "000Y"
        mac = hmac.new(self.deid.secret, b"dicom-dummy\x1f" + text.encode("utf-8"), hashlib.sha256)
        return "D" + mac.hexdigest()[:12].upper()

    def contains_token(self, text: str) -> bool:
        return any(p.search(text) for p in self.patterns)

    def sweep(self, text: str) -> str:
        for p in self.patterns:
            text = p.sub("[ID]", text)
        return text

    def raw_holds_token(self, elem: DataElement | RawDataElement) -> bool:
        """Whether a text element holds an identifier, looking at its raw bytes where possible."""
        value = elem.value
        if isinstance(value, (bytes, bytearray)) and self.raw_tokens is not None and value.isascii():
            low = value.lower()
            return any(t in low for t in self.raw_tokens)
        return None  # undecided: decode

    # --- elements ---------------------------------------------------------------------------------
    def dataset(self, ds: Dataset, top: bool = False) -> bool:
        """Apply the profile to ``ds`` and its sequences; True when anything changed. At the top
        level the tags that changed are recorded in ``self.changed``."""
        changed_any = False
        private_blocks = self._kept_private_blocks(ds) if self.keep_private else {}
        elements = ds._dict
        memo = self.memo
        for tag, elem in list(elements.items()):
            key = None
            if (memo is not None and type(elem) is RawDataElement and not tag >> 16 & 1
                    and type(elem.value) is bytes and len(elem.value) <= _MEMO_VALUE_MAX
                    and int(tag) != PIXEL_DATA):  # (int: BaseTag compares in Python)
                key = (tag, elem.VR, elem.value)
                done = memo.get(key)
                if done is not None:
                    if done is _KEEP:
                        continue
                    if done is _DROP:
                        del ds[tag]
                    else:
                        elements[tag] = RawDataElement(tag, done[0], len(done[1]), done[1], 0, *self.encoding)
                    changed_any = True
                    if top:
                        self.changed.add(tag)
                    continue
            changed = self.element(ds, tag, elem, private_blocks)
            if key is not None:
                self._remember(memo, key, elements.get(tag), elem, changed)
            if changed:
                changed_any = True
                if top:
                    self.changed.add(tag)
        return changed_any

    @staticmethod
    def _remember(memo: dict, key: tuple, now, before, changed: bool) -> None:
        """What the profile did to a raw element, for the next element of the same tag and bytes:
        kept as it was, removed, or replaced by a raw value (other outcomes are not remembered)."""
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        if now is before and not changed:
            memo[key] = _KEEP
        elif now is None:
            memo[key] = _DROP
        elif type(now) is RawDataElement and type(now.value) is bytes:
            memo[key] = (now.VR, now.value)

    def _kept_private_blocks(self, ds: Dataset) -> dict[tuple[int, int], str]:
        """(group, block) -> creator, for the private blocks whose creator is allow-listed."""
        creators = {(c, g) for c, g, _ in self.keep_private}
        out = {}
        for tag in ds._dict:
            group, element = tag >> 16, tag & 0xFFFF
            if group % 2 and 0x10 <= element <= 0xFF:
                creator = str(ds[tag].value or "").strip().upper()
                if (creator, group) in creators:
                    out[(group, element)] = creator
        return out

    def _private_kept(self, tag: int, blocks: dict[tuple[int, int], str]) -> bool:
        group, element = tag >> 16, tag & 0xFFFF
        if element <= 0xFF:
            return (group, element) in blocks and 0x10 <= element
        creator = blocks.get((group, element >> 8))
        return creator is not None and (creator, group, element & 0xFF) in self.keep_private

    def element(self, ds: Dataset, tag: int, elem, private_blocks) -> bool:
        """Apply the profile to one element of ``ds``; True when it changed (or went)."""
        tag = int(tag)  # plain int comparisons (pydicom's tag class compares in Python)
        group = tag >> 16
        if group == 0x0002 or group == 0xFFFE or tag == TRAILING_PADDING or (tag & 0xFFFF) == 0:
            del ds[tag]  # file meta (rebuilt), stray items, padding, retired group lengths
            return True
        if group % 2:
            if not (private_blocks and self._private_kept(tag, private_blocks)):
                del ds[tag]
                return True
            return self._text(ds, tag, elem, _vr(elem)) if _vr(elem) in _TEXT_VRS else False
        vr = _vr(elem)
        if vr == "UN":
            del ds[tag]
            return True
        op = op_for(tag)
        if op is None:
            op = self._op_by_vr(vr)
        if op == REMOVE:
            del ds[tag]
            return True
        if op == RECURSE:
            changed = False
            for item in self._items(ds, tag):  # (the sequence is now decoded in ds, items editable)
                changed = self.dataset(item) or changed
            return changed
        if tag == PIXEL_DATA:
            return False
        if op == KEEP:
            if tag == PATIENT_AGE:
                return self._cap_age(ds)
            return self._text(ds, tag, elem, vr) if vr in _TEXT_VRS else False
        if op == EMPTY:
            if vr == "SQ":
                if self._items(ds, tag):
                    ds[tag] = DataElement(tag, "SQ", Sequence(), validation_mode=_NO_CHECK)
                    return True
                return False
            return self._set(ds, tag, vr, "", elem)
        if op == PSEUDONYM:
            return self._set(ds, tag, vr, self.pid, elem)
        if op == NEW_UID:
            return self._map(ds, tag, vr, elem, self.uid)
        if op == SHIFT:
            return self._map(ds, tag, vr, elem, self.shift_da if vr == "DA" else self.shift_dt)
        if op == DUMMY:
            return self._map(ds, tag, vr, elem, lambda v: self.dummy(v, vr))
        if op == CLEAN:
            return self._map(ds, tag, vr, elem, lambda v: self.deid.scrub(self.sweep(str(v)), self.known))
        # op == "text": free text and codes, looked at by the final sweep
        if tag == TEXT_VALUE:
            return self._map(ds, tag, vr, elem, lambda v: self.deid.scrub(self.sweep(str(v)), self.known))
        return self._text(ds, tag, elem, vr) if vr in _TEXT_VRS else False

    @staticmethod
    def _op_by_vr(vr: str) -> str:
        """The operation for an attribute the table does not list."""
        if vr == "SQ":
            return RECURSE
        if vr == "UI":
            return NEW_UID
        if vr in _DATE_VRS:
            return SHIFT
        if vr == "PN":
            return EMPTY
        return "text"

    def _cap_age(self, ds: Dataset) -> bool:
        age = parse_age(fast_get(ds, "PatientAge"))
        if age is not None and age > MAX_AGE_YEARS:
            ds.PatientAge = f"{MAX_AGE_YEARS:03d}Y"
            return True
        return False

    def _values_of(self, ds: Dataset, tag: int, elem) -> list[str]:
        values = _ascii_values(elem) if isinstance(elem, RawDataElement) else None
        if values is None:
            values = [str(v) for v in _values(ds[tag].value)]
        return values

    def _put(self, ds: Dataset, tag: int, vr: str, values: list[str]) -> None:
        """Replace an element's value: as raw bytes when plain ASCII (cheap to keep, read and write),
        else as a decoded element that pydicom encodes in the data set's character set."""
        text = "\\".join(values)
        if text.isascii():
            data = text.encode("ascii")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
            key = interned_tag(int(tag))
            ds._dict[key] = RawDataElement(key, vr, len(data), data, 0, *self.encoding)
        else:
            ds[tag] = DataElement(tag, vr, values[0] if len(values) == 1 else values)

    def _set(self, ds: Dataset, tag: int, vr: str, value: str, elem) -> bool:
        if self._values_of(ds, tag, elem) == ([value] if value else []):
            return False
        self._put(ds, tag, vr, [value] if value else [])
        return True

    def _map(self, ds: Dataset, tag: int, vr: str, elem, fn) -> bool:
        old = self._values_of(ds, tag, elem)
        new = [fn(v) for v in old]
        if new == old:
            return False
        self._put(ds, tag, vr, new)
        return True

    def _text(self, ds: Dataset, tag: int, elem, vr: str) -> bool:
        """The final sweep of one text element: an identifier in it is blanked or replaced."""
        if not self.tokens:
            return False
        holds = self.raw_holds_token(elem)
        if holds is False:
            return False
        texts = self._values_of(ds, tag, elem)
        if not any(self.contains_token(t) for t in texts):
            return False
        self._put(ds, tag, vr, [] if vr in _SHORT_TEXT_VRS else [self.sweep(t) for t in texts])
        return True


def _facts(ds: Dataset, deid: Deidentifier, patient_id: str, known: tuple[str, ...]) -> DicomFacts:
    study_uid = str(fast_get(ds, "StudyInstanceUID") or "").strip()
    study_date = parse_da(fast_get(ds, "StudyDate")) or parse_da(fast_get(ds, "SeriesDate"))
    description = str(fast_get(ds, "StudyDescription") or "").strip()
    sex = str(fast_get(ds, "PatientSex") or "").strip().upper()
    return DicomFacts(
        study_key=study_uid or None,
        study_date=deid.shift(patient_id, study_date),
        study_description=deid.scrub(description, known) if description else None,
        sex=sex if sex in ("M", "F", "O") else None,
        age=_age(ds),
        known=known,
    )


def parse_keep_private(spec: str | None) -> frozenset[tuple[str, int, int]]:
    """Private attributes to keep: ``"CREATOR:gggg,xxee;..."`` (the creator string, the group, and
    the element byte within the creator's block), e.g. ``"GEMS_ACQU_01:0019,xx0c"``."""
    out = set()
    for entry in (spec or "").replace("\n", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        m = re.fullmatch(r"(.+):\s*\(?([0-9A-Fa-f]{4}),\s*[xX]{2}([0-9A-Fa-f]{2})\)?", entry)
        if not m or int(m.group(2), 16) % 2 == 0:
            raise ValueError(f"keep_private entry {entry!r}: expected CREATOR:gggg,xxee with an odd group, "
                             "e.g. 'GEMS_ACQU_01:0019,xx0c'")
        out.add((m.group(1).strip().upper(), int(m.group(2), 16), int(m.group(3), 16)))
    return frozenset(out)


def _markers() -> tuple[DataElement, ...]:
    """The elements that say an object was de-identified, and how (PS3.15 E.1.1, step 6)."""
    out = [DataElement(_tag(kw), _vr_of(_tag(kw)), value) for kw, value in (
        ("PatientIdentityRemoved", "YES"), ("DeidentificationMethod", DEID_METHOD),
        ("LongitudinalTemporalInformationModified", "MODIFIED"))]
    codes = Sequence()
    for code, meaning in PROFILE_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
        codes.append(item)
    out.append(DataElement(_tag("DeidentificationMethodCodeSequence"), "SQ", codes))
    return tuple(out)


_MARKERS = _markers()
_MARKER_IDS = frozenset(id(m) for m in _MARKERS)
_KEEP, _DROP = object(), object()  # memoised outcomes of an element (else (VR, new raw value))
_MEMO_VALUE_MAX = 1024  # bytes: longer values are de-identified every time (not worth hashing)
_MEMO_MAX = 4096  # outcomes per context
_MEMO_CONTEXTS = 16  # contexts (patients) remembered
_NO_CHECK = 0  # pydicom.config.IGNORE: values medweave makes itself need no validation
_MARKER_BYTES: dict[tuple[int, tuple[bool, bool]], bytes] = {}


def _encoded(elem: DataElement, implicit: bool, little: bool, encodings) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def deidentify(ds: Dataset, deid: Deidentifier, namespace: str,
               keep_private: frozenset[tuple[str, int, int]] = frozenset()) -> DeidResult:
    """De-identify ``ds`` in place (unless ``deid.keep_phi``); see the module docstring."""
    known = known_identifiers(ds)
    patient_id = deid.patient_id(namespace, raw_patient_key(ds))
    facts = _facts(ds, deid, patient_id, known)
    burned = BURNED_IN in ds and str(ds[BURNED_IN].value or "").strip().upper() == "YES"
    if deid.keep_phi:
        return DeidResult(ds, patient_id, facts, set(), burned)
    cleaner = _Cleaner(deid, patient_id, known, keep_private)
    implicit, little = read_encoding(ds)
    cleaner.encoding = (bool(implicit) if implicit is not None else False, little is not False)
    cleaner.collect(ds)
    cleaner.use_memo()
    cleaner.dataset(ds, top=True)
    for elem in _MARKERS:  # shared, never edited: written from their cached encodings
        ds._dict[elem.tag] = elem
        cleaner.changed.add(elem.tag)
    _clean_file_meta(ds, cleaner)
    return DeidResult(ds, patient_id, facts, cleaner.changed, burned)


def deidentify_dataset(ds: Dataset, deid: Deidentifier, namespace: str) -> tuple[Dataset, str, DicomFacts]:
    """De-identify ``ds`` in place (unless ``deid.keep_phi``) and return it with the stored patient
    id and the facts the catalog may keep (see ``DicomFacts``)."""
    result = deidentify(ds, deid, namespace)
    return result.ds, result.patient_id, result.facts


def _clean_file_meta(ds: Dataset, cleaner: _Cleaner) -> None:
    """The file meta group medweave writes: the instance UID remapped, no sender, no private data."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    sop_class = fast_get(ds, "SOPClassUID") or fast_get(meta, "MediaStorageSOPClassUID")
    instance = fast_get(ds, "SOPInstanceUID")  # already remapped
    if not instance and fast_get(meta, "MediaStorageSOPInstanceUID"):
        instance = cleaner.uid(fast_get(meta, "MediaStorageSOPInstanceUID"))
    values = [(0x00020001, "OB", b"\x00\x01"), (0x00020002, "UI", sop_class), (0x00020003, "UI", instance),
              (0x00020010, "UI", fast_get(meta, "TransferSyntaxUID")), (0x00020012, "UI", IMPLEMENTATION_UID),
              (0x00020013, "SH", IMPLEMENTATION_VERSION)]
    new = new_dataset(FileMetaDataset)
    for tag, vr, value in values:
        if not value:
            continue
        data = value if isinstance(value, bytes) else str(value).strip().encode("ascii", "replace")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        key = interned_tag(tag)
        new._dict[key] = RawDataElement(key, vr, len(data), data, 0, False, True)
    ds.file_meta = new


# --- writing: patch the original bytes ---------------------------------------------------------------


def read_encoding(ds: Dataset) -> tuple[bool | None, bool | None]:
    """(implicit VR, little endian) the body was actually read with. pydicom's ``original_encoding``
    says what the transfer syntax claims even when pydicom found, and read, the other encoding."""
    for elem in ds._dict.values():
        if isinstance(elem, RawDataElement):
            return elem.is_implicit_VR, elem.is_little_endian
    return ds.original_encoding


def _header_length(raw: RawDataElement | DataElement, implicit: bool) -> int:
    if implicit or raw.tag >> 16 == 0xFFFE:
        return 8
    return 12 if raw.VR in _LONG_HEADER_VRS else 8


def element_spans(ds: Dataset, data: bytes) -> dict[int, tuple[int, int]] | None:
    """Where each top-level element of a freshly read data set lies in ``data``: tag -> (start, end).
    None when the elements do not tile the data set exactly (then the object is re-encoded whole)."""
    implicit, little = read_encoding(ds)
    if implicit is None:
        return None
    starts = []
    for tag, elem in ds._dict.items():
        tell = getattr(elem, "value_tell", None) if isinstance(elem, RawDataElement) else getattr(elem, "file_tell", None)
        if tell is None:
            return None
        starts.append((tell - _header_length(elem, implicit), tell, tag, elem))
    starts.sort()
    spans: dict[int, tuple[int, int]] = {}
    fmt = "<HH" if little else ">HH"
    for i, (start, tell, tag, elem) in enumerate(starts):
        if data[start:start + 4] != struct.pack(fmt, tag >> 16, tag & 0xFFFF):
            return None
        end = None
        if isinstance(elem, RawDataElement):
            if elem.length != 0xFFFFFFFF:
                end = tell + elem.length
            elif isinstance(elem.value, (bytes, bytearray)):
                end = tell + len(elem.value) + 8  # the value, then the sequence delimiter
        next_start = starts[i + 1][0] if i + 1 < len(starts) else None
        if end is None:
            end = next_start if next_start is not None else len(data)
        if next_start is not None and end != next_start or end > len(data):
            return None
        spans[tag] = (start, end)
    return spans


def _meta_bytes(meta: FileMetaDataset) -> bytes:
    """Preamble, 'DICM' and the file meta group (explicit VR little endian, group length first)."""
    body = io.BytesIO()
    for key in sorted(meta._dict, key=int):
        tag = int(key)
        if tag == 0x00020000:
            continue
        elem = meta._dict[key]
        vr = elem.VR or _vr_of(tag)
        if isinstance(elem, RawDataElement):
            value = elem.value or b""
        else:
            value = elem.value if vr == "OB" else str(elem.value).encode("ascii")
        if len(value) % 2:
            value += b"\x00" if vr == "UI" else b" "
        body.write(_header(tag, vr, len(value), False, True) + value)
    group = body.getvalue()
    return b"\x00" * 128 + b"DICM" + struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(group)) + group


_HEADER_STRUCTS = {(implicit, little, long): struct.Struct(("<" if little else ">") + (
    "HHI" if implicit else "HH2sHI" if long else "HH2sH"))
    for implicit in (False, True) for little in (False, True) for long in (False, True)}


def _header(tag: int, vr: str, length: int, implicit: bool, little: bool) -> bytes:
    if implicit:
        return _HEADER_STRUCTS[True, little, False].pack(tag >> 16, tag & 0xFFFF, length)
    if vr in _LONG_HEADER_VRS:
        return _HEADER_STRUCTS[False, little, True].pack(tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    return _HEADER_STRUCTS[False, little, False].pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)


@lru_cache(maxsize=256)
def _syntax_encoding(ts: str) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) a transfer syntax UID says, None for deflated, private or
    unknown ones (memoised: building and validating a ``UID`` per file cost as much as the check)."""
    uid = UID(ts)
    if uid == DeflatedExplicitVRLittleEndian:
        return None
    try:
        return uid.is_implicit_VR, uid.is_little_endian
    except ValueError:  # a private or unknown transfer syntax
        return None


def _encoding_matches(ds: Dataset) -> bool:
    implicit, little = read_encoding(ds)
    meta = getattr(ds, "file_meta", None)
    ts = fast_get(meta, "TransferSyntaxUID") if meta else None  # (``meta.get`` decoded a UID object)
    if ts is None:
        return True
    return (implicit, little) == _syntax_encoding(str(ts))


def write_patched(result: DeidResult, data: bytes, spans: dict[int, tuple[int, int]] | None) -> bytes:
    """The de-identified object as a DICOM file: untouched elements copied from ``data``, changed
    ones encoded, the file meta group rebuilt. Falls back to encoding the whole data set."""
    ds = result.ds
    if spans is None or not _encoding_matches(ds):
        return write_whole(ds)
    implicit, little = read_encoding(ds)
    encodings = ds._character_set
    pieces = [_meta_bytes(ds.file_meta)]
    view = memoryview(data)
    markers = _MARKER_IDS
    changed = {int(t) for t in result.changed}  # plain ints: BaseTag compares in Python
    elements = ds._dict
    run_start = run_end = -1  # untouched elements next to each other in ``data``: copied as one range
    for key in sorted(elements, key=int):
        tag = int(key)
        span = spans.get(tag)
        if span is not None and tag not in changed:
            if span[0] == run_end:
                run_end = span[1]
            else:
                if run_end >= 0:
                    pieces.append(view[run_start:run_end])
                run_start, run_end = span
            continue
        if run_end >= 0:
            pieces.append(view[run_start:run_end])
            run_start = run_end = -1
        elem = elements[key]
        if isinstance(elem, RawDataElement) and elem.VR and len(elem.value or b"") < 0xFFFF:
            pieces.append(_header(tag, elem.VR, len(elem.value), implicit, little) + elem.value)
            continue
        if id(elem) in markers:
            marker = (tag, (implicit, little))
            if marker not in _MARKER_BYTES:
                _MARKER_BYTES[marker] = _encoded(elem, implicit, little, None)
            pieces.append(_MARKER_BYTES[marker])
            continue
        pieces.append(_encoded(ds[key], implicit, little, encodings))
    if run_end >= 0:
        pieces.append(view[run_start:run_end])
    return b"".join(pieces)


def write_whole(ds: Dataset) -> bytes:
    """Encode the whole data set (every element decoded first, so that a body read in another
    encoding than its transfer syntax says is written the way the transfer syntax says)."""
    for _ in ds.iterall():  # decodes every element, at any depth, giving each its VR
        pass
    meta = ds.file_meta
    ts = UID(str(meta.get("TransferSyntaxUID") or ""))
    if not ts or not ts.is_transfer_syntax:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=bool(meta.get("MediaStorageSOPClassUID") and
                                             meta.get("MediaStorageSOPInstanceUID")))
    return buf.getvalue()
