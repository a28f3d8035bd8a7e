"""De-identification of table columns: what a column holds, judged by the meaning of its name and by
its content, and what to do with it (keep, drop, shift, pseudonymise, scrub).

A column is an identifier when its name *means* one (``MothersMaiden``, ``CCNumber``, ``EmailAddress``,
``TelephoneNumber``, ``NationalID``, ``Username``, ``patient_name``: the name is split into words, and
the words are matched against the kinds of identifier of the HIPAA Safe Harbor list, not against a
fixed list of whole column names), or when its values *look like* one (e-mail addresses, phone
numbers, card numbers that pass the Luhn check, social security numbers, IP addresses, URLs, person
names written ``Last^First`` or as two or three capitalised words; not long numbers: drug and
product codes are long numbers too). A column whose
values are all dates (ISO, ``dd-mm-yyyy``, ``dd/mm/yyyy``, ``mm/dd/yyyy``, ``dd.mm.yyyy``,
``yyyymmdd``, ``3 Mar 2012``, ``Mar 3, 2012``, with or without a time) is shifted per patient.

Only a sample of each column's values is looked at (``SAMPLE``), in plain Python: a table of 100,000
columns is classified in well under a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ACTIONS = ("keep", "drop", "shift", "pseudonymise", "text")
ACTION_ALIASES = {"pseudonymize": "pseudonymise", "pseudonym": "pseudonymise", "hash": "pseudonymise",
                  "scrub": "text", "date": "shift"}
SAMPLE = 200  # values looked at per column

# Words that make a column an identifier wherever they stand in its name.
_IDENTIFIER_WORDS = {
    "surname": "a surname", "forename": "a forename", "firstname": "a first name", "lastname": "a last name",
    "givenname": "a given name", "middlename": "a middle name", "familyname": "a family name",
    "fullname": "a full name", "maiden": "a maiden name", "username": "a user name", "login": "a login",
    "password": "a password", "passwd": "a password", "email": "an e-mail address", "mail": "an e-mail address",
    "phone": "a phone number", "telephone": "a phone number", "tel": "a phone number", "mobile": "a phone number",
    "fax": "a fax number", "pager": "a pager number", "address": "an address", "street": "an address",
    "city": "a town", "town": "a town", "zip": "a postal code", "zipcode": "a postal code",
    "postcode": "a postal code", "postal": "a postal code", "ssn": "a social security number",
    "passport": "a passport number", "licence": "a licence number", "license": "a licence number",
    "cvv": "a card security code", "cvv2": "a card security code", "iban": "a bank account",
    "mrn": "a medical record number", "ip": "an IP address", "ipaddress": "an IP address", "url": "a URL",
    "website": "a URL", "domain": "a web domain", "guid": "a unique identifier", "uuid": "a unique identifier",
    "latitude": "a location", "longitude": "a location", "gps": "a location", "useragent": "a browser identity",
    "browser": "a browser identity", "mtcn": "a money-transfer number", "tracking": "a tracking number",
    "ups": "a tracking number", "vin": "a vehicle number", "plate": "a licence plate", "birthday": "a birth date",
    "birthdate": "a birth date", "dob": "a birth date", "birthplace": "a birth place", "initials": "initials",
    "initial": "an initial", "nhs": "a health service number", "insurance": "an insurance number",
    "beneficiary": "a beneficiary number", "fingerprint": "a biometric", "biometric": "a biometric",
}
# Word pairs that are identifiers together (each word alone is not).
_IDENTIFIER_PAIRS = {
    ("national", "id"): "a national identity number", ("national", "number"): "a national identity number",
    ("social", "security"): "a social security number", ("medical", "record"): "a medical record number",
    ("cc", "number"): "a card number", ("cc", "expires"): "a card expiry", ("cc", "exp"): "a card expiry",
    ("credit", "card"): "a card number", ("card", "number"): "a card number", ("account", "number"): "a bank account",
    ("date", "birth"): "a birth date", ("birth", "date"): "a birth date", ("user", "agent"): "a browser identity",
    ("ip", "address"): "an IP address", ("record", "number"): "a record number", ("serial", "number"): "a serial number",
}
# "name" is an identifier alone or beside these words (patient_name, FirstName), not in "drug_name".
_PERSON_WORDS = {"patient", "person", "first", "last", "given", "family", "middle", "full", "maiden", "mother",
                 "mothers", "father", "fathers", "user", "contact", "kin", "spouse", "guardian", "pt", "subject",
                 "physician", "doctor", "nurse", "sur", "fore", "birth", "legal", "preferred", "nick"}
# Strong words found inside run-together names ("emailaddress", "phonenumber", "dateofbirth").
_INSIDE_WORDS = {"email": "an e-mail address", "phone": "a phone number", "surname": "a surname",
                 "firstname": "a first name", "lastname": "a last name", "givenname": "a given name",
                 "maiden": "a maiden name", "username": "a user name", "password": "a password",
                 "passport": "a passport number", "address": "an address", "zipcode": "a postal code",
                 "postcode": "a postal code", "postalcode": "a postal code", "dateofbirth": "a birth date",
                 "birthdate": "a birth date", "birthday": "a birth date", "socialsecurity": "a social security number",
                 "medicalrecord": "a medical record number", "nationalid": "a national identity number",
                 "ccnumber": "a card number", "creditcard": "a card number", "useragent": "a browser identity",
                 "latitude": "a location", "longitude": "a location", "patientname": "a name", "fullname": "a name"}

_WORD_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def name_words(column: str) -> list[str]:
    """A column name as lower-case words: ``MothersMaiden`` -> mothers, maiden; ``CCNumber`` -> cc,
    number; ``patient_name`` -> patient, name."""
    return [w.lower() for w in _WORD_RE.findall(str(column))]


def identifier_by_name(column: str) -> str | None:
    """What kind of identifier a column's name says it holds, or None."""
    words = name_words(column)
    joined = "".join(words)
    for w in words:
        if w in _IDENTIFIER_WORDS:
            return _IDENTIFIER_WORDS[w]
    for a, b in zip(words, words[1:]):
        if (a, b) in _IDENTIFIER_PAIRS:
            return _IDENTIFIER_PAIRS[(a, b)]
    if {"of", "birth"} <= set(words) or ("date" in words and "birth" in words):
        return "a birth date"
    if "name" in words and (len(words) == 1 or set(words) - {"name", "names"} <= _PERSON_WORDS):
        return "a name"
    for inside, kind in _INSIDE_WORDS.items():
        if inside in joined:
            return kind
    return None


# --- by content ------------------------------------------------------------------------------------

_EMAIL = re.compile(r"^[\w.+-]+@[\w-]+(?:\.[\w-]+)+$")
_PHONE = re.compile(r"^(?:\+|00)?[\d\s().-]{7,22}$")
_SSN = re.compile(r"^\d{3}-\d{2}-\d{4}$")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_URL = re.compile(r"^(?:https?://|www\.)\S+$", re.IGNORECASE)
_CARD = re.compile(r"^\d(?:[ -]?\d){12,18}$")
_PERSON = re.compile(r"^[A-Z][a-z'-]+(?:(?:, ?| )[A-Z][a-z'-]+){1,2}$|^[A-Za-z'-]+\^[A-Za-z'-]+(?:\^.*)?$")


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def _share(values: list[str], test) -> float:
    return sum(1 for v in values if test(v)) / len(values)


def identifier_by_content(values: list[str]) -> str | None:
    """What kind of identifier a column's (sampled, non-empty) values look like, or None. A kind must
    hold for at least 80 % of the values."""
    if not values:
        return None
    if _share(values, _EMAIL.match) >= 0.8:
        return "e-mail addresses"
    if _share(values, _SSN.match) >= 0.8:
        return "social security numbers"
    if _share(values, lambda v: bool(_CARD.match(v)) and _luhn(re.sub(r"\D", "", v))) >= 0.8:
        return "card numbers"
    if _share(values, _IPV4.match) >= 0.8:
        return "IP addresses"
    if _share(values, _URL.match) >= 0.8:
        return "URLs"
    if _share(values, lambda v: bool(_PHONE.match(v)) and sum(c.isdigit() for c in v) >= 7
              and bool(re.search(r"[\s().+-]", v.strip()))) >= 0.8:
        return "phone numbers"
    if len(values) >= 2 and _share(values, _PERSON.match) >= 0.8 and len(set(values)) >= 0.5 * len(values):
        return "person names"
    return None


# --- dates -----------------------------------------------------------------------------------------

_MON = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_TIME = r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"


@dataclass(frozen=True)
class DateLayout:
    """A way dates are written: a regex for detection and a ``strftime`` format for parsing (None =
    let the parser read it, for ISO and month names)."""

    name: str
    pattern: re.Pattern
    fmt: str | None
    dayfirst: bool = False


DATE_LAYOUTS = [
    DateLayout("ISO 8601", re.compile(rf"^\d{{4}}-\d{{2}}-\d{{2}}{_TIME}(?:Z|[+-]\d{{2}}:?\d{{2}})?$"), "ISO8601"),
    DateLayout("dd-mm-yyyy", re.compile(rf"^(\d{{1,2}})-(\d{{1,2}})-\d{{4}}{_TIME}$"), None, True),
    DateLayout("dd/mm/yyyy", re.compile(rf"^(\d{{1,2}})/(\d{{1,2}})/\d{{4}}{_TIME}$"), None, True),
    DateLayout("dd.mm.yyyy", re.compile(rf"^(\d{{1,2}})\.(\d{{1,2}})\.\d{{4}}{_TIME}$"), None, True),
    DateLayout("yyyy/mm/dd", re.compile(rf"^\d{{4}}/\d{{1,2}}/\d{{1,2}}{_TIME}$"), None),
    DateLayout("yyyymmdd", re.compile(r"^(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])$"), "%Y%m%d"),
    DateLayout("d Mon yyyy", re.compile(rf"^\d{{1,2}}[ -]{_MON}[ -,]+\d{{2,4}}{_TIME}$", re.IGNORECASE), None, True),
    DateLayout("Mon d, yyyy", re.compile(rf"^{_MON}\s+\d{{1,2}},?\s+\d{{4}}{_TIME}$", re.IGNORECASE), None),
]


def date_layout(values: list[str]) -> DateLayout | None:
    """The layout every sampled value is written in, or None. For ``dd-mm-yyyy``-like layouts the
    order is read from the values: a first part above 12 means day first, a second part above 12
    month first; when neither occurs day first is assumed (the international order)."""
    if not values:
        return None
    for layout in DATE_LAYOUTS:
        matches = [layout.pattern.match(v) for v in values]
        if not all(matches):
            continue
        if layout.fmt is None and layout.dayfirst and layout.name[:2] == "dd" and matches[0].groups():
            firsts = [int(m.group(1)) for m in matches]
            seconds = [int(m.group(2)) for m in matches]
            if max(seconds) > 12 and max(firsts) <= 12:
                return DateLayout(layout.name.replace("dd", "x").replace("mm", "dd").replace("x", "mm"),
                                  layout.pattern, None, False)
        return layout
    return None


def parse_action(value: str, where: str) -> str:
    """A declared column action, checked: one of ``ACTIONS`` (or an alias)."""
    action = ACTION_ALIASES.get(str(value).lower(), str(value).lower())
    if action not in ACTIONS:
        raise ValueError(f"{where}: column action {value!r} is not known; allowed: {', '.join(ACTIONS)}")
    return action
