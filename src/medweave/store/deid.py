"""De-identification on the way in.

* Patient and study identifiers become stable keyed pseudonyms (HMAC-SHA256 with a secret kept in
  the store), so that every item of one patient stays linked without the identifier being stored.
* Dates move by a per-patient offset (derived from the same key), so intervals within a patient
  survive while absolute dates do not.
* DICOM UIDs are remapped to deterministic ``2.25.<n>`` UIDs, so series and studies stay grouped.
* Free text (reports, notes, header comments) is scrubbed by rules (``deid_text``) covering the HIPAA
  Safe Harbor categories: names, places, dates, ages over 89, contact details and numbers.

Everything is deterministic for a given secret: ingesting the same file twice yields the same bytes,
which is what makes ingestion idempotent.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
import secrets
from pathlib import Path

from .deid_text import DATE_RE as _DATE_RE  # also used for path parts
from .deid_text import find_phi, scrub_text  # noqa: F401  (re-exported)

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
# The rules live in deid_text (spans, so that benchmarks/deid.py can score them on a labelled corpus).


def scrub_known(text: str, known: tuple[str, ...] | list[str] = ()) -> str:
    """Replace only the ``known`` identifier strings (whole words, any case) by ``[ID]``: for the
    tool's own messages, which must keep their words but never carry a patient's identifiers."""
    out = text
    for token in sorted({k.strip() for k in known if k and len(k.strip()) >= 2}, key=len, reverse=True):
        out = re.sub(rf"(?<![\w]){re.escape(token)}(?![\w])", "[ID]", out, flags=re.IGNORECASE)
    return out


# --- identifiers in file paths --------------------------------------------------------------------

_PATH_DIGITS_RE = re.compile(r"\d{5,}")  # record numbers, compact dates, UIDs, accession numbers
_PATH_RECORD_RE = re.compile(r"(?:^|[^A-Za-z])(?:mrn|ssn|acc|pid|nhs)[-_#]?\d+", re.IGNORECASE)
_PATH_SUFFIX_RE = re.compile(r"(?:\.[A-Za-z][A-Za-z0-9]{0,5}){1,2}$")


def split_suffix(name: str) -> tuple[str, str]:
    """(stem, suffix) where the suffix is at most two short alphabetic extensions (``.nii.gz``)."""
    m = _PATH_SUFFIX_RE.search(name)
    if not m or m.start() == 0:
        return name, ""
    return name[:m.start()], name[m.start():]


def path_part_identifies(part: str, known: tuple[str, ...] | list[str] | set[str] = ()) -> bool:
    """True when a folder or file name looks like it names or numbers a patient: a DICOM person
    name (``SMITH^JOHN``), an e-mail address, a date, a run of 5+ digits (record numbers, compact
    dates, UIDs), an ``MRN123``-like token, or one of the raw ``known`` patient keys of its items."""
    stem, _ = split_suffix(part)
    if "^" in stem or "@" in stem or _PATH_DIGITS_RE.search(stem) or _PATH_RECORD_RE.search(stem):
        return True
    if _DATE_RE.search(stem.replace("_", " ")):
        return True
    ascii_stem = stem.lower() if stem.isascii() else None
    for k in known:
        k = str(k).strip()
        # ASCII key and name: a plain substring test first (a pattern compiled per key and file
        # overflowed re's cache, and compiling was a fifth of ingest's time); for ASCII text a
        # case-insensitive match implies the lower-case substring. Other text: the pattern alone.
        if ascii_stem is not None and k.isascii() and k.lower() not in ascii_stem:
            continue
        if len(k) >= 3 and re.search(rf"(?<![A-Za-z0-9]){re.escape(k)}(?![A-Za-z0-9])", stem, re.IGNORECASE):
            return True
    return False


class Deidentifier:
    """Keyed pseudonyms, per-patient date shifts, UID remapping and text scrubbing.

    With ``keep_phi=True`` (data already de-identified) every method is the identity, except that
    ids are still namespaced strings.
    """

    MAX_SHIFT_DAYS = 1095

    # Entries per memo (UIDs, scrubbed texts, date offsets, path parts): bounded memory. They repeat from
    # file to file of a series or a patient, which lie together; 65,536 (before) held about 20 MB a memo
    # at 30,000 phantom patients, 8,192 about 3 MB, the same hits within a series.
    MEMO_MAX = 8192

    def __init__(self, secret: bytes, keep_phi: bool = False):
        self.secret = secret
        self.keep_phi = keep_phi
        # Memos of pure functions of their arguments that repeat from file to file of a series.
        self._uids: dict[str, str] = {}
        self._offsets: dict[str, int] = {}
        self._scrubbed: dict[tuple[str, tuple[str, ...]], str] = {}
        self._scrubbed_chars = 0  # characters held in ``_scrubbed`` (keys' texts and values)

    def __getstate__(self):  # (sent to reader processes and Ray tasks: the key and the option, no memos)
        return {"secret": self.secret, "keep_phi": self.keep_phi}

    def __setstate__(self, state):
        self.__init__(state["secret"], state["keep_phi"])

    def _mac(self, *parts: str) -> bytes:
        # hmac.digest: OpenSSL's one-shot HMAC-SHA256, the same bytes as copying a keyed hmac object
        # (which this did before) in two thirds of the time
        return hmac.digest(self.secret, "\x1f".join(parts).encode("utf-8"), "sha256")

    def _memo(self, memo: dict, key, fn):
        value = memo.get(key)
        if value is None:
            if len(memo) >= self.MEMO_MAX:
                memo.clear()
            value = memo[key] = fn()
        return value

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
        return self._memo(self._offsets, patient_id, lambda: -(
            1 + int.from_bytes(self._mac("dateshift", patient_id)[:4], "big") % self.MAX_SHIFT_DAYS))

    def shift(self, patient_id: str, value: dt.date | dt.datetime | None):
        if value is None or self.keep_phi:
            return value
        return value + dt.timedelta(days=self.date_offset_days(patient_id))

    def uid(self, original: str) -> str:
        """A deterministic replacement for a DICOM UID (``2.25.`` + a 38-digit integer)."""
        if self.keep_phi or not original:
            return original
        return self._memo(self._uids, original,
                          lambda: "2.25." + str(int.from_bytes(self._mac("uid", original)[:16], "big"))[:38])

    SCRUB_MEMO_CHARS = 4 << 20  # characters of texts and their scrubbed forms kept in the scrub memo

    def scrub(self, text: str, known: tuple[str, ...] | list[str] = ()) -> str:
        """``scrub_text``, memoised (table cells repeat from row to row). The memo is bounded by the
        characters it holds as well as by entries: 65,536 reports of a few hundred characters each
        were tens of MB that no report reuses (a peak that grew with the reports up to that many)."""
        if self.keep_phi:
            return text
        known = tuple(known)
        key = (text, known)
        value = self._scrubbed.get(key)
        if value is None:
            value = scrub_text(text, known)
            size = len(text) + len(value)
            if len(self._scrubbed) >= self.MEMO_MAX or self._scrubbed_chars + size > self.SCRUB_MEMO_CHARS:
                self._scrubbed.clear()
                self._scrubbed_chars = 0
            self._scrubbed[key] = value
            self._scrubbed_chars += size
        return value

    def keyed(self, kind: str, text: str) -> str:
        """A keyed fingerprint (hex) of ``text``: equal inputs give equal outputs for this store only."""
        return self._mac(kind, text).hex()

    # --- paths ------------------------------------------------------------------------------------
    def unit_id(self, source_id: str) -> str:
        """The stored id of a unit (a file, or a member of one): a keyed fingerprint of its absolute
        path, so that re-reading the same file finds its earlier rows without the path being stored."""
        return "U" + self._mac("unit", source_id).hex()[:24]

    def path_part(self, part: str, known: tuple[str, ...] | list[str] | set[str] = ()) -> str:
        """A folder or file name as stored: unchanged, or (when it identifies) ``[ID-<keyed hash>]``
        followed by its extension, so that equal names stay equal and the file type stays visible."""
        if self.keep_phi:
            return part
        return self._memo(self.__dict__.setdefault("_path_parts", {}), (part, tuple(known)),
                          lambda: self._path_part(part, known))

    def _path_part(self, part: str, known) -> str:
        if not path_part_identifies(part, known):
            return part
        stem, suffix = split_suffix(part)
        return f"[ID-{self._mac('path', stem).hex()[:8]}]{suffix}"

    def _root_name(self, root: Path) -> str:
        """The name of the folder the user gave (resolved once per folder: ``.`` has a name too)."""
        names = self.__dict__.setdefault("_root_names", {})
        if root not in names:
            if len(names) >= 1024:
                names.clear()
            names[root] = root.resolve().name or root.name
        return names[root]

    def display_path(self, path: Path, root: Path | None = None,
                     known: tuple[str, ...] | list[str] | set[str] = ()) -> str:
        """The path stored for a source: relative to the ``root`` the user gave (starting with the
        root's own name), each part scrubbed by ``path_part``. With ``keep_phi``: the path as given."""
        if not isinstance(path, Path):
            path = Path(path)
        if self.keep_phi:
            return str(path)
        parts: tuple[str, ...]
        # (``root is path``: a file named on the command line is its own root; comparing paths
        # costs more than the rest of this)
        if root is None or root is path or Path(root) == path:
            parts = (path.name,)
        else:
            root = Path(root)
            try:
                rel = path.relative_to(root)
                parts = (self._root_name(root),) + rel.parts
            except ValueError:
                parts = (path.parent.name, path.name) if path.parent.name else (path.name,)
        return "/".join(self.path_part(p, known) for p in parts if p)
