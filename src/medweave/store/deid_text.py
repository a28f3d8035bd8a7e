"""Free-text de-identification by rules: find the spans of protected health information, then tag them.

The rules cover the HIPAA Safe Harbor categories that occur in clinical notes (45 CFR 164.514(b)(2)):
names (after titles and labels, before credentials, after a relation such as "his daughter", a
census first name followed by a surname, "LAST, FIRST", signatures by initial, and every later
mention of a surname found once), street addresses, cities, ZIP codes, hospital names, dates
(all elements but the year), ages over 89, phone and fax numbers, e-mail addresses, URLs, IP
addresses, SSNs, and record/account/licence/plan/serial numbers after their labels.

``find_phi`` returns the spans (so that a scorer can align them with a labelled corpus);
``scrub_text`` replaces each by its tag (``[NAME]``, ``[DATE]``, ``[ID]``...). The rules look at the
original text only, so their order does not change what is found; overlapping spans merge.
``benchmarks/deid.py`` scores them on ``tests/data/deid/notes.txt``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

_DATA = Path(__file__).with_name("data")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    tag: str  # NAME, DATE, AGE, PHONE, EMAIL, URL, ID, ADDRESS, LOCATION


# Priority when spans overlap: the merged span takes the tag of the first in this list.
_TAG_ORDER = ["EMAIL", "URL", "ID", "DATE", "PHONE", "AGE", "ADDRESS", "NAME", "LOCATION"]


@functools.lru_cache(maxsize=1)
def first_names() -> tuple[frozenset[str], frozenset[str]]:
    """(names, names that are also common words), from the census list shipped in ``data/``."""
    names, common = set(), set()
    for line in (_DATA / "first_names.txt").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, mark = line.partition(" ")
        names.add(name)
        if mark.strip() == "*":
            common.add(name)
    return frozenset(names), frozenset(common)


# --- words -----------------------------------------------------------------------------------------

_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_CAP_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_WEEKDAYS = r"(?:Mon|Tues?|Wed(?:nes)?|Thu(?:rs)?|Fri|Sat(?:ur)?|Sun)(?:day)?"
_TITLES = r"(?:Dr|Mr|Mrs|Ms|Mx|Miss|Prof|Professor|Father|Fr|Sister|Rev|Reverend|Nurse)"
_STRONG_CREDENTIALS = r"(?:M\.D\.|MD|Ph\.?D\.?|RN|NP|PA-C|LCSW|DDS|DMD|PharmD|APRN|FNP|MBBS)"
_CREDENTIALS = (r"(?:M\.?D\.?|D\.?O\.?|R\.?N\.?|N\.?P\.?|PA-C|P\.?A\.?|Ph\.?D\.?|LCSW|MSW|CNM|CRNA|DDS|DMD|"
                r"PharmD|RPh|LPN|APRN|FNP|DNP|MBBS|FRCP|FACC|FACS|RRT|PT|OT|MPH)")
# A name word: capitalised, letters with inner apostrophes or hyphens (O'Brien, Soo-Jin, McNeil).
_NW = r"[A-Z][a-z]*(?:['\u2019][A-Z]?[a-z]+)?[a-z]+(?:-[A-Z][a-z]+)?"
_INIT = r"[A-Z]\."
_PARTICLE = r"(?:van der|van|von|de la|de|del|da|di|dos|du|le|la|bin|ibn|al)"
# One to three name words, middle initials allowed: "John Q. Smithfield", "Ana Sofia Herrera".
_NAME_SEQ = rf"{_NW}(?:[ \t](?:{_INIT}[ \t]|{_PARTICLE}[ \t])?{_NW}){{0,2}}"

_RELATIONS = (
    r"(?:wife|husband|spouse|partner|son|sons|daughter|daughters|mother|father|mom|dad|brother|brothers|"
    r"sister|sisters|niece|nephew|aunt|uncle|cousin|grandson|granddaughter|grandmother|grandfather|"
    r"grandchild|stepson|stepdaughter|fianc[eé]e?|friend|neighbou?r|caregiver|guardian|proxy|"
    r"interpreter|translator|paramedic|chaplain|pharmacist|resident|intern|fellow|nurse|surgeon|"
    r"attending|physician|doctor|therapist|roommate|boyfriend|girlfriend)"
)
# Words after which a capitalised word is a clinical term, not a surname.
_CLINICAL_NEXT = {
    "Disease", "Syndrome", "Sign", "Signs", "Test", "Score", "Scale", "Criteria", "Classification",
    "Grade", "Type", "Catheter", "Tube", "Drain", "Procedure", "Operation", "Repair", "Maneuver",
    "Manoeuvre", "Reflex", "Phenomenon", "Lymphoma", "Sarcoma", "Tumor", "Tumour", "Palsy", "Ulcer",
    "Fracture", "Hernia", "Node", "Nodes", "Line", "Lines", "Spaces", "Cell", "Cells", "Body",
    "Bodies", "Stain", "Index", "Hospital", "Clinic", "Center", "Centre", "Institute", "Medical",
    "University", "County", "Street", "Avenue", "Road", "Lane", "Drive", "Boulevard", "Health",
    "Monitor", "Mask", "Block", "Bundle", "Triangle", "Ligament", "Duct", "Gland", "Nerve", "Artery",
    "Vein", "Loop", "Canal", "Space", "Fossa", "Area", "Method", "Technique", "Position", "View",
    "Registry", "Trial", "Study", "Protocol", "Scan", "Examination", "Exam", "Department", "Unit",
}
_NOT_SURNAME = _CLINICAL_NEXT | {
    "The", "This", "That", "These", "There", "He", "She", "His", "Her", "They", "We", "It", "Patient",
    "Pt", "And", "Or", "Of", "In", "On", "At", "To", "For", "With", "No", "Not", "Yes", "Left", "Right",
    "History", "Plan", "Assessment", "Impression", "Findings", "Diagnosis", "Note", "Report", "Date",
    "Time", "Today", "Daily", "Continue", "Follow", "Return", "Call", "Seen", "Discussed", "Per",
    "Emergency", "Family", "Medicine", "Care", "Primary", "General", "Internal", "Outpatient",
    "Inpatient", "Service", "Services", "Team", "Office", "Pharmacy", "Social", "Work", "Meals",
}

_STATES = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY "
    "NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR"
).split()
_STATE_RE = "(?:" + "|".join(_STATES) + ")"

# --- rules -----------------------------------------------------------------------------------------

_DATE_PATTERNS = [
    rf"\b\d{{1,2}}[-/ ]{_MONTHS}[-/ ,]+\d{{2,4}}\b",  # 29-Sep-90, 3 March 2012
    rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b",  # March 3, 2012
    r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{4}/\d{1,2}/\d{1,2}\b|\b\d{4}\.\d{1,2}\.\d{1,2}\b",  # 2012-03-04
    # 03/04/2012, 01.10.1990 (one separator throughout: "a ratio of 16.2/24.7" is no date)
    r"\b\d{1,2}-\d{1,2}-\d{2,4}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b|\b\d{1,2}\.\d{1,2}\.\d{2,4}\b",
    r"\b(?:19|20)\d{6}\b",  # 20120304
]
DATE_RE = re.compile("|".join(_DATE_PATTERNS), re.IGNORECASE)
_DATE_EXTRA_RE = re.compile(
    rf"(?P<d>\b{_CAP_MONTHS}\.?\s+(?:\d{{1,2}}(?:st|nd|rd|th)?\b(?!\s*(?:mg|mcg|g|ml|mL|units?|%|cm|mm)\b)"
    rf"|(?:of\s+)?(?:19|20)\d{{2}}\b)"  # March 5, Dec 15, January 2024
    rf"|\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_CAP_MONTHS}\b)"  # 5th of March
    rf"|\b(?:{_WEEKDAYS}|on|dated|since|until|due|from),?\s(?P<md>\d{{1,2}}/\d{{1,2}})\b(?![/\d])"  # Thursday 6/15
)
EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_URL_RE = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"'()]+", re.IGNORECASE)
_IP_RE = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
PHONE_RE = re.compile(
    r"(?<![\w/])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{3}[\s.-])\d{3}[\s.-]?\d{3,4}\b"
)
_SSN_RE = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
# A label, up to two filler words, then a value holding a digit.
_ID_LABELS = (
    r"MRN|MR#|MR|medical record|record|chart|acc(?:ession)?|patient id|pt id|ssn|social security|"
    r"acc(?:oun)?t|billing|member(?: id)?|subscriber|policy|health plan(?: id)?|plan id|insurance(?: id)?|"
    r"beneficiary|medicaid|medicare|licen[cs]e|lic|dea|npi|upin|certificate|cert|registration|"
    r"serial|s/n|sn|lot|device(?: id)?|case|specimen|encounter|visit(?: id)?|fin|csn|id"
)
_RECORD_RE = re.compile(
    rf"\b(?i:{_ID_LABELS})(?:\s*(?i:no\.?|number|num|nr|#|id|is|:)){{0,3}}\s*[:#]?\s*"
    r"(?P<value>(?=[A-Za-z0-9-]*\d)[A-Za-z0-9][A-Za-z0-9-]{2,}[A-Za-z0-9])"
)
_LONG_NUMBER_RE = re.compile(r"\b\d{6,}\b")
_AGE_RE = re.compile(
    r"\b(?P<age>9\d|1[01]\d)(?=\s?(?:-|\s)?\s?(?:years?|yrs?|y/?o|y\.o\.|yo|-?year-old)\b|[MF]\b|\s?y/o)"
    r"|\b(?i:age[ds]?|aged)\s*:?\s*(?:of\s+)?(?P<age2>9\d|1[01]\d)\b"
)
_STREET_RE = re.compile(
    r"\b\d{1,6}[ \t]+(?:[NSEW]\.?[ \t]+|(?:North|South|East|West)[ \t]+)?(?:[A-Z][a-z]+[ \t]+){1,3}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|Boulevard|Blvd|Court|Ct|Way|Place|Pl|Terrace|"
    r"Ter|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Row|Alley)\b\.?"
    r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|Rm|Room|#)\.?[ \t]*#?\w+)?"
    r"|\b(?i:P\.?\s?O\.?[ \t]+Box)[ \t]+\d+"
)
_CITY_STATE_RE = re.compile(rf"\b(?P<city>[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+){{0,2}}),[ \t]+{_STATE_RE}\b(?=[ \t]+\d{{5}}|[ \t]*$|[ \t]*[,.;)])",
                            re.MULTILINE)
_ZIP_RE = re.compile(rf"(?<=\b{_STATE_RE}\s)\d{{5}}(?:-\d{{4}})?\b|(?<=\b{_STATE_RE}\s\s)\d{{5}}(?:-\d{{4}})?\b"
                     r"|(?<=(?i:zip)\s)\d{5}(?:-\d{4})?\b|(?<=(?i:zip):\s)\d{5}(?:-\d{4})?\b")
_CITY_CUE_RE = re.compile(
    r"\b(?:lives|living|resides|residing|moved|relocated|drove|came|travell?ed|home|born|visiting)"
    r"(?:[ \t]+(?:alone|up|down|over|here|back|in[ \t]+town))?[ \t]+(?:in|from|to|near)[ \t]+"
    r"(?P<city>[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+){0,2})"
)
_FACILITY_WORDS = (
    r"(?:Hospital|Medical Cent(?:er|re)|Health Cent(?:er|re)|Clinic|Nursing Home|Assisted Living|Infirmary|"
    r"Institute|Health System|Healthcare|Hospice|Rehabilitation Cent(?:er|re)|Rehab|Care Cent(?:er|re)|"
    r"Surgery Cent(?:er|re)|Cancer Cent(?:er|re)|Children's Hospital|Sanatorium)"
)
_HOSPITAL_RE = re.compile(
    rf"\b(?:(?:St|Saint|Mt|Mount)\.?[ \t]+)?(?:{_NW}|[A-Z]{{2,}}|[A-Z][a-z]+'s)(?:[ \t]+(?:of[ \t]+|and[ \t]+|&[ \t]+)?(?:{_NW}|[A-Z][a-z]+'s|[A-Z]{{2,}})){{0,4}}"
    rf"[ \t]+{_FACILITY_WORDS}\b"
)
_GENERIC_FACILITY_START = {"The", "This", "A", "An", "Our", "Your", "His", "Her", "Their", "Cardiology",
                           "Neurology", "Oncology", "Allergy", "Dermatology", "Family", "Pain", "Sleep",
                           "Urology", "Surgery", "Surgical", "Outpatient", "Primary", "Memory", "Eye",
                           "Diabetes", "Travel", "Wound", "Heart", "Clinic", "Hospital", "Nursing",
                           "From", "To", "At", "In", "Transferred", "Admitted", "Discharged", "Seen",
                           "Works", "Return", "Returned", "Presented", "Referred", "Called", "Sent"}

_TITLED_NAME_RE = re.compile(rf"\b{_TITLES}\.?[ \t]+(?P<name>(?:{_INIT}[ \t]*)?{_NAME_SEQ})")
# The label is matched in any case; the name after it must be capitalised words (a case-insensitive
# name part made "name: Input should be a valid string" lose its words).
_LABELS = (
    r"patient name|name|patient|pt|physician|doctor|attending|admitting|referring|ref|ordering|surgeon|"
    r"assistant|anesthesia|anesthesiologist|pathologist|radiologist|resident|fellow|caller|contact|"
    r"receiving|sending|provider|pcp|cc|to|from|attn|signed by|dictated by|transcribed by|reported by|"
    r"electronically signed by|electronically signed|read by|reviewed by|verified by|triage rn|rn|nurse"
)
_LABELLED_NAME_RE = re.compile(
    rf"\b(?i:{_LABELS})[ \t]*:[ \t]*(?:{_TITLES}\.?[ \t]+)?(?P<name>{_NW},[ \t]*{_NAME_SEQ}(?:[ \t]+{_INIT})?|(?:{_INIT}[ \t]*)?{_NAME_SEQ})"
)
_CUED_NAME_RE = re.compile(
    r"(?:\b(?i:signed out by|signed by|dictated(?: by)?|transcribed by|reviewed with|discussed with|seen with|"
    r"seen by|spoke with|spoken to|referred by|requested by|intake by|called to|given to|report given to|"
    r"examined by|evaluated by|accompanied by|cc|dear)|(?<!\S)(?:/s/|--|—))[ \t]+(?:" + _TITLES + r"\.?[ \t]+)?"
    rf"(?P<name>(?:{_INIT}[ \t]*)?{_NAME_SEQ})"
)
_CREDENTIAL_NAME_RE = re.compile(
    rf"(?P<name>(?:{_INIT}[ \t]*)?{_NAME_SEQ}|{_INIT}[ \t]*{_NW})(?:[ \t]*,[ \t]*{_CREDENTIALS}|[ \t]+{_STRONG_CREDENTIALS})(?![\w])"
)
_RELATION_NAME_RE = re.compile(
    rf"\b(?i:{_RELATIONS})[ \t]*,?[ \t]+(?:\(|named[ \t]+|is[ \t]+)?(?P<name>{_NAME_SEQ})"
    rf"(?:[ \t]+and[ \t]+(?P<name2>{_NAME_SEQ}))?"
)
_INITIAL_SURNAME_RE = re.compile(rf"(?<![\w.])(?P<name>{_INIT}[ \t]?{_NW})(?![\w])")
_LAST_FIRST_RE = re.compile(
    r"(?P<name>\b[A-Z][A-Za-z'-]+,[ \t]*[A-Z][A-Za-z'-]+(?:-[A-Z][A-Za-z'-]+)?(?:[ \t]+[A-Z]\.?(?![\w]))?)"
)
# Overlapping: every capitalised word is tried as a first name.
_CAP_WORD_RE = re.compile(
    rf"(?<![\w'-])(?=(?P<first>{_NW})(?:[ \t](?:{_INIT}|{_PARTICLE}))?[ \t](?P<last>{_NW})"
    rf"(?:[ \t](?P<third>{_NW}))?)"
)
_NAME_THEN_AGE_RE = re.compile(r"\s*[,(]\s*(?P<age>9\d|1[01]\d)\s*[,)]")


def _spans_of(regex: re.Pattern, text: str, tag: str, group: str | int = 0) -> list[Span]:
    out = []
    for m in regex.finditer(text):
        for g in ((group,) if not isinstance(group, tuple) else group):
            if m.group(g):
                out.append(Span(m.start(g), m.end(g), tag))
    return out


def _name_ok(words: str, caps: bool = False) -> bool:
    """A found name is kept unless every word is a clinical or function word (or, unless ``caps``,
    an all-capitals word: headings such as "FINDINGS")."""
    parts = [p for p in re.findall(r"[A-Za-z][\w'-]*", words) if len(p) > 1]
    return bool(parts) and not all(p in _NOT_SURNAME or p.capitalize() in _NOT_SURNAME
                                   or (not caps and p.upper() == p and len(p) > 3) for p in parts)


def _trim_name(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Drop trailing words that are clinical or function words ("Smith Disease" -> "Smith")."""
    words = list(re.finditer(r"\S+", text[start:end]))
    while words and words[-1].group(0).rstrip(".,") in _NOT_SURNAME:
        words.pop()
    if not words:
        return None
    return start + words[0].start(), start + words[-1].end()


def _names(text: str) -> list[Span]:
    spans: list[Span] = []

    def add(s: int, e: int, caps: bool = False):
        t = _trim_name(text, s, e)
        if t and _name_ok(text[t[0]:t[1]], caps):
            spans.append(Span(t[0], t[1], "NAME"))

    for regex in (_TITLED_NAME_RE, _LABELLED_NAME_RE, _CUED_NAME_RE, _CREDENTIAL_NAME_RE):
        for m in regex.finditer(text):
            add(m.start("name"), m.end("name"))
    for m in _TITLED_NAME_RE.finditer(text):  # the title goes with the name
        spans.append(Span(m.start(), m.start("name"), "NAME"))
    for m in _RELATION_NAME_RE.finditer(text):
        add(m.start("name"), m.end("name"))
        if m.group("name2"):
            add(m.start("name2"), m.end("name2"))
    names, common = first_names()
    for m in _CAP_WORD_RE.finditer(text):  # a census first name and a capitalised surname
        first, last = m.group("first"), m.group("last")
        if first in names and first not in common and last not in _NOT_SURNAME and first not in _NOT_SURNAME:
            end = m.end("third") if m.group("third") and m.group("third") not in _NOT_SURNAME else m.end("last")
            add(m.start("first"), end)
    for m in _LAST_FIRST_RE.finditer(text):  # "GARCIA, ELENA", "Weber, Karl" (not "Heart, lungs")
        last, _, first = m.group("name").partition(",")
        first_word = first.strip().split()[0].split("-")[0]
        line_start = text.rfind("\n", 0, m.start()) + 1
        at_line_start = not text[line_start:m.start()].strip()
        if (first_word.capitalize() in names and first_word.capitalize() not in common
                and last.strip().capitalize() not in _NOT_SURNAME) or (
                at_line_start and re.match(r"\s{2,}|\s+(?:DOB|MRN|MR|SSN|ID|Age)\b", text[m.end():])):
            add(m.start("name"), m.end("name"), caps=True)
    for m in _INITIAL_SURNAME_RE.finditer(text):  # "R. Kim": on a signature line, or next to a name
        line_start = text.rfind("\n", 0, m.start()) + 1
        line_end = text.find("\n", m.end())
        line_end = len(text) if line_end < 0 else line_end
        before, after = text[line_start:m.start()], text[m.end():line_end]
        before = re.sub(rf"{_INIT}\s?{_NW}|{_CREDENTIALS}|{_TITLES}\.?|[-/,\s]", "", before)
        signature = (not before
                     and re.fullmatch(rf"\s*(?:,?\s*{_CREDENTIALS}\.?|/\s*{_INIT}\s?{_NW}|\s*/\s*)*\s*[.,]?\s*", after))
        if signature:
            add(m.start("name"), m.end("name"))
    # Every later mention of a surname (or a first name that was found with one) is a name too.
    found = {w for s in spans if s.tag == "NAME" for w in re.findall(_NW, text[s.start:s.end])}
    found = {w for w in found if w not in _NOT_SURNAME and len(w) >= 3}
    if found:
        words = "|".join(sorted(map(re.escape, found), key=len, reverse=True))
        for m in re.finditer(rf"(?<![\w'-])(?:{words})(?![\w'-])", text):
            spans.append(Span(m.start(), m.end(), "NAME"))
    return spans


def _merge(spans: list[Span]) -> list[Span]:
    rank = {t: i for i, t in enumerate(_TAG_ORDER)}
    out: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if s.end <= s.start:
            continue
        if out and s.start <= out[-1].end and (s.start < out[-1].end or text_joinable(s, out[-1])):
            last = out[-1]
            tag = min(last.tag, s.tag, key=lambda t: rank.get(t, 99)) if last.tag != s.tag else last.tag
            out[-1] = Span(last.start, max(last.end, s.end), tag)
        else:
            out.append(s)
    return out


def text_joinable(a: Span, b: Span) -> bool:
    """Two touching spans of the same tag join into one (``[NAME]`` rather than ``[NAME][NAME]``)."""
    return a.tag == b.tag


def find_phi(text: str, known: tuple[str, ...] | list[str] = ()) -> list[Span]:
    """The spans of ``text`` that identify a person, sorted and merged."""
    if not text:
        return []
    spans: list[Span] = []
    for token in sorted({k.strip() for k in known if k and len(k.strip()) >= 2}, key=len, reverse=True):
        for m in re.finditer(rf"(?<![\w]){re.escape(token)}(?![\w])", text, flags=re.IGNORECASE):
            spans.append(Span(m.start(), m.end(), "ID"))
    spans += _spans_of(EMAIL_RE, text, "EMAIL")
    for m in _URL_RE.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in ".,;:!?":
            end -= 1
        spans.append(Span(m.start(), end, "URL"))
    spans += _spans_of(_IP_RE, text, "ID")
    spans += _spans_of(_SSN_RE, text, "ID")
    spans += _spans_of(_RECORD_RE, text, "ID", "value")
    spans += _spans_of(DATE_RE, text, "DATE")
    spans += _spans_of(_DATE_EXTRA_RE, text, "DATE", ("d", "md"))
    spans += _spans_of(PHONE_RE, text, "PHONE")
    spans += _spans_of(_LONG_NUMBER_RE, text, "ID")
    spans += _spans_of(_AGE_RE, text, "AGE", ("age", "age2"))
    spans += _spans_of(_STREET_RE, text, "ADDRESS")
    spans += _spans_of(_ZIP_RE, text, "ADDRESS")
    spans += _spans_of(_CITY_STATE_RE, text, "LOCATION", "city")
    spans += _spans_of(_CITY_CUE_RE, text, "LOCATION", "city")
    for m in _HOSPITAL_RE.finditer(text):
        words = list(re.finditer(r"\S+", m.group(0)))
        while words and (words[0].group(0) in _GENERIC_FACILITY_START or words[0].group(0) in _NOT_SURNAME):
            words.pop(0)
        if len(words) >= 2:
            spans.append(Span(m.start() + words[0].start(), m.end(), "LOCATION"))
    names = _names(text)
    spans += names
    for s in names:  # "Aiden Murphy, 95, with ..."
        m = _NAME_THEN_AGE_RE.match(text, s.end)
        if m:
            spans.append(Span(m.start("age"), m.end("age"), "AGE"))
    return _merge(spans)


def scrub_text(text: str, known: tuple[str, ...] | list[str] = ()) -> str:
    """Replace identifiers in free text by bracketed tags such as ``[NAME]`` and ``[DATE]``.

    ``known`` lists identifier strings from structured fields (a patient's name parts, ids) that
    must not survive anywhere in the text, whatever their context.
    """
    if not text:
        return text
    out, pos = [], 0
    for s in find_phi(text, known):
        out.append(text[pos:s.start])
        out.append(f"[{s.tag}]")
        pos = s.end
    out.append(text[pos:])
    return "".join(out)
