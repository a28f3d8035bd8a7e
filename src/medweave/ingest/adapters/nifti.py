"""Volumes in NIfTI-1/NIfTI-2 (``.nii``, ``.nii.gz``) and FreeSurfer MGH (``.mgh``, ``.mgz``) files.

The stored blob is the file itself, with the header text fields that can hold identifiers cleared
in place (``descrip``, ``aux_file``, ``db_name``, ``intent_name``), NIfTI header extensions blanked,
and, for MGH, the trailing tags (command lines, file names) cut off. The voxel bytes are never
rewritten. Compressed files are re-compressed without a file name or time stamp in the gzip header,
so the same volume always gives the same bytes.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from ...store.catalog import Item, Modality
from ..base import Adapter, IngestContext, IngestError, Unit, quoted
from .report import patient_key, patient_rule_text
from .table import sha256_file

NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")
MGH_PARAMS_BYTES = 20  # TR, flip angle, TE, TI, field of view: float32 each, before the tags
_SUFFIX_RE = re.compile(r"\.(nii|mgh|mgz|hdr|img)(\.gz)?$", re.I)
PAIR_HEADER_SUFFIXES = (".hdr", ".hdr.gz")
PAIR_IMAGE_SUFFIXES = (".img", ".img.gz")


@dataclass
class Volume:
    """A parsed volume: the nibabel image, its header as stored (with the on-disk data offset, which
    the image's own header copy resets) and the uncompressed bytes it was read from."""

    kind: str  # "nifti1", "nifti2" or "mgh"
    image: Any
    header: Any
    data: bytes


def _kind(data: bytes) -> str | None:
    """The volume format named by the header's magic bytes, or None."""
    if len(data) >= 348 and data[344:348] == b"n+1\x00":
        return "nifti1"
    if len(data) >= 540 and data[4:8] == b"n+2\x00":
        return "nifti2"
    if len(data) >= 284 and data[:4] == b"\x00\x00\x00\x01":
        return "mgh"
    return None


_IMAGE_CLASSES = {"nifti1": nib.Nifti1Image, "nifti2": nib.Nifti2Image, "mgh": nib.MGHImage}


def image_from_bytes(data: bytes):
    """A stored volume blob (NIfTI-1/2 or MGH, gzipped or not: checked when it was ingested) as a
    nibabel image, recognised as ``parse`` recognises it (``_kind``): a packed blob has no file."""
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    kind = _kind(raw)
    if kind is None:
        raise ValueError("not a NIfTI or MGH volume (no 'n+1' at byte 344, 'n+2' at byte 4 or MGH header)")
    return _IMAGE_CLASSES[kind].from_bytes(raw)


# A gzipped volume is expanded only as far as its header says it reaches: a stream that goes on past
# that (zeros compress a thousandfold) is refused instead of filling memory.
GZIP_HEAD_BYTES = 2**20  # expanded first; a stream that ends within it is taken whole
GZIP_SLACK_BYTES = 2**20  # allowed past the header's offset + voxel bytes (MGH scan parameters and tags)
NIFTI_MAX_BYTES = 2**32  # the largest volume expanded at all (4 GiB)


def _gunzip(raw: bytes, name: str) -> bytes:
    """The gzip stream (one or more members) expanded up to the size the volume's header declares
    plus ``GZIP_SLACK_BYTES``; past that, or past ``NIFTI_MAX_BYTES``, an IngestError."""
    out = bytearray()
    state = {"d": zlib.decompressobj(16 + zlib.MAX_WBITS), "rest": raw}

    def expand(limit: int) -> bool:
        """Expand until ``limit`` bytes are out; True when the stream is done."""
        while len(out) < limit:
            d = state["d"]
            chunk = d.decompress(state["rest"], limit - len(out))
            out.extend(chunk)
            state["rest"] = d.unconsumed_tail
            if d.eof:
                tail = d.unused_data
                if tail[:2] != b"\x1f\x8b":  # gzip's own rule: trailing bytes after the last member are ignored
                    return True
                state["d"], state["rest"] = zlib.decompressobj(16 + zlib.MAX_WBITS), tail
            elif not chunk and not state["rest"]:
                raise EOFError("the gzip stream ends before its end marker")
        return False

    try:
        if expand(GZIP_HEAD_BYTES):
            return bytes(out)
        kind = _kind(bytes(out[:540]))
        declared = None
        if kind is not None:
            try:
                header = _IMAGE_CLASSES[kind].header_class.from_fileobj(io.BytesIO(bytes(out)))
                declared = _data_span(header.get_data_shape(), header)
            except Exception:  # noqa: BLE001  the header is reported by parse, on what was expanded
                declared = None
        if declared is None:
            return bytes(out)
        limit = sum(declared) + GZIP_SLACK_BYTES
        if limit > NIFTI_MAX_BYTES:
            raise IngestError(f"{name}: the header declares {sum(declared):,} bytes (voxel data up to its end), "
                              f"over the limit of {NIFTI_MAX_BYTES:,} bytes (NIFTI_MAX_BYTES)")
        if not expand(limit + 1):
            raise IngestError(f"{name}: the gzip stream expands past {limit:,} bytes, the {sum(declared):,} its "
                              f"header declares plus {GZIP_SLACK_BYTES:,} (GZIP_SLACK_BYTES), from "
                              f"{len(raw):,} bytes on disk: not expanded further (a gzip bomb?)")
        return bytes(out)
    except (OSError, EOFError, zlib.error) as exc:
        raise IngestError(f"{name}: gzip stream does not decompress ({exc})") from exc


def parse(raw: bytes, name: str) -> Volume:
    """Decompress if needed, recognise and parse a volume; check the voxel data is all there."""
    data = raw
    if raw[:2] == b"\x1f\x8b":
        data = _gunzip(raw, name)
    kind = _kind(data)
    if kind is None:
        raise IngestError(f"{name}: no NIfTI magic ('n+1' at byte 344 or 'n+2' at byte 4) or MGH "
                          "version 1 header; expected a single-file NIfTI or MGH volume")
    try:
        image = _IMAGE_CLASSES[kind].from_bytes(data)
        header = image.header_class.from_fileobj(io.BytesIO(data))
    except Exception as exc:  # nibabel raises many kinds for bad headers
        raise IngestError(f"{name}: {kind} header does not parse ({exc.__class__.__name__}: {exc})") from exc
    if any(n <= 0 for n in image.shape):
        raise IngestError(f"{name}: the volume holds no voxels (shape {tuple(int(n) for n in image.shape)} has a "
                          "dimension of 0)")
    offset, needed = _data_span(image.shape, header)
    if kind != "mgh" and offset < header.template_dtype.itemsize:
        raise IngestError(f"{name}: the voxel data offset ({offset}) lies inside the {header.template_dtype.itemsize}-byte "
                          f"{kind} header")
    if len(data) < offset + needed:
        raise IngestError(f"{name}: truncated: expected {needed} bytes of voxel data from byte {offset}, "
                          f"the file has {max(len(data) - offset, 0)}")
    return Volume(kind, image, header, data)


def _data_span(shape: tuple[int, ...], header: Any) -> tuple[int, int]:
    """(byte offset, byte count) of the voxel data described by a stored header."""
    itemsize = np.dtype(header.get_data_dtype()).itemsize
    return int(header.get_data_offset()), int(math.prod(shape)) * itemsize


def clean_nifti(volume: Volume) -> bytes:
    """The NIfTI bytes with identifying header text cleared and header extensions blanked."""
    out = bytearray(volume.data)
    fields = volume.header.template_dtype.fields
    for name in NIFTI_TEXT_FIELDS:
        if name in fields:
            dtype, offset = fields[name][:2]
            out[offset:offset + dtype.itemsize] = bytes(dtype.itemsize)
    header_size = volume.header.template_dtype.itemsize
    vox_offset = int(volume.header.get_data_offset())
    if len(out) > header_size and out[header_size]:
        # the extension flag and every extension up to the voxel data: zeroed, the flag says "none"
        out[header_size:vox_offset] = bytes(vox_offset - header_size)
    return bytes(out)


def clean_mgh(volume: Volume) -> bytes:
    """The MGH bytes up to the scan parameters, without the trailing tags."""
    offset, needed = _data_span(volume.image.shape, volume.header)
    return volume.data[:offset + needed + MGH_PARAMS_BYTES]


def deidentified_bytes(raw: bytes, volume: Volume) -> bytes:
    """The bytes to store: cleaned, and gzip-compressed deterministically when the input was."""
    clean = clean_mgh(volume) if volume.kind == "mgh" else clean_nifti(volume)
    if raw[:2] == b"\x1f\x8b":
        return gzip.compress(clean, compresslevel=6, mtime=0)
    return raw if clean == volume.data else clean


def _blob_ext(name: str, compressed: bool) -> str:
    m = _SUFFIX_RE.search(name)
    base = m.group(1).lower() if m else "nii"
    if base in ("mgh", "mgz"):
        return ".mgz" if compressed else ".mgh"
    return ".nii.gz" if compressed else ".nii"


def volume_fields(volume: Volume) -> tuple[dict[str, Any], dict[str, Any]]:
    """(item fields, meta) of a volume. Columns run along the first axis, rows along the second and
    frames along the third; spacings are the matching voxel sizes."""
    image, header = volume.image, volume.image.header
    shape = [int(n) for n in image.shape]
    zooms = [float(z) if math.isfinite(z) else None for z in header.get_zooms()]  # NaN spacing: unknown
    dims = shape + [1] * (3 - len(shape))
    fields = {"format": "mgh" if volume.kind == "mgh" else "nifti",
              "cols": dims[0], "rows": dims[1], "frames": dims[2]}
    for key, i in (("pixel_spacing_x", 0), ("pixel_spacing_y", 1), ("slice_thickness", 2)):
        if i < len(zooms):
            fields[key] = zooms[i]
    affine = np.asarray(image.affine, dtype=float)
    meta = {"shape": shape, "zooms": zooms, "affine": affine.tolist() if np.isfinite(affine).all() else None,
            "dtype": str(np.dtype(header.get_data_dtype())), "kind": volume.kind}
    if volume.kind != "mgh":
        try:
            space, time = header.get_xyzt_units()
        except KeyError:  # unit codes the NIfTI standard does not define: kept as the numbers they are
            code = int(header["xyzt_units"])
            space, time = f"unknown code {code & 0x07}", f"unknown code {code & 0x38}"
        meta["units"] = {"space": space, "time": time}
        meta["qform_code"], meta["sform_code"] = int(header["qform_code"]), int(header["sform_code"])
    return fields, meta


def pair_kind(head: bytes) -> str | None:
    """``nifti1-pair`` or ``analyze`` for the 348-byte header of a two-file volume, else None."""
    if len(head) < 348:
        return None
    if head[:4] not in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):  # sizeof_hdr = 348, either byte order
        return None
    return "nifti1-pair" if head[344:348] == b"ni1\x00" else "analyze"


def pair_image_file(hdr: Path) -> Path | None:
    """The ``.img`` file beside a ``.hdr`` (same stem, either case, optionally gzipped)."""
    stem = volume_stem(hdr.name)
    for suffix in (".img", ".IMG", ".img.gz"):
        candidate = hdr.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def read_pair(hdr: Path) -> tuple[str, bytes, Any]:
    """A NIfTI-1 pair or Analyze 7.5 volume as (kind, single-file NIfTI-1 bytes, the nibabel image).

    The stored blob is a new ``.nii`` written from the voxels and the affine (nibabel's reading of the
    header, as a viewer shows it), so the header's free-text fields (description, aux file, database
    name) are not carried over."""
    head = (gzip.open(hdr, "rb") if hdr.name.lower().endswith(".gz") else open(hdr, "rb")).read(348)
    kind = pair_kind(head)
    if kind is None:
        raise IngestError(f"{hdr.name}: not a NIfTI-1 pair or Analyze 7.5 header (sizeof_hdr is not 348)")
    if pair_image_file(hdr) is None:
        raise IngestError(f"{hdr.name}: the image file {volume_stem(hdr.name)}.img that holds its voxels is "
                          "missing beside the header")
    try:
        image = nib.load(str(hdr))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many kinds for bad headers and short image files
        raise IngestError(f"{hdr.name}: the {kind} volume does not read ({quoted(exc)})") from None
    out = nib.Nifti1Image(data, image.affine)
    zooms = image.header.get_zooms()
    out.header.set_zooms(zooms[:len(out.shape)])
    if kind == "nifti1-pair":
        out.header.set_xyzt_units(*image.header.get_xyzt_units())
        out.header.set_qform(image.affine, int(image.header["qform_code"]) or 1)
        out.header.set_sform(image.affine, int(image.header["sform_code"]) or 1)
    return kind, out.to_bytes(), out


# Other volume formats nibabel reads: (header suffix, data file suffixes or () when one file, name).
OTHER_FORMATS = {".par": ((".rec", ".REC"), "Philips PAR/REC"), ".mnc": ((), "MINC"), ".v": ((), "ECAT 7"),
                 ".head": ((".BRIK", ".BRIK.gz", ".brik", ".brik.gz"), "AFNI BRIK/HEAD")}


def other_format(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return suffix if suffix in OTHER_FORMATS else None


def read_other(path: Path) -> tuple[str, bytes, Any]:
    """A volume nibabel reads in another format (PAR/REC, MINC, ECAT, AFNI) as (format name,
    single-file NIfTI-1 bytes, image): written from the voxels and affine, no header text carried."""
    suffix = other_format(path)
    data_suffixes, label = OTHER_FORMATS[suffix]
    stem = path.name[: -len(path.suffix)]
    if data_suffixes and not any(path.with_name(stem + s).is_file() for s in data_suffixes):
        raise IngestError(f"{path.name}: the {label} data file {stem}{data_suffixes[0]} that holds its voxels is "
                          "missing beside the header")
    try:
        image = nib.ecat.load(str(path)) if suffix == ".v" else nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many kinds
        raise IngestError(f"{path.name}: the {label} volume does not read ({quoted(exc)})") from None
    if data.dtype.kind not in "iuf":
        data = data.astype(np.float32)
    out = nib.Nifti1Image(data, image.affine)
    return label, out.to_bytes(), out


def volume_stem(name: str) -> str:
    """The file name without its volume suffix (``sub01.nii.gz`` -> ``sub01``)."""
    return _SUFFIX_RE.sub("", name)


class NiftiAdapter(Adapter):
    """NIfTI-1/2 (``.nii``, ``.nii.gz``), two-file NIfTI-1 pairs and Analyze 7.5 volumes (``.hdr`` +
    ``.img``) and MGH (``.mgh``, ``.mgz``) volumes, one VOLUME item per volume. The patient is the
    file-name prefix (option ``patient_from``); the study is the file stem."""

    name = "nifti"
    version = "2"
    option_names = ("patient_from",)
    extensions = (".nii", ".nii.gz", ".mgh", ".mgz", ".hdr", ".hdr.gz", ".par", ".mnc", ".v", ".head")
    description = "NIfTI and MGH volumes (.nii, .nii.gz, .mgh, .mgz), NIfTI-1 pairs and Analyze 7.5 (.hdr + .img)"

    def patient_rule(self, options: dict) -> str:
        return patient_rule_text(options)

    def sniff(self, path: Path, head: bytes) -> float:
        name = path.name.lower()
        if other_format(path):
            magic = head.startswith((b"CDF\x01", b"\x89HDF", b"MATRIX7")) or b"DATA DESCRIPTION FILE" in head[:400] \
                or b"type = " in head[:400]
            return 0.85 if magic else 0.0
        if name.endswith(PAIR_HEADER_SUFFIXES):
            return 0.9 if pair_kind(head) or name.endswith(".gz") else 0.0
        if _kind(head) in ("nifti1", "nifti2"):
            return 0.95
        named = name.endswith(self.extensions)
        return 0.8 if named else 0.0

    def is_companion(self, path: Path) -> bool:
        """The ``.img`` of a pair is read with its ``.hdr`` (a ``.REC`` with its ``.PAR``, a ``.BRIK``
        with its ``.HEAD``)."""
        name = path.name
        for header, (data_suffixes, _) in OTHER_FORMATS.items():
            for ds in data_suffixes:
                if name.endswith(ds):
                    stem = name[: -len(ds)]
                    if any(path.with_name(stem + h).is_file() for h in (header, header.upper())):
                        return True
        if not name.lower().endswith(PAIR_IMAGE_SUFFIXES):
            return False
        stem = volume_stem(name)
        return any(path.with_name(stem + s).is_file() for s in (".hdr", ".HDR", ".hdr.gz"))

    def units(self, path: Path, ctx: IngestContext) -> Iterator[Unit]:
        if other_format(path):
            stem = path.name[: -len(path.suffix)]
            data = [path.with_name(stem + s) for s in OTHER_FORMATS[other_format(path)][0]]
            yield Unit(path, extra={"data_sha256": [sha256_file(d) for d in data if d.is_file()]})
            return
        if path.name.lower().endswith(PAIR_HEADER_SUFFIXES):
            img = pair_image_file(path)  # the image file's bytes are part of the unit's fingerprint
            yield Unit(path, extra={"image_sha256": sha256_file(img)} if img else {})
            return
        yield Unit(path)

    def read(self, unit: Unit, ctx: IngestContext) -> Iterator[Item]:
        stem = volume_stem(unit.path.name)
        pid = ctx.patient(patient_key(unit.path, ctx.options.get("patient_from", "prefix"), stem))
        if unit.path.name.lower().endswith(PAIR_HEADER_SUFFIXES) or other_format(unit.path):
            kind, blob, image = read_pair(unit.path) if not other_format(unit.path) else read_other(unit.path)
            volume = Volume("nifti1", image, image.header, blob)
            fields, meta = volume_fields(volume)
            meta.update({"converted_from": kind, "rewritten": True})
            yield Item(
                patient_id=pid, study_id=ctx.study(pid, stem), modality=Modality.VOLUME,
                blob=gzip.compress(blob, compresslevel=6, mtime=0), blob_ext=".nii.gz",
                fields=fields, meta=meta, patient_attrs={"namespace": ctx.namespace},
            )
            return
        raw = unit.path.read_bytes()
        volume = parse(raw, unit.path.name)
        blob = raw if ctx.deid.keep_phi else deidentified_bytes(raw, volume)
        fields, meta = volume_fields(volume)
        meta["rewritten"] = blob != raw
        yield Item(
            patient_id=pid, study_id=ctx.study(pid, stem), modality=Modality.VOLUME,
            blob=blob, blob_ext=_blob_ext(unit.path.name, raw[:2] == b"\x1f\x8b"),
            fields=fields, meta=meta, patient_attrs={"namespace": ctx.namespace},
        )
