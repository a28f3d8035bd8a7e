"""FHIR R4 JSON: Bundles (any type), single resources, and bulk-export NDJSON (one resource a line).

Every resource that is read is validated with ``fhir.resources`` (its R4B models, which read R4 JSON)
before anything is read from it; resources of other kinds (Organization, Practitioner, Claim, ...) are
neither validated nor stored, and a file holding only such resources is skipped as not a data file.
The resource types read:

=================  ==========================================================================
Patient            one TABLE item ("demographics"); patient_attrs sex (M/F/O from gender), deceased,
                   deceased_date (shifted). Name, birth date, address, telecom, identifiers and
                   the narrative are never stored; the birth date only yields ``age`` on items.
Observation        one TABLE item per observation: code, value_num/value_text, unit, time;
                   meta display, category, status, interpretation, reference_range.
                   Each component (e.g. systolic/diastolic of a blood-pressure panel) becomes its
                   own TABLE item with meta ``panel`` = the parent code; the parent itself is
                   stored only when it has a value of its own or no components.
Condition          TABLE item: code, time = onset, value_text = clinical status;
                   labels {"condition:<code>": 1} (0 when the verification status is "refuted").
DiagnosticReport   TEXT item (blob ``.txt``): conclusion plus the text of ``presentedForm``
                   attachments (text/plain, text/html with tags removed; other types such as PDF
                   are listed in meta ``attachments_skipped``), scrubbed. A report without any text
                   yields no item. When it references an ImagingStudy of the same file, it joins
                   that study.
ImagingStudy       a study row (``ctx.study(patient, Study Instance UID)``, with the shifted date
                   and description) and a TABLE item whose meta lists the series (remapped series
                   UID, modality, body site, number of instances).
Encounter          TABLE item: code = class, value_text = status, time = period start;
                   meta period_end, duration_hours, type, reason.
DocumentReference  TEXT item (blob ``.txt``): description plus the text of ``content`` attachments
                   (where Synthea and EHRs keep clinical notes), scrubbed.
Medication*        MedicationRequest / Statement / Administration / Dispense: TABLE item, code = the
                   medication, value_text = status, time = authored / effective / handed over; meta
                   dosage text (scrubbed), intent, reason.
Procedure          TABLE item: code, value_text = status, time = performed; meta body site, reason.
Immunization       TABLE item: code = vaccine, value_text = status, time = occurrence.
others             AllergyIntolerance, CarePlan, Goal, ServiceRequest, FamilyMemberHistory, Specimen,
                   Device, ClinicalImpression, RiskAssessment: TABLE item with their code (or type or
                   category), status and time.
=================  ==========================================================================

Codes are written ``system|code`` (the FHIR token form), or just ``code`` when no system is given.
Times: an instant with a zone is converted to UTC and stored without zone; a partial date ("2013",
"2013-04") is stored as its first day with meta ``time_precision``; every time is shifted per patient.

Patients: the raw patient key is, by default (option ``fhir_patient_key="identifier"``), the
Patient's MRN (an identifier typed ``MR``, else the first usual/official identifier, else the first
one), falling back to its logical id. This links the Patient with other sources that carry the same
MRN (DICOM PatientID, a CSV column). A reference to a patient absent from the file uses the
reference's ``identifier`` when it has one, else the referenced logical id. Bulk exports
(Patient.ndjson beside Observation.ndjson) refer to patients only by logical id: ingest them with
``fhir_patient_key="id"`` so that every file keys patients by logical id.

Resources whose subject is not a Patient (a Group, a Device) and records marked
``entered-in-error`` are skipped. A resource without a subject belongs to the file's only Patient.

Atomic per file: one invalid resource (or an unreadable line) rejects the whole file, with a
message naming its place (``entry 3``, ``line 7``), its type and, except for a Patient, its id, and
the first validation error (field path and message, never the offending value). A file with no
supported resource at all is an error too.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterator

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from ...store.catalog import Item, Modality, canonical_json, sha256_bytes
from ...store.deid import scrub_known
from ..base import Adapter, IngestContext, IngestError, NotADataFile, Unit, quoted

SUPPORTED = ("Patient", "Observation", "Condition", "DiagnosticReport", "ImagingStudy", "Encounter",
             "DocumentReference", "MedicationRequest", "MedicationStatement", "MedicationAdministration",
             "MedicationDispense", "Procedure", "Immunization", "AllergyIntolerance", "CarePlan", "Goal",
             "ServiceRequest", "FamilyMemberHistory", "Specimen", "Device", "ClinicalImpression", "RiskAssessment")
# Resources about a patient read by the generic builder (code, status, time; no free text but scrubbed notes).
GENERIC = SUPPORTED[13:]
PATIENT_KEYS = ("identifier", "id")
_RESOURCE_TYPE_RE = re.compile(rb'"resourceType"\s*:\s*"[A-Z][A-Za-z]+"')
_FHIR_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_SEX = {"male": "M", "female": "F", "other": "O"}
# Where a Patient resource keeps identifying strings (to scrub them from any free text).
_PHI_PATHS = (
    ("id",), ("birthDate",), ("identifier", "value"), ("telecom", "value"),
    ("name", "family"), ("name", "given"), ("name", "text"),
    ("address", "line"), ("address", "city"), ("address", "postalCode"), ("address", "text"),
    ("contact", "name", "family"), ("contact", "name", "given"), ("contact", "name", "text"),
    ("contact", "telecom", "value"), ("contact", "address", "line"),
)


# --- reading the file ----------------------------------------------------------------------------

@dataclass
class _Entry:
    """One resource of the file: where it sits (for messages), its JSON, its validated model."""

    where: str
    raw: Any
    full_url: str | None = None
    model: Any = None

    @property
    def rtype(self) -> str:
        return self.raw.get("resourceType", "?") if isinstance(self.raw, dict) else "?"

    def label(self) -> str:
        """``entry 3 (Observation 'glucose')``; a Patient's id is withheld (it may be an MRN)."""
        rid = self.raw.get("id") if isinstance(self.raw, dict) else None
        show_id = self.rtype != "Patient" and isinstance(rid, str) and _FHIR_ID_RE.match(rid)
        return f"{self.where} ({self.rtype}" + (f" {rid!r})" if show_id else ")")


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        detail = exc.__class__.__name__
        if isinstance(exc, json.JSONDecodeError):
            detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise IngestError(f"{where}: not valid JSON ({detail}); expected FHIR JSON") from None
    except RecursionError:
        raise IngestError(f"{where}: JSON nested deeper than Python's parser can follow (about "
                          f"{sys.getrecursionlimit()} levels); no FHIR resource is nested that deep") from None


def _load_entries(path: Path) -> list[_Entry]:
    """The resources of a .json file (a resource or a Bundle) or of a .ndjson file (one a line)."""
    data = path.read_bytes()
    if path.name.lower().endswith(".ndjson"):
        tops = [(f"line {n}", _parse_json(line, f"line {n}"))
                for n, line in enumerate(data.splitlines(), 1) if line.strip()]
    else:
        tops = [("resource", _parse_json(data, "file"))]
    entries: list[_Entry] = []
    for where, obj in tops:
        entries.extend(_expand(obj, where))
    return entries


def _expand(obj: Any, where: str) -> list[_Entry]:
    """A top-level object as entries: a Bundle gives its entries' resources, a resource itself."""
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        raise IngestError(f"{where}: expected a JSON object with a \"resourceType\" (a FHIR resource)")
    if obj["resourceType"] != "Bundle":
        return [_Entry(where, obj)]
    entries = obj.get("entry") or []
    shell = {**obj, "entry": [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                              for e in entries]} if entries else obj
    _validate(_Entry(where, shell), get_fhir_model_class("Bundle"))
    prefix = "" if where == "resource" else f"{where} "
    return [_Entry(f"{prefix}entry {i}", e["resource"], e.get("fullUrl"))
            for i, e in enumerate(entries) if e.get("resource") is not None]


def _validation_message(exc: ValidationError) -> str:
    """The first validation error as ``path: message`` (the offending value left out)."""
    errors = exc.errors()
    first = errors[0]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    msg = first["msg"]
    value = first.get("input")
    if isinstance(value, str) and len(value) >= 2:
        msg = msg.replace(value, "[value]")
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return f"{path or 'resource'}: {msg}{more}"


# R4 resource types that the R4B models of fhir.resources no longer have (product and substance
# definitions, evidence syntheses): valid R4, holding no patient data, so skipped rather than failed.
R4_ONLY_TYPES = frozenset({
    "EffectEvidenceSynthesis", "RiskEvidenceSynthesis", "MedicinalProduct", "MedicinalProductAuthorization",
    "MedicinalProductContraindication", "MedicinalProductIndication", "MedicinalProductIngredient",
    "MedicinalProductInteraction", "MedicinalProductManufactured", "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical", "MedicinalProductUndesirableEffect", "SubstanceNucleicAcid",
    "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation", "SubstanceSourceMaterial",
    "SubstanceSpecification", "DeviceUseStatement",
})


def _check_resource_type(entry: _Entry) -> None:
    """IngestError unless the entry is an object whose resourceType FHIR R4 defines."""
    if not isinstance(entry.raw, dict):
        raise IngestError(f"{entry.where}: expected a JSON object for the resource")
    if not isinstance(entry.rtype, str):
        raise IngestError(f"{entry.where}: resourceType is a JSON {type(entry.rtype).__name__}, not a name")
    if entry.rtype in R4_ONLY_TYPES:
        return
    try:
        cls = get_fhir_model_class(entry.rtype)
    except (ValueError, KeyError):
        cls = None
    if cls is None or not issubclass(cls, Resource):  # the value itself is not echoed
        raise IngestError(f"{entry.where}: its resourceType is not a FHIR R4 resource type "
                          "(expected one such as Patient, Observation, Bundle)")


def _validate(entry: _Entry, cls: type | None = None) -> None:
    """Validate one resource against its R4 model and keep the model; IngestError when invalid."""
    if not isinstance(entry.raw, dict):
        raise IngestError(f"{entry.where}: expected a JSON object for the resource")
    if cls is None:
        try:
            cls = get_fhir_model_class(entry.rtype)
        except ValueError:
            cls = None
        if cls is None or not issubclass(cls, Resource):  # the value itself is not echoed
            raise IngestError(f"{entry.where}: its resourceType is not a FHIR R4 resource type "
                              "(expected one such as Patient, Observation, Bundle)")
    try:
        entry.model = cls.model_validate(entry.raw)
    except ValidationError as exc:
        raise IngestError(f"{entry.label()}: invalid FHIR R4: {_validation_message(exc)}") from None
    except (ValueError, KeyError, TypeError) as exc:  # fhir.resources raises these for unknown nested types
        raise IngestError(f"{entry.label()}: invalid FHIR R4 ({exc.__class__.__name__})") from None


def _strings_at(obj: Any, path: tuple[str, ...]) -> Iterator[str]:
    """Every string reached by following ``path`` through dicts and lists."""
    if isinstance(obj, list):
        for x in obj:
            yield from _strings_at(x, path)
    elif not path:
        if isinstance(obj, str):
            yield obj
    elif isinstance(obj, dict):
        yield from _strings_at(obj.get(path[0]), path[1:])


def _name_words(text: str) -> list[str]:
    """A name as a whole and word by word, to scrub either form from free text."""
    return [text, *re.split(r"[\s,]+", text)]


def _known_identifiers(entries: list[_Entry]) -> list[str]:
    """Identifying strings of every Patient in the file (read before validation, so that even the
    message about an invalid Patient can be scrubbed of them)."""
    out: list[str] = []
    for e in entries:
        contained = e.raw.get("contained") if isinstance(e.raw, dict) else None
        for raw in [e.raw, *(contained if isinstance(contained, list) else [])]:
            if isinstance(raw, dict) and raw.get("resourceType") == "Patient":
                for path in _PHI_PATHS:
                    for s in _strings_at(raw, path):
                        out.extend(_name_words(s) if "name" in path else [s])
    return [s for s in out if s.strip()]


# --- small value helpers -------------------------------------------------------------------------

def _instant(value: Any) -> tuple[dt.datetime | None, str | None]:
    """A FHIR date/dateTime/instant as a naive UTC datetime, and its precision when partial."""
    if value is None:
        return None, None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value, None
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day), None
    parts = [int(p) for p in str(value).split("-")]
    precision = "year" if len(parts) == 1 else "month"
    return dt.datetime(parts[0], parts[1] if len(parts) > 1 else 1, 1), precision


def _code(concept: Any) -> str | None:
    """``system|code`` of the first coding with a code (a CodeableConcept or a Coding)."""
    codings = getattr(concept, "coding", None) if concept is not None else None
    for c in (codings if codings is not None else [concept] if concept is not None else []):
        if getattr(c, "code", None):
            return f"{c.system}|{c.code}" if c.system else c.code
    return None


def _codes(concepts: list | None) -> list[str]:
    return [c for c in (_code(x) for x in concepts or []) if c]


def _display(concept: Any) -> str | None:
    """The first coding's display, else the concept's text (terminology, not free text)."""
    if concept is None:
        return None
    for c in getattr(concept, "coding", None) or [concept]:
        if getattr(c, "display", None):
            return c.display
    return getattr(concept, "text", None)


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """Drop keys whose value is None or empty."""
    return {k: v for k, v in d.items() if v is not None and v != [] and v != {}}


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _start(period: Any) -> Any:
    """The start of a Period (or None)."""
    return period.start if period is not None else None


def _bounds(low: Any, high: Any) -> dict[str, Any]:
    """A low/high pair of Quantities as numbers with their unit."""
    return {"low": _num(low.value) if low else None, "high": _num(high.value) if high else None,
            "unit": (low or high).unit if (low or high) else None}


class _HtmlText(HTMLParser):
    """Collects the text of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _html_to_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    return re.sub(r"[ \t]+", " ", "".join(parser.parts)).strip()


def _ref_parts(reference: str) -> tuple[str | None, str]:
    """(resource type or None, logical id) of a reference string (relative, absolute or urn)."""
    ref = re.sub(r"/_history/[^/]+$", "", reference.strip()).rstrip("/")
    if ref.startswith("urn:"):
        return None, ref.rsplit(":", 1)[-1]
    parts = ref.split("/")
    return (parts[-2], parts[-1]) if len(parts) >= 2 else (None, ref)


def _ref_keys(entry: _Entry) -> list[str]:
    """The strings by which other resources of the file may refer to ``entry``."""
    keys = [f"{entry.rtype}/{entry.model.id}"] if entry.model.id else []
    return keys + ([entry.full_url] if entry.full_url else [])


# --- patients ------------------------------------------------------------------------------------

@dataclass
class _Subject:
    """A resolved patient: stored id, patient attributes, birth (for ages)."""

    pid: str
    attrs: dict[str, Any]
    birth: dt.datetime | None = None
    known: list[str] = field(default_factory=list)  # raw identifiers to scrub from text


def _is_mrn(identifier: Any) -> bool:
    return any(c.code == "MR" for c in (getattr(identifier.type, "coding", None) or []))


def _patient_raw_key(patient: Any, mode: str) -> str | None:
    """The raw key of a Patient: its MRN-like identifier or its logical id (see module docs)."""
    ids = [i for i in patient.identifier or [] if i.value]
    best = (next((i for i in ids if _is_mrn(i)), None)
            or next((i for i in ids if i.use in ("usual", "official")), None)
            or (ids[0] if ids else None))
    mrn = best.value if best else None
    return (patient.id or mrn) if mode == "id" else (mrn or patient.id)


class _Patients:
    """The file's Patients, indexed by the references that may point at them."""

    def __init__(self, entries: list[_Entry], ctx: IngestContext, mode: str):
        self.ctx = ctx
        self.mode = mode
        self.by_ref: dict[str, _Subject] = {}
        self.by_entry: dict[str, _Subject] = {}  # Patient entry's place -> its subject
        self.contained: dict[str, _Subject] = {}  # "<entry's place>#<id>" -> a contained Patient
        for e in entries:
            if e.rtype == "Patient":
                sub = self.by_entry[e.where] = self._from_patient(e)
                self.by_ref.update({k: sub for k in _ref_keys(e)})

    def _from_patient(self, e: _Entry) -> _Subject:
        p = e.model
        # a Patient with neither identifier nor id (valid FHIR, e.g. inside a transaction Bundle) is keyed
        # by its entry's fullUrl, else by its content
        raw = _patient_raw_key(p, self.mode) or e.full_url or sha256_bytes(canonical_json(e.raw).encode())
        pid = self.ctx.patient(raw)
        died, _ = _instant(p.deceasedDateTime)
        shifted_death = self.ctx.shift(pid, died)
        attrs = {
            "namespace": self.ctx.namespace,
            "sex": _SEX.get(p.gender or ""),
            "deceased": True if p.deceasedDateTime else p.deceasedBoolean,
            "deceased_date": shifted_death.date().isoformat() if shifted_death else None,
        }
        return _Subject(pid, _clean(attrs), _instant(p.birthDate)[0], [raw])

    def resolve(self, ref: Any, e: _Entry) -> _Subject | None:
        """The patient a subject reference points at; None when it names no patient (no subject in a
        file without exactly one Patient, a Group, a Device, a Location, ...): the caller skips it."""
        if ref is None:
            if len(self.by_entry) == 1:
                return next(iter(self.by_entry.values()))
            return None
        if ref.type and ref.type != "Patient":
            return None
        reference = ref.reference or ""
        if reference.startswith("#"):
            return self._contained(reference[1:], e)
        if reference:
            found = self.by_ref.get(reference) or self.by_ref.get("Patient/" + _ref_parts(reference)[1])
            if found:
                return found
        return self._unlisted(ref, reference, e)

    def _unlisted(self, ref: Any, reference: str, e: _Entry) -> _Subject | None:
        """A patient referred to but not in the file: keyed by the reference's identifier or id."""
        rtype, rid = _ref_parts(reference) if reference else (None, None)
        if rtype not in (None, "Patient"):
            return None
        ident = ref.identifier.value if ref.identifier is not None else None
        raw = (rid or ident) if self.mode == "id" else (ident or rid)
        display = (ref.display or "").strip()
        if not raw and display:  # as DICOM without a patient id: the name keys the patient
            self.ctx.warn(f"{e.label()}: subject named only by a display name: patient keyed by that name")
            raw = "display:" + display
        if not raw:
            return None
        known = [s for s in (ident, rid, *(_name_words(display) if display else [])) if s]
        return _Subject(self.ctx.patient(raw), {"namespace": self.ctx.namespace}, None, known)

    def _contained(self, cid: str, e: _Entry) -> _Subject | None:
        """A subject inside the resource itself (``"reference": "#newborn"``): a contained Patient is
        keyed like any Patient; another contained type (a Group) names no patient."""
        found = next((c for c in e.raw.get("contained") or [] if isinstance(c, dict) and c.get("id") == cid), None)
        if found is None:
            raise IngestError(f"{e.label()}: subject refers to a contained resource the resource does not hold")
        if found.get("resourceType") != "Patient":
            return None
        key = f"{e.where}#{cid}"
        if key not in self.contained:
            inner = _Entry(f"{e.where} contained", found)
            _validate(inner)
            self.contained[key] = self._from_patient(inner)
        return self.contained[key]


# --- the adapter ---------------------------------------------------------------------------------

class FhirAdapter(Adapter):
    """FHIR R4 JSON (``.json`` Bundle or resource, ``.ndjson`` bulk export); see the module docstring
    for what each resource type becomes. Option ``fhir_patient_key``: ``identifier`` (default) or ``id``."""

    name = "fhir"
    version = "1"
    option_names = ("fhir_patient_key",)
    extensions = (".json", ".ndjson")
    description = "FHIR R4 JSON: Bundles, single resources, bulk-export NDJSON"

    def sniff(self, path: Path, head: bytes) -> float:
        """Sure when a .json/.ndjson file starts with an object that names a ``resourceType``."""
        if not path.name.lower().endswith(self.extensions):
            return 0.0
        text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        return 0.9 if text.startswith(b"{") and _RESOURCE_TYPE_RE.search(text) else 0.0

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        mode = ctx.options.get("fhir_patient_key", "identifier")
        if mode not in PATIENT_KEYS:
            raise IngestError(f"option fhir_patient_key={mode!r}: expected one of {', '.join(PATIENT_KEYS)}")
        entries = _load_entries(unit.path)
        known = _known_identifiers(entries)
        for e in entries:  # a resourceType that FHIR does not define is an error, whatever is read
            if e.rtype not in SUPPORTED:
                _check_resource_type(e)
        found = sorted({e.rtype for e in entries})
        if not set(found) & set(SUPPORTED):
            raise NotADataFile(f"FHIR resources that hold no patient data medweave stores (found: "
                               f"{', '.join(found) or 'none'}; stored: {', '.join(SUPPORTED)})")
        entries = [e for e in entries if e.rtype in SUPPORTED]  # only what is read is validated
        try:
            for e in entries:
                _validate(e)
        except IngestError as exc:  # the tool's words, without the patient's identifiers
            raise IngestError(exc.args[0] if ctx.deid.keep_phi else scrub_known(str(exc), known)) from None
        yield from _FileReader(entries, ctx, mode, known).items()


def _some(labels: list[str], shown: int = 3) -> str:
    more = f" and {len(labels) - shown} more" if len(labels) > shown else ""
    return ", ".join(labels[:shown]) + more


class _FileReader:
    """Turns the validated resources of one file into items."""

    def __init__(self, entries: list[_Entry], ctx: IngestContext, mode: str, known: list[str]):
        self.entries = entries
        self.ctx = ctx
        self.known = known
        self.patients = _Patients(entries, ctx, mode)
        self.studies = {k: e for e in entries if e.rtype == "ImagingStudy" for k in _ref_keys(e)}
        self.builders: dict[str, Callable[[_Entry, _Subject], Iterator[Item]]] = {
            "Patient": self._patient, "Observation": self._observation, "Condition": self._condition,
            "DiagnosticReport": self._report, "ImagingStudy": self._imaging, "Encounter": self._encounter,
            "DocumentReference": self._document, "MedicationRequest": self._medication,
            "MedicationStatement": self._medication, "MedicationAdministration": self._medication,
            "MedicationDispense": self._medication, "Procedure": self._procedure, "Immunization": self._immunization,
            **{t: self._generic for t in GENERIC},
        }

    @staticmethod
    def _subject_ref(e: _Entry) -> Any:
        ref = getattr(e.model, "subject", None) or getattr(e.model, "patient", None)
        if isinstance(ref, list):  # Device.patient is one reference; some types hold lists
            ref = ref[0] if ref else None
        return ref

    def _inherited(self) -> dict[str, Any]:
        """Entry place -> the subject of the report or panel that lists it (``DiagnosticReport.result``,
        ``Observation.hasMember``), for results that carry no subject of their own (HL7's report Bundles)."""
        by_key = {k: e for e in self.entries for k in _ref_keys(e)}
        out: dict[str, Any] = {}
        for _ in range(2):  # a panel inside a report: its members get the report's subject too
            for e in self.entries:
                ref = self._subject_ref(e) or out.get(e.where)
                members = getattr(e.model, "result", None) if e.rtype == "DiagnosticReport" else \
                    getattr(e.model, "hasMember", None) if e.rtype == "Observation" else None
                for m in (members or []) if ref is not None else []:
                    target = by_key.get(getattr(m, "reference", None) or "")
                    if target is not None and self._subject_ref(target) is None:
                        out.setdefault(target.where, ref)
        return out

    def items(self) -> Iterator[Item]:
        """The items of every resource that names a patient. Resources that name none (no subject in
        a file without exactly one Patient; a Group, Device or Location as subject) are left out:
        said in a warning, or, when nothing in the file names a patient, the file is not a data file
        for a patient-centric store."""
        inherited = self._inherited()
        unplaced: list[str] = []
        n = 0
        for e in self.entries:
            build = self.builders.get(e.rtype)
            if build is None or _entered_in_error(e.model):
                continue
            if e.rtype == "Patient":
                sub = self.patients.by_entry[e.where]
            else:
                sub = self.patients.resolve(self._subject_ref(e) or inherited.get(e.where), e)
            if sub is None:
                unplaced.append(e.label())
                continue
            for it in build(e, sub):
                n += 1
                yield it
        if unplaced and not n:
            raise NotADataFile(f"FHIR resources that name no patient ({_some(unplaced)}): a patient-centric "
                               "store has nowhere to put them")
        if unplaced:
            self.ctx.warn(f"{len(unplaced)} resource(s) that name no patient not stored: {_some(unplaced)}")

    # --- helpers shared by the builders ----------------------------------------------------------
    def scrub(self, text: str | None, sub: _Subject) -> str | None:
        return self.ctx.scrub(text, [*self.known, *sub.known]) if text else text

    def when(self, value: Any, sub: _Subject) -> tuple[dt.datetime | None, dict[str, Any]]:
        """A shifted time and its meta (precision) for ``sub``."""
        at, precision = _instant(value)
        return self.ctx.shift(sub.pid, at), ({"time_precision": precision} if precision else {})

    def item(self, e: _Entry, sub: _Subject, modality: Modality, fields: dict[str, Any],
             meta: dict[str, Any], when: Any = None, part: str = "", **extra: Any) -> Item:
        """An item of ``sub`` from entry ``e``, with format, time, age and patient attributes set."""
        at, when_meta = self.when(when, sub)
        raw_at, _ = _instant(when)
        age = round((raw_at - sub.birth).days / 365.25, 2) if raw_at and sub.birth and raw_at >= sub.birth else None
        return Item(
            patient_id=sub.pid,
            modality=modality,
            fields=_clean({"format": "fhir", **fields, "time": at, "age": age}),
            meta=_clean({"resource": e.rtype, **meta, **when_meta}),
            source_key=f"{e.where}:{e.rtype}{part}",
            patient_attrs=sub.attrs,
            **extra,
        )

    def shifted_iso(self, value: Any, sub: _Subject) -> str | None:
        at, _ = self.when(value, sub)
        return at.isoformat() if at else None

    # --- one builder per resource type -----------------------------------------------------------
    def _patient(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        p = e.model
        yield self.item(e, sub, Modality.TABLE, {"code": "demographics"},
                        {"gender": p.gender, "deceased": sub.attrs.get("deceased"), "active": p.active})

    def _observation(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        o = e.model
        when = o.effectiveDateTime or o.effectiveInstant or _start(o.effectivePeriod) or o.issued
        common = {"category": _codes(o.category), "status": o.status}
        has_value = any(getattr(o, f"value{t}", None) is not None for t in _VALUE_TYPES)
        if has_value or not o.component:
            fields, meta = self._measurement(o, sub)
            yield self.item(e, sub, Modality.TABLE, fields, {**common, **meta}, when)
        for j, comp in enumerate(o.component or []):
            fields, meta = self._measurement(comp, sub)
            yield self.item(e, sub, Modality.TABLE, fields, {**common, **meta, "panel": _code(o.code)},
                            when, part=f":component {j}")

    def _measurement(self, m: Any, sub: _Subject) -> tuple[dict[str, Any], dict[str, Any]]:
        """Fields and meta of an Observation or one of its components: code, value, ranges."""
        fields, value_meta = self._value(m, sub)
        ranges = [_clean({**_bounds(r.low, r.high), "type": _code(r.type), "text": self.scrub(r.text, sub)})
                  for r in m.referenceRange or []]
        meta = {"display": self.scrub(_display(m.code), sub), "interpretation": _codes(m.interpretation),
                "reference_range": ranges, "data_absent": _code(m.dataAbsentReason), **value_meta}
        return {"code": _code(m.code), **fields}, meta

    def _value(self, m: Any, sub: _Subject) -> tuple[dict[str, Any], dict[str, Any]]:
        """value[x] as item fields (value_num / value_text / unit) plus meta for the rest."""
        q = m.valueQuantity
        if q is not None:
            return {"value_num": _num(q.value), "unit": q.unit or q.code}, {"comparator": q.comparator}
        if m.valueCodeableConcept is not None:
            cc = m.valueCodeableConcept
            return {"value_text": self.scrub(_display(cc), sub) or _code(cc)}, {"value_code": _code(cc)}
        if m.valueBoolean is not None:
            return {"value_num": float(m.valueBoolean), "value_text": str(m.valueBoolean).lower()}, {}
        if m.valueInteger is not None:
            return {"value_num": float(m.valueInteger)}, {}
        if m.valueString is not None:
            return {"value_text": self.scrub(m.valueString, sub)}, {}
        if m.valueDateTime is not None:
            return {"value_text": self.shifted_iso(m.valueDateTime, sub)}, {}
        if m.valueTime is not None:
            return {"value_text": str(m.valueTime)}, {}
        if m.valueRange is not None:
            b = _bounds(m.valueRange.low, m.valueRange.high)
            return {"unit": b["unit"]}, {"value_low": b["low"], "value_high": b["high"]}
        other = next((t for t in _VALUE_TYPES if getattr(m, f"value{t}", None) is not None), None)
        return {}, {"value_type": other}

    def _condition(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        c = e.model
        code = _code(c.code)
        verification = _code(c.verificationStatus)
        refuted = verification is not None and verification.endswith("refuted")
        onset = c.onsetDateTime or _start(c.onsetPeriod) or c.recordedDate
        abated = c.abatementDateTime or _start(c.abatementPeriod)
        meta = {"display": self.scrub(_display(c.code), sub), "verification": verification,
                "category": _codes(c.category), "severity": _code(c.severity), "body_site": _codes(c.bodySite),
                "abatement": self.shifted_iso(abated, sub)}
        clinical = c.clinicalStatus.coding[0].code if c.clinicalStatus and c.clinicalStatus.coding else None
        labels = {f"condition:{code}": 0 if refuted else 1} if code else {}
        yield self.item(e, sub, Modality.TABLE, {"code": code, "value_text": clinical}, meta, onset,
                        labels=labels)

    def _report(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        r = e.model
        forms, skipped = self._attachment_texts(e)
        text = self.scrub("\n\n".join(t for t in [r.conclusion, *forms] if t and t.strip()), sub)
        if not text:
            return
        when = r.effectiveDateTime or _start(r.effectivePeriod) or r.issued
        study = next((k for k in map(self._study_key, r.imagingStudy or []) if k), None)
        meta = {"display": self.scrub(_display(r.code), sub), "status": r.status, "category": _codes(r.category),
                "conclusion_codes": _codes(r.conclusionCode), "attachments_skipped": skipped}
        yield self.item(e, sub, Modality.TEXT, {"code": _code(r.code), "text": text}, meta, when,
                        blob=text.encode("utf-8"), blob_ext=".txt",
                        study_id=self.ctx.study(sub.pid, study) if study else None)

    def _attachment_texts(self, e: _Entry) -> tuple[list[str], list[str]]:
        """Decoded text of the report's text attachments, and the content types left out."""
        texts, skipped = [], []
        for k, att in enumerate(e.model.presentedForm or []):
            text, skip = self._attachment(e, att, f"presentedForm[{k}]")
            texts += text
            skipped += skip
        return texts, skipped

    def _document(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        """A DocumentReference (where clinical notes live): one TEXT item from its text attachments."""
        d = e.model
        texts, skipped = [], []
        for k, content in enumerate(d.content or []):
            text, skip = self._attachment(e, content.attachment, f"content[{k}]")
            texts += text
            skipped += skip
        text = self.scrub("\n\n".join(t for t in [d.description, *texts] if t and t.strip()), sub)
        if not text:
            return
        when = d.date or (_start(d.context.period) if d.context and d.context.period else None)
        meta = {"display": self.scrub(_display(d.type), sub), "status": d.status, "category": _codes(d.category),
                "attachments_skipped": skipped}
        yield self.item(e, sub, Modality.TEXT, {"code": _code(d.type), "text": text}, meta, when,
                        blob=text.encode("utf-8"), blob_ext=".txt")

    def _attachment(self, e: _Entry, att: Any, where: str) -> tuple[list[str], list[str]]:
        """The decoded text of one attachment (text/plain, text/html), or the content type left out."""
        if att is None:
            return [], []
        ctype = (att.contentType or "").lower()
        charset = re.search(r"charset=([\w-]+)", ctype)
        if att.data is None or not ctype.startswith(("text/plain", "text/html")):
            return [], [ctype or "unknown"]
        encoding = charset.group(1) if charset else "utf-8"
        try:
            body = att.data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise IngestError(f"{e.label()}: {where} is not {encoding} text; "
                              "expected text in its declared charset") from None
        return [_html_to_text(body) if ctype.startswith("text/html") else body], []

    def _medication(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        """MedicationRequest / Statement / Administration / Dispense: the medication's code, the status,
        when it was ordered, taken or given; dosage text scrubbed."""
        m = e.model
        concept = getattr(m, "medicationCodeableConcept", None)
        ref = getattr(m, "medicationReference", None)
        code = _code(concept)
        display = _display(concept) or (ref.display if ref is not None else None)
        when = (getattr(m, "authoredOn", None) or getattr(m, "effectiveDateTime", None)
                or _start(getattr(m, "effectivePeriod", None)) or getattr(m, "whenHandedOver", None)
                or getattr(m, "dateAsserted", None))
        dosage = getattr(m, "dosageInstruction", None) or getattr(m, "dosage", None) or []
        if not isinstance(dosage, list):
            dosage = [dosage]
        meta = {"display": self.scrub(display, sub), "intent": getattr(m, "intent", None),
                "dosage": [self.scrub(d.text, sub) for d in dosage if getattr(d, "text", None)],
                "reason": _codes(getattr(m, "reasonCode", None))}
        yield self.item(e, sub, Modality.TABLE, {"code": code or (f"medication:{display}" if display else None),
                                                 "value_text": m.status}, meta, when)

    def _procedure(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        p = e.model
        when = p.performedDateTime or _start(p.performedPeriod)
        meta = {"display": self.scrub(_display(p.code), sub), "body_site": _codes(p.bodySite),
                "reason": _codes(p.reasonCode), "outcome": _code(p.outcome), "category": _code(p.category)}
        yield self.item(e, sub, Modality.TABLE, {"code": _code(p.code), "value_text": p.status}, meta, when)

    def _immunization(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        i = e.model
        meta = {"display": self.scrub(_display(i.vaccineCode), sub), "primary_source": i.primarySource,
                "site": _code(i.site), "route": _code(i.route)}
        yield self.item(e, sub, Modality.TABLE, {"code": _code(i.vaccineCode), "value_text": i.status}, meta,
                        i.occurrenceDateTime or i.recorded)

    def _generic(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        """Other resources about a patient: their code (or type, or category), status and time."""
        m = e.model
        concept = next((c for c in (getattr(m, f, None) for f in ("code", "type", "category", "relationship"))
                        if c is not None), None)
        if isinstance(concept, list):
            concept = concept[0] if concept else None
        when = next((v for v in (getattr(m, f, None) for f in (
            "recordedDate", "onsetDateTime", "authoredOn", "occurrenceDateTime", "effectiveDateTime", "date",
            "receivedTime", "created", "statusDate")) if v is not None), None)
        if when is None:
            period = getattr(m, "period", None) or getattr(m, "occurrencePeriod", None)
            when = _start(period) if period is not None else None
        status = getattr(m, "status", None) or getattr(m, "lifecycleStatus", None)
        status = _code(status) if status is not None and not isinstance(status, str) else status
        meta = {"display": self.scrub(_display(concept), sub), "category": _codes(getattr(m, "category", None)
                                                                                   if isinstance(getattr(m, "category", None), list) else None)}
        yield self.item(e, sub, Modality.TABLE, {"code": _code(concept) or e.rtype.lower(), "value_text": status},
                        meta, when)

    def _study_key(self, ref: Any) -> str | None:
        """The raw study key of an ImagingStudy of this file that ``ref`` points at."""
        target = self.studies.get(ref.reference or "") if ref is not None else None
        return _imaging_key(target) if target else None

    def _imaging(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        s = e.model
        start, _ = self.when(s.started, sub)
        series = [self._series(x, sub) for x in s.series or []]
        modalities = sorted({x["modality"] for x in series} | {m.code for m in s.modality or [] if m.code})
        sites = [x.bodySite.display or x.bodySite.code for x in s.series or [] if x.bodySite]
        description = self.scrub(s.description, sub)
        meta = {"series": series, "n_series": s.numberOfSeries if s.numberOfSeries is not None else len(series),
                "n_instances": s.numberOfInstances, "procedure": _codes(s.procedureCode),
                "description": description, "status": s.status}
        yield self.item(e, sub, Modality.TABLE,
                        {"code": "imaging-study", "dicom_modality": ",".join(modalities) or None,
                         "body_part": sites[0] if sites else None},
                        meta, s.started, study_id=self.ctx.study(sub.pid, _imaging_key(e)),
                        study_attrs=_clean({"date": start.date() if start else None, "description": description}))

    def _series(self, x: Any, sub: _Subject) -> dict[str, Any]:
        """One ImagingStudy series as a meta record (its UID remapped like a DICOM UID)."""
        n_instances = x.numberOfInstances if x.numberOfInstances is not None else len(x.instance or [])
        return _clean({"uid": self.ctx.deid.uid(x.uid), "number": x.number, "modality": x.modality.code,
                       "body_site": _code(x.bodySite), "laterality": _code(x.laterality),
                       "n_instances": n_instances, "description": self.scrub(x.description, sub)})

    def _encounter(self, e: _Entry, sub: _Subject) -> Iterator[Item]:
        n = e.model
        start, end = _start(n.period), (n.period.end if n.period else None)
        t0, t1 = _instant(start)[0], _instant(end)[0]
        meta = {"display": n.class_fhir.display, "type": _codes(n.type), "reason": _codes(n.reasonCode),
                "period_end": self.shifted_iso(end, sub),
                "duration_hours": round((t1 - t0).total_seconds() / 3600, 3) if t0 and t1 else None,
                "discharge": _code(n.hospitalization.dischargeDisposition) if n.hospitalization else None}
        yield self.item(e, sub, Modality.TABLE, {"code": _code(n.class_fhir), "value_text": n.status}, meta, start)


_VALUE_TYPES = ("Quantity", "CodeableConcept", "String", "Boolean", "Integer", "Range", "Ratio",
                "SampledData", "Time", "DateTime", "Period")


def _entered_in_error(model: Any) -> bool:
    """True for records marked as mistakes (status or verification status ``entered-in-error``)."""
    status = getattr(model, "status", None)
    verification = _code(getattr(model, "verificationStatus", None)) or ""
    return status == "entered-in-error" or verification.endswith("entered-in-error")


def _imaging_key(e: _Entry) -> str:
    """An ImagingStudy's raw study key: its DICOM Study Instance UID (without ``urn:oid:``), so that it
    meets the same study ingested from DICOM; else its first identifier, else its logical id, else
    the hash of its JSON."""
    ids = [i for i in e.model.identifier or [] if i.value]
    dicom = next((i for i in ids if i.system == "urn:dicom:uid"), ids[0] if ids else None)
    if dicom:
        return dicom.value.removeprefix("urn:oid:")
    return e.model.id or sha256_bytes(canonical_json(e.raw).encode())
