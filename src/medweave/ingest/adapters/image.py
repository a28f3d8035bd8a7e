"""2D pictures (PNG, JPEG, TIFF): single files, and folders sorted into class folders with an
optional metadata CSV (the layout of NIH ChestX-ray14 subsets and many Kaggle sets).

Every picture is decoded in full to prove it is readable, and stored with its metadata stripped:
PNG text/EXIF/time chunks and JPEG application segments (EXIF, XMP, IPTC, comments) are cut out
byte for byte, so pixels stay bit-identical; TIFF pages carrying descriptive tags are re-encoded
losslessly from their pixels. A picture without such metadata is stored as the original bytes.
"""

from __future__ import annotations

import csv
import io
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from ...store.catalog import Item, Modality
from ..base import Adapter, IngestContext, IngestError, Unit
from .report import patient_key, patient_rule_text

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
BLOB_EXT = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif"}

# Bits per channel of Pillow's modes (the rest are 8 bits per channel).
_MODE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


# --- recognising and decoding -------------------------------------------------------------------

def image_format(head: bytes) -> str | None:
    """The picture format named by the magic bytes at the start of a file, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


@dataclass
class PictureInfo:
    """What decoding a picture told us."""

    format: str
    rows: int
    cols: int
    frames: int
    mode: str
    orientation: int | None  # the EXIF orientation tag, which stripping removes


def _check_extent(img: Image.Image, fmt: str, frame: int) -> None:
    """A TIFF page whose strips or tiles cover less than its declared size is damaged: Pillow would
    hand back the rest as zeros (a 439-byte file declaring 16 million rows took seconds and 50 MB)."""
    if fmt != "tiff":
        return
    covered = sum(max(0, t.extents[2] - t.extents[0]) * max(0, t.extents[3] - t.extents[1])
                  for t in img.tile if t.extents)
    if covered < img.width * img.height:
        raise ValueError(f"page {frame + 1}'s strips hold {covered:,} of its {img.width:,} x {img.height:,} pixels")


def decode(data: bytes, name: str) -> PictureInfo:
    """Decode every frame of a picture; raise IngestError naming the problem if it does not decode."""
    fmt = image_format(data[:16])
    if fmt is None:
        raise IngestError(f"{name}: not a PNG, JPEG or TIFF picture (unrecognised leading bytes "
                          f"{data[:8].hex()})")
    try:
        with Image.open(io.BytesIO(data)) as img:
            frames = getattr(img, "n_frames", 1)
            for i in range(frames):
                img.seek(i)
                _check_extent(img, fmt, i)
                img.load()
            img.seek(0)
            orientation = img.getexif().get(0x0112)
            return PictureInfo(fmt, img.height, img.width, frames, img.mode, orientation)
    except Exception as exc:  # Pillow raises many kinds for damaged files (TypeError, KeyError, ...)
        raise IngestError(f"{name}: the {fmt.upper()} picture does not decode ({exc or type(exc).__name__}); "
                          f"expected a complete, readable picture") from exc


# --- stripping metadata -------------------------------------------------------------------------

_PNG_DROP = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}


def strip_png(data: bytes) -> bytes:
    """Cut the text, EXIF and time chunks out of a PNG (each chunk carries its own CRC)."""
    out, pos = [data[:8]], 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if ctype not in _PNG_DROP:
            out.append(data[pos:end])
        pos = end
        if ctype == b"IEND":
            break
    return b"".join(out)


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    """Whether a JPEG marker segment before the scan is kept: all but comments and application
    segments, except JFIF/JFXX (APP0), ICC profiles (APP2) and Adobe colour transforms (APP14)."""
    if marker == 0xFE:
        return False
    if 0xE0 <= marker <= 0xEF:
        return (
            (marker == 0xE0 and payload.startswith((b"JFIF\x00", b"JFXX\x00")))
            or (marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"))
            or (marker == 0xEE and payload.startswith(b"Adobe"))
        )
    return True


def strip_jpeg(data: bytes) -> bytes:
    """Remove EXIF/XMP/IPTC application segments and comments from a JPEG without re-encoding, and
    whatever follows the end-of-image marker (appended pictures carry their own EXIF)."""
    out, pos = [data[:2]], 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise IngestError(f"JPEG marker expected at byte {pos}, found 0x{data[pos]:02x}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: entropy-coded data (never holding FF D9) up to the end
            end = data.find(b"\xff\xd9", pos + 2)
            out.append(data[pos:] if end < 0 else data[pos:end + 2])
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        end = pos + 2 + length
        if _keep_jpeg_segment(marker, data[pos + 4:end]):
            out.append(data[pos:end])
        pos = end
    return b"".join(out)


# TIFF tags that describe the pixels; any other tag (description, artist, date, EXIF, XMP, ...) may
# carry identifiers and makes us re-encode the pages.
_TIFF_STRUCTURAL = {
    254, 255, 256, 257, 258, 259, 262, 266, 273, 274, 277, 278, 279, 282, 283, 284, 296, 317, 318,
    319, 320, 322, 323, 324, 325, 338, 339, 340, 341, 529, 530, 531, 532, 34675,
}


def _fresh_page(img: Image.Image) -> Image.Image:
    """A copy of the current page holding only its pixels (and palette), no tags."""
    page = Image.frombytes(img.mode, img.size, img.tobytes())
    if img.mode == "P":
        page.putpalette(img.getpalette())
    return page


def strip_tiff(data: bytes) -> bytes:
    """Re-encode a TIFF losslessly from its pixels (all pages) when any page has tags other than
    structural ones; otherwise return the bytes unchanged."""
    with Image.open(io.BytesIO(data)) as img:
        pages, descriptive = [], False
        for i in range(img.n_frames):
            img.seek(i)
            descriptive = descriptive or bool(set(img.tag_v2) - _TIFF_STRUCTURAL)
            pages.append(_fresh_page(img))
    if not descriptive:
        return data
    out = io.BytesIO()
    first, *rest = pages
    first.save(out, "TIFF", compression="tiff_adobe_deflate", save_all=True, append_images=rest)
    return out.getvalue()


STRIPPERS = {"png": strip_png, "jpeg": strip_jpeg, "tiff": strip_tiff}


# --- the shared picture item --------------------------------------------------------------------

def picture_item(data: bytes, name: str, ctx: IngestContext, patient_id: str, study_id: str | None,
                 **extra: Any) -> Item:
    """An IMAGE item for the picture ``data`` (named ``name`` in messages), metadata stripped.

    ``extra`` sets other Item attributes (fields are merged, not replaced)."""
    info = decode(data, name)
    blob = data if ctx.deid.keep_phi else STRIPPERS[info.format](data)
    meta = {"mode": info.mode, "bit_depth": _MODE_BITS.get(info.mode, 8),
            "metadata_removed": blob != data}
    if info.orientation not in (None, 1):
        meta["exif_orientation"] = info.orientation
    fields = {"format": info.format, "rows": info.rows, "cols": info.cols, "frames": info.frames}
    item = Item(patient_id=patient_id, study_id=study_id, modality=Modality.IMAGE, blob=blob,
                blob_ext=BLOB_EXT[info.format], fields=fields, meta=meta,
                patient_attrs={"namespace": ctx.namespace})
    for key, value in extra.items():
        current = getattr(item, key)
        setattr(item, key, {**current, **value} if isinstance(current, dict) else value)
    return item


class ImageAdapter(Adapter):
    """One PNG, JPEG or TIFF picture. The patient is the file-name prefix before the first ``_``, ``-``
    or ``.`` (option ``patient_from``:
    ``stem`` | ``prefix`` | ``parent``); the study is the file stem."""

    name = "image"
    version = "1"
    option_names = ("patient_from",)
    extensions = IMAGE_EXTENSIONS
    description = "2D pictures: PNG, JPEG, TIFF"

    def patient_rule(self, options: dict) -> str:
        return patient_rule_text(options)

    def sniff(self, path: Path, head: bytes) -> float:
        if image_format(head):
            return 0.9
        return 0.3 if path.name.lower().endswith(self.extensions) else 0.0

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        raw_pid = patient_key(unit.path, ctx.options.get("patient_from", "prefix"))
        pid = ctx.patient(raw_pid)
        yield picture_item(unit.path.read_bytes(), unit.path.name, ctx, pid,
                           ctx.study(pid, unit.path.stem))


# --- class folders with a metadata CSV ----------------------------------------------------------

SPLIT_NAMES = {"train", "training", "valid", "val", "validation", "test", "testing", "dev"}
SIDE_FILES = (".csv", ".txt", ".md", ".rst")  # files that may sit beside the class folders
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
NO_FINDING = "No Finding"
# Metadata columns we understand, by normalised name (lower case, letters and digits only).
COLUMNS = {
    "patient": ("patientid", "subjectid", "patient", "subject"),
    "age": ("patientage", "age"),
    "sex": ("patientgender", "patientsex", "gender", "sex"),
    "view": ("viewposition", "view"),
    "findings": ("findinglabels", "findings"),
    "follow_up": ("followup",),
    "spacing_x": ("originalimagepixelspacingx", "pixelspacingx"),
    "spacing_y": ("originalimagepixelspacingy", "pixelspacingy"),
    "width": ("originalimagewidth",),
    "height": ("originalimageheight",),
}
_IDENTIFYING_COLUMN = re.compile(r"name|\bid\b|mrn|birth|dob|address|phone|mail|ssn|zip", re.I)
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.I)
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def _norm(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", column.lower())


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _pictures(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)]


def _is_class_folder(folder: Path) -> bool:
    """A folder of pictures with no sub-folders."""
    children = _visible(folder)
    return not any(p.is_dir() for p in children) and bool(_pictures(folder))


def _only_folders_and_side_files(folder: Path) -> list[Path] | None:
    """The sub-folders of ``folder`` when every other entry is a side file (CSV, README), else None."""
    children = _visible(folder)
    if any(p.is_file() and not p.name.lower().endswith(SIDE_FILES) for p in children):
        return None
    return [p for p in children if p.is_dir()]


def class_layout(path: Path) -> list[tuple[str | None, Path]] | None:
    """(split, class folder) pairs when ``path`` is laid out as ``<split>/<class>/<pictures>`` or
    as ``<class>/<pictures>`` (two classes at least), else None."""
    subdirs = _only_folders_and_side_files(path)
    if not subdirs:
        return None
    if all(d.name.lower() in SPLIT_NAMES for d in subdirs):
        pairs = []
        for split in subdirs:
            classes = _only_folders_and_side_files(split)
            if not classes or not all(_is_class_folder(c) for c in classes):
                return None
            pairs += [(split.name, c) for c in classes]
        return pairs
    if len(subdirs) >= 2 and all(_is_class_folder(c) for c in subdirs):
        split = path.name if path.name.lower() in SPLIT_NAMES else None
        return [(split, c) for c in subdirs]
    return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts. A header cell split by its own comma (``Spacing[x,y]`` read as
    ``Spacing[x`` and ``y]``) is mended into ``Spacing_x`` and ``Spacing_y``."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        for i in range(len(header) - 1):
            a, b = header[i], header[i + 1]
            if "[" in a and "]" not in a and b.endswith("]") and "[" not in b:
                stem, first = a.split("[", 1)
                header[i], header[i + 1] = f"{stem}_{first}", f"{stem}_{b[:-1]}"
        return [dict(zip(header, row)) for row in reader if row]


def _name_column(rows: list[dict[str, str]], names: set[str]) -> tuple[str | None, int]:
    """The column whose values are the picture file names, and how many pictures it matches."""
    best, hits = None, 0
    for column in (rows[0] if rows else {}):
        n = len({Path(r.get(column) or "").name for r in rows} & names)
        if n > hits:
            best, hits = column, n
    return best, hits


def metadata_rows(folder: Path, names: set[str]) -> dict[str, dict[str, str]]:
    """Picture file name -> its metadata row, from the CSV in ``folder`` that names most pictures."""
    best: tuple[int, str | None, list[dict[str, str]]] = (0, None, [])
    for path in folder.glob("*.csv"):
        try:
            rows = _read_csv(path)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise IngestError(f"{path.name}: metadata CSV cannot be read ({exc})") from exc
        column, hits = _name_column(rows, names)
        if hits > best[0]:
            best = (hits, column, rows)
    _, column, rows = best
    return {Path(r[column]).name: r for r in rows} if column else {}


def _find(row: dict[str, str], fact: str) -> tuple[str | None, str | None]:
    """(column, stripped value) of the first column holding ``fact``; value None when empty."""
    by_norm = {_norm(c): c for c in row}
    for option in COLUMNS[fact]:
        if option in by_norm:
            value = (row[by_norm[option]] or "").strip()
            return by_norm[option], value or None
    return None, None


def parse_age(column: str, value: str) -> float:
    """An age in years from ``57``, ``058Y``, ``6M``, ``3W`` or ``14D``."""
    m = _AGE_RE.match(value)
    if not m:
        raise IngestError(f"column {column!r} = {value!r}: expected an age such as 57 or 058Y")
    return round(float(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()], 4)


def _number(column: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise IngestError(f"column {column!r} = {value!r}: expected a number") from None


def abnormal_flag(class_name: str) -> int | None:
    """1/0 when a class folder name says abnormal/normal (``1_abnormal``, ``normal``), else None."""
    words = set(re.split(r"[^a-z]+", class_name.lower()))
    if words & {"abnormal", "positive", "pos", "disease"}:
        return 1
    if words & {"normal", "negative", "neg", "healthy"}:
        return 0
    return None


def finding_labels(column: str, value: str | None) -> dict[str, Any]:
    """Labels from a ``Finding Labels``-style cell: the list, and one 0/1 label per finding (every
    NIH ChestX-ray14 finding when the column is NIH's own)."""
    found = [f.strip() for f in re.split(r"[|;]", value or "") if f.strip() and f.strip() != NO_FINDING]
    vocabulary = list(NIH_FINDINGS) if _norm(column) == "findinglabels" else []
    labels: dict[str, Any] = {"findings": found, NO_FINDING: int(not found)}
    labels.update({f: int(f in found) for f in vocabulary + found})
    return labels


@dataclass
class RowFacts:
    """What a metadata row says about one picture."""

    fields: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    sex: str | None = None
    patient: str | None = None  # the raw patient id: only ever passed to ctx.patient
    study: str | None = None


def _row_facts(row: dict[str, str], file_name: str) -> RowFacts:
    """What a metadata row says, sorted into item fields, labels, patient facts and meta. Columns
    we do not understand are kept in meta, except the file name and identifying-looking ones."""
    facts = RowFacts()
    used = set()
    for fact in COLUMNS:
        column, value = _find(row, fact)
        if column is None:
            continue
        used.add(column)
        if fact == "findings":
            facts.labels.update(finding_labels(column, value))
        elif value is None:
            continue
        elif fact == "patient":
            facts.patient = value
        elif fact == "age":
            facts.fields["age"] = parse_age(column, value)
        elif fact == "sex":
            facts.sex = {"male": "M", "female": "F"}.get(value.lower(), value.upper()[:1])
        elif fact == "view":
            facts.fields["view_position"] = value
        elif fact == "follow_up":
            facts.study = f"follow-up {value}"
            facts.meta["follow_up"] = value
        else:
            facts.meta[f"original_{fact}"] = _number(column, value)
    rest = {c: v for c, v in row.items()
            if c not in used and v != file_name and not _IDENTIFYING_COLUMN.search(c)}
    if rest:
        facts.meta["csv"] = rest
    return facts


def _spacing(meta: dict[str, Any], rows: int, cols: int) -> dict[str, float]:
    """Pixel spacing of the stored picture: the original spacing, scaled by how much the picture
    was shrunk when the original size is known."""
    out = {}
    for axis, size, stored in (("x", "width", cols), ("y", "height", rows)):
        spacing = meta.get(f"original_spacing_{axis}")
        if spacing is not None:
            scale = meta[f"original_{size}"] / stored if meta.get(f"original_{size}") else 1.0
            out[f"pixel_spacing_{axis}"] = spacing * scale
    return out


class ImageFolderAdapter(Adapter):
    """Pictures sorted into class folders, ``<split>/<class>/*.png`` or ``<class>/*.png``, with an
    optional metadata CSV beside them joined by file name (NIH ChestX-ray14 columns understood:
    patient, age, sex, view, follow-up, findings, original size and pixel spacing)."""

    name = "image-folder"
    version = "1"
    option_names = ("patient_from",)
    description = "class folders of pictures (<split>/<class>/*.png) with an optional metadata CSV"

    def sniff(self, path: Path, head: bytes) -> float:
        return 0.0  # folders only

    def patient_rule(self, options: dict) -> str:
        return "by the metadata CSV's patient column where a picture has a row, else " + patient_rule_text(options)

    def claims_dir(self, path: Path) -> bool:
        return class_layout(path) is not None

    def units(self, path: Path, ctx: IngestContext) -> Iterator[Unit]:
        pairs = class_layout(path) or []
        pictures = [(split, folder, p) for split, folder in pairs for p in _pictures(folder)]
        try:
            rows, problem = metadata_rows(path, {p.name for _, _, p in pictures}), None
        except IngestError as exc:  # every picture reports it: none is stored without its metadata
            rows, problem = {}, str(exc)
        for split, folder, picture in pictures:
            extra = {"split": split, "class": folder.name, "row": rows.get(picture.name)}
            yield Unit(picture, extra={**extra, "csv_error": problem} if problem else extra)

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        if unit.extra.get("csv_error"):
            raise IngestError(unit.extra["csv_error"])
        row = unit.extra.get("row")
        facts = _row_facts(row, unit.path.name) if row else RowFacts(meta={"metadata_row": False})
        raw_pid = facts.patient or patient_key(unit.path, ctx.options.get("patient_from", "prefix"))
        pid = ctx.patient(raw_pid)
        cls = unit.extra["class"]
        labels = {"class": cls, **facts.labels}
        if abnormal_flag(cls) is not None:
            labels["abnormal"] = abnormal_flag(cls)
        fields = {"label": cls, "split": unit.extra.get("split"), **facts.fields}
        study = ctx.study(pid, facts.study or unit.path.name)
        item = picture_item(unit.path.read_bytes(), unit.path.name, ctx, pid, study, fields=fields,
                            labels=labels, meta=facts.meta,
                            patient_attrs={"sex": facts.sex} if facts.sex else {})
        item.fields.update(_spacing(facts.meta, item.fields["rows"], item.fields["cols"]))
        yield item
