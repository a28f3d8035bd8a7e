"""De-identification of DICOM datasets, in the spirit of the DICOM PS3.15 Basic Application Level
Confidentiality Profile with the *Retain Patient Characteristics* and *Retain Longitudinal Temporal
Information with Modified Dates* options.

What happens to a dataset (including every item of every sequence, and the file meta group):

* Patient name and id become the store's keyed pseudonym; every other person name (PN) is emptied.
* Identifying attributes (birth date, addresses, telephone numbers, other ids and names, institution,
  department, station, device serial numbers, accession number, study id, free-text comments, ...)
  are removed or emptied; all private tags and uninterpretable (UN) elements are removed.
* Every DA/DT date moves by the patient's offset, so intervals within a patient survive.
* Every UID that is not a well-known DICOM UID (SOP classes, transfer syntaxes, coding schemes) is
  remapped deterministically, so studies, series and references stay linked.
* Descriptions (study, series, protocol) are scrubbed as free text.
* A final sweep replaces any text that still contains a part of the patient's name or id.

Everything is deterministic for a given store key, so the same file always yields the same bytes.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from .deid import Deidentifier

try:  # the table of UIDs defined by the standard (SOP classes, transfer syntaxes, ...)
    from pydicom._uid_dict import UID_dictionary as _KNOWN_UIDS
except ImportError:  # pragma: no cover - pydicom moved it
    _KNOWN_UIDS = {}

DEID_METHOD = "medweave PS3.15 basic: pseudonyms, shifted dates, new UIDs"  # LO: <= 64
DICOM_ROOT_UID = "1.2.840.10008."
MAX_AGE_YEARS = 90  # ages above 89 are aggregated, as HIPAA Safe Harbor asks

# Attributes removed outright (identifying, or free text that may hold identifiers).
_REMOVE = (
    "PatientBirthTime", "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "MilitaryRank", "BranchOfService", "MedicalRecordLocator",
    "Occupation", "PatientReligiousPreference", "CountryOfResidence", "RegionOfResidence",
    "PatientInsurancePlanCodeSequence", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "PhysiciansOfRecordIdentificationSequence",
    "PerformingPhysicianIdentificationSequence", "PhysiciansReadingStudyIdentificationSequence",
    "OperatorIdentificationSequence", "PersonAddress", "PersonTelephoneNumbers",
    "PersonIdentificationCodeSequence", "StationName", "DeviceSerialNumber", "PlateID", "DetectorID",
    "GantryID", "CassetteID", "SourceApplicationEntityTitle", "ReferencedPatientSequence",
    "RequestAttributesSequence", "AdmissionID", "IssuerOfAdmissionIDSequence",
    "CurrentPatientLocation", "PatientInstitutionResidence", "ResponsibleOrganization",
    "PerformedLocation", "ScheduledStudyLocation", "RequestingService", "ReasonForStudy",
    "ReasonForTheRequestedProcedure", "RequestedProcedureID", "ScheduledProcedureStepID",
    "PerformedProcedureStepID", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "ImageComments", "PatientComments", "StudyComments",
    "AdditionalPatientHistory", "RequestedProcedureComments", "ImagingServiceRequestComments",
    "VisitComments", "InterpretationText", "TextComments", "FrameComments", "DerivationDescription",
    "DeviceDescription", "PatientState", "ServiceEpisodeID", "ServiceEpisodeDescription",
)
# Type 2 attributes kept present but emptied.
_EMPTY = ("AccessionNumber", "StudyID", "PatientBirthDate")
# Descriptions kept, scrubbed as free text.
_SCRUB = (
    "StudyDescription", "SeriesDescription", "ProtocolName", "PerformedProcedureStepDescription",
    "RequestedProcedureDescription", "ContentLabel", "ContentDescription",
)
# Value representations holding free text the final sweep inspects.
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE", "PN", "UR"})
_SHORT_TEXT_VRS = frozenset({"SH", "CS", "AE", "PN"})  # too short to edit: emptied instead
_CHANGED_VRS = frozenset({"PN", "UI", "DA", "DT", "UN"})  # elements of these VRs always change


def _tags(keywords: tuple[str, ...]) -> frozenset[int]:
    tags = {tag_for_keyword(k) for k in keywords}
    if None in tags:
        missing = [k for k in keywords if tag_for_keyword(k) is None]
        raise RuntimeError(f"keywords unknown to pydicom's dictionary: {missing}")
    return frozenset(tags)


REMOVE_TAGS = _tags(_REMOVE)
EMPTY_TAGS = _tags(_EMPTY)
SCRUB_TAGS = _tags(_SCRUB)
PATIENT_NAME = tag_for_keyword("PatientName")
PATIENT_ID = tag_for_keyword("PatientID")
PIXEL_DATA = tag_for_keyword("PixelData")


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
    age = parse_age(ds.get("PatientAge"))
    if age is None:
        born = parse_da(ds.get("PatientBirthDate"))
        seen = next((d for d in (parse_da(ds.get(k)) for k in ("StudyDate", "SeriesDate", "AcquisitionDate",
                                                               "ContentDate")) if d), None)
        if born and seen and seen >= born:
            age = (seen - born).days / 365.25
    return None if age is None else round(min(age, MAX_AGE_YEARS), 3)


def _name_parts(value: object) -> list[str]:
    """Components of a person name (split at ^ and =) and their words."""
    parts = [p.strip() for p in re.split(r"[\^=]", str(value or "")) if p.strip()]
    words = [w for p in parts for w in p.split() if w != p]
    return parts + words


def known_identifiers(ds: Dataset) -> tuple[str, ...]:
    """Name parts and ids of the patient (length >= 3), longest first, for scrubbing text."""
    found: list[str] = []
    for kw in ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"):
        for value in _values(ds.get(kw)):
            found += _name_parts(value)
    for kw in ("PatientID", "OtherPatientIDs"):
        found += [str(v).strip() for v in _values(ds.get(kw))]
    for item in ds.get("OtherPatientIDsSequence") or []:
        found.append(str(item.get("PatientID", "")).strip())
    return tuple(sorted({t for t in found if len(t) >= 3}, key=lambda t: (-len(t), t)))


def _values(value: object) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, MultiValue)) else [value]


def raw_patient_key(ds: Dataset) -> str:
    """The identifier a patient is pseudonymised from: PatientID, else the name, else the study."""
    for candidate in (ds.get("PatientID"), ds.get("PatientName")):
        text = str(candidate or "").strip()
        if text:
            return text
    study = str(ds.get("StudyInstanceUID") or "").strip()
    return f"unidentified-study:{study}" if study else "unidentified"


# --- the transformation ----------------------------------------------------------------------------


class _Cleaner:
    """Applies the profile to one dataset for one patient."""

    def __init__(self, deid: Deidentifier, patient_id: str, known: tuple[str, ...]):
        self.deid = deid
        self.pid = patient_id
        self.known = known
        self.patterns = [_token_pattern(t) for t in known]
        # byte forms of the tokens, to test raw values quickly (None: non-ASCII tokens, decode all)
        ascii_only = all(t.isascii() for t in known)
        self.raw_tokens = [t.lower().encode("ascii") for t in known] if ascii_only else None

    # dates and UIDs
    def shift_da(self, text: str) -> str:
        day = parse_da(text)
        return self.deid.shift(self.pid, day).strftime("%Y%m%d") if day else ""

    def shift_dt(self, text: str) -> str:
        text = text.strip()
        day = parse_da(text[:8])
        return self.shift_da(text[:8]) + text[8:] if day else ""

    def uid(self, value: str) -> str:
        value = str(value).strip()
        if not value or value in _KNOWN_UIDS or value.startswith(DICOM_ROOT_UID):
            return value
        return self.deid.uid(value)

    # text
    def contains_known(self, text: str) -> bool:
        return any(p.search(text) for p in self.patterns)

    def sweep(self, text: str) -> str:
        for p in self.patterns:
            text = p.sub("[ID]", text)
        return text

    # elements
    def element(self, ds: Dataset, elem: DataElement) -> None:
        """Apply the profile to one non-sequence element of ``ds``."""
        tag, vr = elem.tag, elem.VR
        if tag in REMOVE_TAGS or vr == "UN":
            del ds[tag]
        elif tag in EMPTY_TAGS:
            elem.value = ""
        elif tag in (PATIENT_NAME, PATIENT_ID):
            elem.value = self.pid
        elif vr == "PN":
            elem.value = ""
        elif vr == "UI":
            elem.value = _map_values(elem.value, self.uid)
        elif vr == "DA":
            elem.value = _map_values(elem.value, self.shift_da)
        elif vr == "DT":
            elem.value = _map_values(elem.value, self.shift_dt)
        elif tag in SCRUB_TAGS:
            elem.value = _map_values(elem.value, lambda v: self.deid.scrub(str(v), self.known))
        if tag in ds and vr in _TEXT_VRS and self.known:
            self.final_sweep(elem)

    def final_sweep(self, elem: DataElement) -> None:
        """Replace text that still holds a patient name part or id."""
        if elem.tag in (PATIENT_NAME, PATIENT_ID):
            return
        texts = [str(v) for v in _values(elem.value)]
        if not any(self.contains_known(t) for t in texts):
            return
        if elem.VR in _SHORT_TEXT_VRS:
            elem.value = ""
        else:
            elem.value = _map_values(elem.value, lambda v: self.sweep(str(v)))

    def needs_change(self, elem: DataElement | RawDataElement, vr: str) -> bool:
        """Whether the profile touches this element. Answered without decoding the value where
        possible: an element left raw is written back byte for byte, which is much faster."""
        tag = elem.tag
        if tag in EMPTY_TAGS or tag in SCRUB_TAGS or tag in (PATIENT_NAME, PATIENT_ID) or vr in _CHANGED_VRS:
            return True
        if vr not in _TEXT_VRS or not self.known:
            return False
        value = elem.value
        if isinstance(value, bytes) and self.raw_tokens is not None:
            low = value.lower()
            return any(t in low for t in self.raw_tokens)
        return any(self.contains_known(str(v)) for v in _values(value))

    def dataset(self, ds: Dataset) -> None:
        """Apply the profile to ``ds`` and, recursively, to the items of its sequences."""
        for tag in list(ds.keys()):
            if tag.is_private or tag in REMOVE_TAGS:
                del ds[tag]
                continue
            raw = ds.get_item(tag)
            vr = _vr(raw)
            if vr == "SQ":
                for item in ds[tag].value:
                    self.dataset(item)
            elif tag != PIXEL_DATA and self.needs_change(raw, vr):
                self.element(ds, ds[tag])


def _vr(elem: DataElement | RawDataElement) -> str:
    """The VR of a possibly undecoded element (implicit VR files leave it to the dictionary)."""
    if elem.VR:
        return str(elem.VR)
    try:
        return dictionary_VR(elem.tag)
    except KeyError:
        return "UN"


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


def _facts(ds: Dataset, deid: Deidentifier, patient_id: str, known: tuple[str, ...]) -> DicomFacts:
    study_uid = str(ds.get("StudyInstanceUID") or "").strip()
    study_date = parse_da(ds.get("StudyDate")) or parse_da(ds.get("SeriesDate"))
    description = str(ds.get("StudyDescription") or "").strip()
    sex = str(ds.get("PatientSex") or "").strip().upper()
    return DicomFacts(
        study_key=study_uid or None,
        study_date=deid.shift(patient_id, study_date),
        study_description=deid.scrub(description, known) if description else None,
        sex=sex if sex in ("M", "F", "O") else None,
        age=_age(ds),
        known=known,
    )


def deidentify_dataset(ds: Dataset, deid: Deidentifier, namespace: str) -> tuple[Dataset, str, DicomFacts]:
    """De-identify ``ds`` in place (unless ``deid.keep_phi``) and return it with the stored patient
    id and the facts the catalog may keep (see ``DicomFacts``)."""
    known = known_identifiers(ds)
    patient_id = deid.patient_id(namespace, raw_patient_key(ds))
    facts = _facts(ds, deid, patient_id, known)
    if deid.keep_phi:
        return ds, patient_id, facts
    cleaner = _Cleaner(deid, patient_id, known)
    cleaner.dataset(ds)
    _clean_file_meta(ds, cleaner)
    if facts.age is not None and facts.age >= MAX_AGE_YEARS and "PatientAge" in ds:
        ds.PatientAge = f"{MAX_AGE_YEARS:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    return ds, patient_id, facts


def _clean_file_meta(ds: Dataset, cleaner: _Cleaner) -> None:
    """Remap the instance UID in the file meta group and drop the sender's AE title."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    if "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = UID(cleaner.uid(meta.MediaStorageSOPInstanceUID))
    for kw in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
               "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID", "PrivateInformation"):
        if kw in meta:
            del meta[kw]
