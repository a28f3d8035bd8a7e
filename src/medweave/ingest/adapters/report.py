"""Reports and notes: plain text files, and Open-i (Indiana University chest X-ray) XML reports."""

from __future__ import annotations

import io
import re
import tarfile
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from defusedxml import DefusedXmlException, EntitiesForbidden
from defusedxml import ElementTree as DefusedET

from ...store.catalog import Item, Modality
from ..base import Adapter, IngestContext, IngestError, NotADataFile, Unit


PATIENT_FROM = ("stem", "prefix", "parent")


def patient_key(path: Path, how: str, stem: str | None = None) -> str:
    """The raw patient identifier a file name stands for: its ``stem``, the ``prefix`` of the stem
    before the first ``_``, ``-`` or ``.``, or the ``parent`` folder name (option ``patient_from``)."""
    stem = path.stem if stem is None else stem
    if how == "parent":
        return path.parent.name
    if how == "stem":
        return stem
    if how == "prefix":
        return re.split(r"[_\-.]", stem, maxsplit=1)[0]
    raise IngestError(f"option patient_from={how!r}: expected one of {', '.join(PATIENT_FROM)}")


PATIENT_RULES = {
    "prefix": "by file name: the part before the first _, - or . (option patient_from=prefix)",
    "stem": "by file name: one patient per file stem (option patient_from=stem)",
    "parent": "by folder: one patient per folder holding the files (option patient_from=parent)",
}


def patient_rule_text(options: dict, default: str = "prefix") -> str:
    """The ingest report's words for how ``patient_from`` assigns files to patients."""
    how = options.get("patient_from", default)
    rule = PATIENT_RULES.get(how, f"option patient_from={how!r}")
    return f"{rule}; other choices: --option patient_from={'|'.join(PATIENT_FROM)}"


# --- telling a clinical report from any other text file --------------------------------------------

_DOC_NAME_RE = re.compile(
    r"^(?:readme|license|licence|copying|notice|authors|contributors|changes|changelog|history|news|"
    r"todo|install|requirements|manifest|version|citation|records|annotators|sources|cmakelists|"
    r"robots|sha\d*sums|md5sums|checksums)\b", re.IGNORECASE)
_SECTION_RE = re.compile(
    r"(?im)^\s*(?:findings|impression|history|clinical history|indication|indications|comparison|technique|"
    r"assessment|plan|diagnosis|diagnoses|chief complaint|hpi|history of present illness|medications|"
    r"allergies|examination|exam|physical exam|conclusion|reason for (?:exam|study|referral)|procedure|"
    r"discharge diagnosis|hospital course|past medical history|social history|family history|"
    r"review of systems|vital signs|labs|report|note|summary)\s*[:\-]")
_CLINICAL_WORDS = frozenset("""
findings impression diagnosis diagnosed indication complaint assessment medications medication allergies
allergy examination symptoms symptom pain fever cough dyspnea dyspnoea lungs lung heart cardiac chest
abdomen abdominal pulmonary pleural effusion opacity opacities pneumonia pneumothorax fracture lesion
lesions nodule nodules tumor tumour carcinoma cancer metastasis metastatic unremarkable acute chronic
bilateral mg mcg ml dose tablet tablets prescribed admitted admission discharge discharged clinic
hospital physician nurse vital vitals blood pressure pulse glucose patient patients history exam
radiograph radiology ct mri ultrasound x-ray xray cardiomegaly atelectasis edema oedema consolidation
infiltrate infiltrates diabetes hypertension infection surgery postoperative biopsy pathology benign
malignant mediastinum mediastinal thorax thoracic spine liver kidney renal hepatic bowel stenosis
aneurysm hemorrhage haemorrhage infarct ischemia ischemic stroke seizure ecg ekg tachycardia
bradycardia arrhythmia sinus rhythm murmur nausea vomiting headache therapy treatment treated
addendum amended
""".split())
_WORD_RE = re.compile(r"[a-z][a-z\-]+")
_CODE_LINE_RE = re.compile(r"^\s*(?:def |class |import |from \S+ import|#include|\{|\}|<[a-z!/]|\w+\s*=\s*\S|https?://|\$ )")


def not_a_report_reason(text: str, name: str) -> str | None:
    """Why a text file is not a clinical report (None when it reads like one): documentation or
    index files by name, code or markup, or text without report sections or medical words."""
    if _DOC_NAME_RE.match(name):
        return "documentation or an index file (by its name), not a clinical report"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines and sum(bool(_CODE_LINE_RE.match(ln)) for ln in lines) > 0.3 * len(lines):
        return "code, markup or settings, not a clinical report"
    if _SECTION_RE.search(text):
        return None
    words = _WORD_RE.findall(text.lower())
    hits = {w for w in words if w in _CLINICAL_WORDS}
    if len(hits) >= 3 or (hits and len(words) <= 40):
        return None
    return ("no report sections and too few medical words to be a clinical report "
            "(ingest it with --format text if it is one)")


def decode_text(raw: bytes, ctx: IngestContext) -> str:
    """Text as UTF-8 (with or without a byte-order mark) or UTF-16 with a BOM; other bytes are read as
    Windows-1252 (Latin-1 where that fails), with a warning naming the first byte that is not UTF-8."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise IngestError(f"starts with a UTF-16 byte-order mark but does not decode (byte {exc.start})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        first = exc.start
    for encoding, label in (("cp1252", "Windows-1252"), ("latin-1", "Latin-1")):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        ctx.warn(f"not UTF-8 (byte {first}): read as {label}; accented letters may be wrong if it is "
                 "another encoding")
        return text
    raise IngestError("not decodable as text")  # latin-1 decodes every byte: not reached


class TextReportAdapter(Adapter):
    """A plain-text report or note (UTF-8; other encodings read as Windows-1252 with a warning). A
    ``.txt`` file must read like a clinical report (report sections or medical words; not a README or
    an index) unless ``--format text`` is given. The patient is taken from a ``<patient>_...`` file
    name prefix or the parent folder name (option ``patient_from``: ``stem`` | ``prefix`` | ``parent``)."""

    name = "text"
    version = "2"
    option_names = ("patient_from",)
    extensions = (".txt",)
    description = "plain-text clinical reports and notes (.txt)"

    def patient_rule(self, options: dict) -> str:
        return patient_rule_text(options)

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        raw = unit.path.read_bytes()
        if b"\x00" in raw[:4096] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise NotADataFile("binary content named .txt, not a text report")
        text = decode_text(raw, ctx)
        if not text.strip():
            raise NotADataFile("an empty text file")
        if not ctx.forced:
            reason = not_a_report_reason(text, unit.path.name)
            if reason:
                raise NotADataFile(reason)
        stem = unit.path.stem
        raw_pid = patient_key(unit.path, ctx.options.get("patient_from", "prefix"))
        pid = ctx.patient(raw_pid)
        clean = ctx.scrub(text, known=[raw_pid])
        yield Item(
            patient_id=pid,
            study_id=ctx.study(pid, stem),
            modality=Modality.TEXT,
            blob=clean.encode("utf-8"),
            blob_ext=".txt",
            fields={"format": "text", "text": clean},
        )


# --- Open-i (Indiana University chest X-ray) XML reports ----------------------------------------

OPENI_SECTIONS = ("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION")
_OPENI_LABEL_RE = re.compile(rb'<AbstractText[^>]*Label="(?:FINDINGS|IMPRESSION|INDICATION)"')
_TAR_STATE = "openi.tars"  # ctx.state key: {tar path: (open TarFile, {member name: TarInfo})}


def _is_tar_gz(path: Path) -> bool:
    return path.name.lower().endswith((".tgz", ".tar.gz", ".tar"))


# Expansion limits of an archive of reports (a tar or zip "bomb" expands a thousandfold). The Indiana
# collection's NLMCXR_reports.tgz (1.1 MB) holds 3,955 reports of at most 9 KB: 20.8 MB, 18.7 times its size.
OPENI_MAX_REPORT_BYTES = 16 * 2**20  # one report (a loose .xml file or an archive member): 1,800x the largest
OPENI_MAX_EXPANSION_RATIO = 100  # the members so far, against the archive's size on disk ...
OPENI_RATIO_FLOOR_BYTES = 2**20  # ... once they pass 1 MiB (a tiny archive of one report may be 30x)
OPENI_MAX_ARCHIVE_BYTES = 2**32  # all members of one archive: 4 GiB


@dataclass
class _TarIndex:
    tar: tarfile.TarFile
    members: dict[str, tarfile.TarInfo]  # the XML members, by name, in archive order
    refused: dict[str, str]  # member name -> why it is not read (over a limit)


def _tar_index(path: Path, ctx: IngestContext) -> _TarIndex:
    """The tar archive at ``path``, opened once per run, with its XML members indexed by name.

    Members are read in archive order, so the compressed stream is decoded once from start to end. The
    sizes in the member headers are checked against the limits above before anything is read: a member
    over ``OPENI_MAX_REPORT_BYTES`` is refused (and skipped over); when the members reach
    ``OPENI_MAX_EXPANSION_RATIO`` times the archive's size (past ``OPENI_RATIO_FLOOR_BYTES``) or
    ``OPENI_MAX_ARCHIVE_BYTES``, that member is refused and the archive is not decoded further."""
    cache = ctx.state.setdefault(_TAR_STATE, {})
    key = str(path.resolve())
    if key not in cache:
        try:
            size = path.stat().st_size
            tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise IngestError(f"not a readable tar archive of Open-i XML reports ({exc})") from exc
        index = _TarIndex(tar, {}, {})
        total = 0
        try:
            for m in tar:
                if not (m.isfile() and m.name.lower().endswith(".xml")):
                    continue
                total += m.size
                where = f"archive {path.name}, member {m.name}"
                if total > OPENI_MAX_ARCHIVE_BYTES or total > max(OPENI_RATIO_FLOOR_BYTES, OPENI_MAX_EXPANSION_RATIO * size):
                    limit = (f"{OPENI_MAX_ARCHIVE_BYTES:,} bytes (OPENI_MAX_ARCHIVE_BYTES)"
                             if total > OPENI_MAX_ARCHIVE_BYTES else
                             f"{OPENI_MAX_EXPANSION_RATIO} times the archive's {size:,} bytes "
                             "(OPENI_MAX_EXPANSION_RATIO)")
                    index.refused[m.name] = (f"{where}: the archive expands to {total:,} bytes with this member, "
                                             f"over {limit}; a tar or zip bomb is not expanded (this member and "
                                             "any after it are not read)")
                    break
                if m.size > OPENI_MAX_REPORT_BYTES:
                    index.refused[m.name] = (f"{where}: expands to {m.size:,} bytes, over the limit of "
                                             f"{OPENI_MAX_REPORT_BYTES:,} bytes for one report "
                                             "(OPENI_MAX_REPORT_BYTES)")
                    continue
                index.members[m.name] = m
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            tar.close()
            raise IngestError(f"not a readable tar archive of Open-i XML reports ({exc})") from exc
        cache[key] = index
    return cache[key]


@dataclass
class OpenIReport:
    """The parts of one Open-i report that we keep."""

    report_id: str
    sections: dict[str, str]
    mesh_major: list[str]
    mesh_automatic: list[str]
    image_ids: list[str]
    caption: str | None

    @classmethod
    def parse(cls, data: "bytes | BinaryIO") -> "OpenIReport":
        """Parse an Open-i XML document (bytes or a binary file) as a stream; raise IngestError when
        it is not one. Each element is dropped once read, so memory holds the kept texts and one
        branch of the tree, whatever the document's size or number of elements."""
        source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        sections: dict[str, str] = {}
        ids: dict[str, str] = {}
        captions: list[str] = []
        major: list[str] = []
        automatic: list[str] = []
        images: list[str] = []
        stack: list[ET.Element] = []
        try:
            # entity declarations are refused, nothing is expanded
            for event, el in DefusedET.iterparse(source, events=("start", "end")):
                if event == "start":
                    stack.append(el)
                    continue
                stack.pop()
                tag = el.tag
                if tag == "AbstractText":
                    label = el.get("Label")
                    if label:
                        sections[label.upper()] = (el.text or "").strip()
                elif tag in ("uId", "pmcId"):
                    if tag not in ids and el.get("id") is not None:
                        ids[tag] = el.get("id")
                elif tag in ("caption", "major", "automatic"):
                    text = (el.text or "").strip()
                    if text:
                        {"caption": captions, "major": major, "automatic": automatic}[tag].append(text)
                elif tag == "parentImage":
                    if el.get("id"):
                        images.append(el.get("id"))
                el.clear()
                if stack:
                    stack[-1].remove(el)  # the parent holds at most the child being read
        except EntitiesForbidden as exc:
            raise IngestError(f"XML entity declarations are refused (entity {exc.name!r}): entity expansion "
                              "('billion laughs') and external entities can exhaust memory or read local "
                              "files; an Open-i report has none") from None
        except DefusedXmlException as exc:  # external references, DTD tricks
            raise IngestError(f"refused XML construct ({exc}); an Open-i report has none") from None
        except ET.ParseError as exc:
            raise IngestError(f"not well-formed XML ({exc}); expected an Open-i report") from exc
        except (LookupError, ValueError) as exc:  # an encoding the declaration names that Python lacks
            raise IngestError(f"the XML declaration names an encoding that cannot be read ({exc}); "
                              "expected an Open-i report in UTF-8") from exc
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:  # the archive's stream breaks off
            raise IngestError(f"cannot be read from the archive ({type(exc).__name__}: {exc})") from exc
        if not any(s in sections for s in OPENI_SECTIONS):
            raise IngestError(f"no <AbstractText Label=...> with any of {', '.join(OPENI_SECTIONS)}; "
                              "expected an Open-i report")
        report_id = ids.get("uId") or ids.get("pmcId")
        if not report_id:
            raise IngestError("no <uId id=...> or <pmcId id=...>: expected the report id")
        return cls(
            report_id=report_id,
            sections={k: v for k, v in sections.items() if v},
            mesh_major=major,
            mesh_automatic=automatic,
            image_ids=images,
            caption=captions[0] if captions else None,
        )

    def text(self) -> str:
        """The report as readable text, the four standard sections first."""
        order = [s for s in OPENI_SECTIONS if s in self.sections]
        order += sorted(s for s in self.sections if s not in OPENI_SECTIONS)
        return "\n".join(f"{s}: {self.sections[s]}" for s in order)

    def is_normal(self) -> bool:
        return any(term.lower() == "normal" for term in self.mesh_major)


class OpenIAdapter(Adapter):
    """Open-i XML radiology reports (the Indiana University chest X-ray collection): loose ``.xml``
    files, or a ``.tgz`` of them (one unit per XML member). One TEXT item per report; the patient
    is the report id (``uId``, e.g. ``CXR1``)."""

    name = "openi"
    version = "1"
    option_names = ()
    extensions = (".xml",)
    description = "Open-i XML radiology reports (.xml, or a .tgz of them)"

    def sniff(self, path: Path, head: bytes) -> float:
        name = path.name.lower()
        if name.endswith(".xml"):
            if b"<eCitation" in head:
                return 0.9
            return 0.8 if b"<MedlineCitation" in head and _OPENI_LABEL_RE.search(head) else 0.0
        if _is_tar_gz(path):
            return 0.6 if b"<eCitation" in _gunzip_head(head) else 0.0
        return 0.0

    def units(self, path: Path, ctx: IngestContext) -> Iterator[Unit]:
        if not _is_tar_gz(path):
            yield Unit(path)
            return
        try:
            index = _tar_index(path, ctx)
        except IngestError:
            yield Unit(path, key="*")  # read() reports the error for the archive as a whole
            return
        for name in index.members:
            yield Unit(path, key=name)
        for name in index.refused:  # read() reports why each is not read
            yield Unit(path, key=name)

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        try:
            report = OpenIReport.parse(self._member_bytes(unit, ctx))
        except IngestError as exc:
            raise IngestError(f"member {unit.key}: {exc}" if unit.key and not str(exc).startswith(("archive ", "member "))
                              else str(exc)) from exc
        pid = ctx.patient(report.report_id)
        text = ctx.scrub(report.text(), known=[report.report_id])
        normal = int(report.is_normal())
        yield Item(
            patient_id=pid,
            study_id=ctx.study(pid, report.report_id),
            modality=Modality.TEXT,
            blob=text.encode("utf-8"),
            blob_ext=".txt",
            fields={"format": "openi", "text": text, "label": "normal" if normal else "abnormal"},
            labels={"normal": normal, "mesh": report.mesh_major},
            meta={
                "sections": {k: ctx.scrub(v, known=[report.report_id]) for k, v in report.sections.items()},
                "mesh": report.mesh_major,
                "mesh_automatic": report.mesh_automatic,
                "image_ids": [_image_suffix(i, report.report_id, ctx) for i in report.image_ids],
            },
            patient_attrs={"namespace": ctx.namespace},
            study_attrs={"description": report.caption},
        )

    def _member_bytes(self, unit: Unit, ctx: IngestContext) -> BinaryIO:
        """The XML of a unit as a binary stream: the file itself, or its member of the tar archive,
        after the size limits (``OPENI_MAX_REPORT_BYTES`` and the archive's expansion limits)."""
        if not unit.key:
            size = unit.path.stat().st_size
            if size > OPENI_MAX_REPORT_BYTES:
                raise IngestError(f"{unit.path.name}: {size:,} bytes, over the limit of "
                                  f"{OPENI_MAX_REPORT_BYTES:,} bytes for one report (OPENI_MAX_REPORT_BYTES)")
            return io.BytesIO(unit.path.read_bytes())
        index = _tar_index(unit.path, ctx)
        if unit.key in index.refused:
            raise IngestError(index.refused[unit.key])
        if unit.key not in index.members:
            raise IngestError(f"member {unit.key}: not an XML file of the archive")
        fh = index.tar.extractfile(index.members[unit.key])
        if fh is None:
            raise IngestError(f"member {unit.key}: cannot be read from the archive")
        return fh

    def finish(self, ctx: IngestContext) -> Iterator[tuple[Unit, list[Item]]]:
        """Close the archives opened during the run; adds no items."""
        for index in ctx.state.pop(_TAR_STATE, {}).values():
            index.tar.close()
        return iter(())


def _image_suffix(image_id: str, report_id: str, ctx: IngestContext) -> str:
    """An Open-i image id (``CXR1_1_IM-0001-3001``) without the raw report id in front, unless PHI
    is kept: the report id is the patient identifier, which is stored only as a pseudonym."""
    if ctx.deid.keep_phi or not image_id.startswith(report_id + "_"):
        return image_id
    return image_id[len(report_id) + 1:]


def _gunzip_head(head: bytes) -> bytes:
    """As much of a gzip stream's start as ``head`` decompresses to (empty when not gzip)."""
    if not head.startswith(b"\x1f\x8b"):
        return head
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
    except zlib.error:
        return b""
