"""De-identification on the way in.

* Patient and study identifiers become stable keyed pseudonyms (HMAC-SHA256 with a secret kept in
  the store), so that every item of one patient stays linked without the identifier being stored.
* Dates move by a per-patient offset (derived from the same key), so intervals within a patient
  survive while absolute dates do not.
* DICOM UIDs are remapped to deterministic ``2.25.<n>`` UIDs, so series and studies stay grouped.
* Free text (reports, notes, header comments) is scrubbed by rules: names after titles or labels,
  names known from structured fields, dates, phone numbers, e-mail addresses and record numbers.

Everything is deterministic for a given secret: ingesting the same file twice yields the same bytes,
which is what makes ingestion idempotent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from pathlib import Path

PSEUDONYM_PREFIX = "P"


def load_or_create_secret(path: Path) -> bytes:
    """Read the store's pseudonymisation key, creating it (atomically) on first use."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(key.hex())
    tmp.chmod(0o600)
    try:
        # os.link fails if another process created the key first; then theirs wins.
        import os

        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


# --- free-text scrubbing -------------------------------------------------------------------------

_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DATE_PATTERNS = [
    rf"\b\d{{1,2}}[-/ ]{_MONTHS}[-/ ,]+\d{{2,4}}\b",  # 29-Sep-90, 3 March 2012
    rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b",  # March 3, 2012
    r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b",  # 2012-03-04
    r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b",  # 03/04/2012, 01.10.1990
    r"\b(?:19|20)\d{6}\b",  # 20120304
]
_DATE_RE = re.compile("|".join(_DATE_PATTERNS), re.IGNORECASE)
_EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_PHONE_RE = re.compile(
    r"(?<![\w/])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{3}[\s.-])\d{3}[\s.-]?\d{3,4}\b"
)
_RECORD_RE = re.compile(
    r"\b(?:MRN|MR#|medical record(?: number| no\.?)?|record(?: number| no\.?| #)|acc(?:ession)?(?: number| no\.?| #)?|"
    r"patient id|pt id|ssn|social security(?: number)?)\s*[:#]?\s*[A-Z0-9-]{3,}",
    re.IGNORECASE,
)
_LONG_NUMBER_RE = re.compile(r"\b\d{6,}\b")
_TITLED_NAME_RE = re.compile(
    r"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+[A-Z][a-zA-Z'-]+(?:\s+[A-Z][a-zA-Z'-]+)?"
)
_LABELLED_NAME_RE = re.compile(
    r"\b(?:patient name|name|patient|physician|doctor|attending|referring|signed by|dictated by|"
    r"reported by|electronically signed by)\s*:\s*(?:(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+)?"
    r"[A-Z][a-zA-Z'-]+(?:[ ,]+[A-Z][a-zA-Z'-]+){0,2}",
    re.IGNORECASE,
)


def scrub_text(text: str, known: tuple[str, ...] | list[str] = ()) -> str:
    """Replace identifiers in free text by bracketed tags such as ``[NAME]`` and ``[DATE]``.

    ``known`` lists identifier strings from structured fields (a patient's name parts, ids) that
    must not survive anywhere in the text, whatever their context.
    """
    if not text:
        return text
    out = text
    for token in sorted({k.strip() for k in known if k and len(k.strip()) >= 2}, key=len, reverse=True):
        out = re.sub(rf"(?<![\w]){re.escape(token)}(?![\w])", "[ID]", out, flags=re.IGNORECASE)
    out = _EMAIL_RE.sub("[EMAIL]", out)
    out = _RECORD_RE.sub("[ID]", out)
    out = _DATE_RE.sub("[DATE]", out)
    out = _PHONE_RE.sub("[PHONE]", out)
    out = _LONG_NUMBER_RE.sub("[ID]", out)
    out = _TITLED_NAME_RE.sub("[NAME]", out)
    out = _LABELLED_NAME_RE.sub(lambda m: m.group(0).split(":")[0] + ": [NAME]", out)
    return out


class Deidentifier:
    """Keyed pseudonyms, per-patient date shifts, UID remapping and text scrubbing.

    With ``keep_phi=True`` (data already de-identified) every method is the identity, except that
    ids are still namespaced strings.
    """

    MAX_SHIFT_DAYS = 1095

    def __init__(self, secret: bytes, keep_phi: bool = False):
        self.secret = secret
        self.keep_phi = keep_phi

    def _mac(self, *parts: str) -> bytes:
        return hmac.new(self.secret, "\x1f".join(parts).encode("utf-8"), hashlib.sha256).digest()

    def patient_id(self, namespace: str, raw: str) -> str:
        raw = str(raw).strip()
        if self.keep_phi:
            return raw if namespace in ("", "default") else f"{namespace}:{raw}"
        return PSEUDONYM_PREFIX + self._mac("patient", namespace, raw).hex()[:16]

    def study_id(self, patient_id: str, raw: str) -> str:
        raw = str(raw).strip()
        if self.keep_phi:
            return f"{patient_id}/{raw}"
        return "S" + self._mac("study", patient_id, raw).hex()[:16]

    def date_offset_days(self, patient_id: str) -> int:
        """A per-patient shift in [-MAX_SHIFT_DAYS, -1] days (0 when keeping PHI)."""
        if self.keep_phi:
            return 0
        n = int.from_bytes(self._mac("dateshift", patient_id)[:4], "big")
        return -(1 + n % self.MAX_SHIFT_DAYS)

    def shift(self, patient_id: str, value: dt.date | dt.datetime | None):
        if value is None or self.keep_phi:
            return value
        return value + dt.timedelta(days=self.date_offset_days(patient_id))

    def uid(self, original: str) -> str:
        """A deterministic replacement for a DICOM UID (``2.25.`` + a 38-digit integer)."""
        if self.keep_phi or not original:
            return original
        n = int.from_bytes(self._mac("uid", original)[:16], "big")
        return "2.25." + str(n)[:38]

    def scrub(self, text: str, known: tuple[str, ...] | list[str] = ()) -> str:
        return text if self.keep_phi else scrub_text(text, known)
