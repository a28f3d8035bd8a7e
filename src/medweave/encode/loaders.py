"""Load an item's content from the store into what encoders take: a 2D array, a 3D array, a string,
a (channels x samples) signal with its rate."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np


@dataclass
class Signal:
    data: np.ndarray  # (channels, samples) float32
    rate: float


def _dicom_pixels(data: bytes) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    arr = arr * slope + intercept
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = arr.max() - arr
    return arr


def load_array(path: Path, data: bytes | None = None) -> np.ndarray:
    """Pixels/voxels of an image or volume blob as float32 (grayscale, or H x W x 3 for colour).
    ``data``: the file's bytes when already read (and checked against the blob's hash); a blob in a
    pack has no file of its own, so the store's readers always pass them (``path`` gives the suffix)."""
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix.lower()
    if suffix == ".npy":
        return np.load(io.BytesIO(data) if data is not None else path).astype(np.float32)
    if suffix == ".dcm":
        return _dicom_pixels(data if data is not None else path.read_bytes())
    if suffix in (".nii", ".nii.gz", ".mgh", ".mgz"):
        from ..ingest.adapters.nifti import image_from_bytes

        return np.asarray(image_from_bytes(data if data is not None else path.read_bytes()).get_fdata(),
                          dtype=np.float32)
    from PIL import Image

    with Image.open(io.BytesIO(data) if data is not None else path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I", "F"):
            return np.asarray(im, dtype=np.float32)
        return np.asarray(im.convert("L" if im.mode in ("L", "LA", "P", "1") else "RGB"), dtype=np.float32)


def load_signal(path: Path, row: Mapping[str, Any], raw: bytes | None = None) -> Signal:
    data = np.load(io.BytesIO(raw) if raw is not None else path)
    if isinstance(data, np.lib.npyio.NpzFile):
        data = data["signal"]
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        data = data[None, :]
    return Signal(data=data, rate=float(row.get("sampling_rate") or 0.0))


# The columns of an item row that ``load_item`` (and the encoding around it) reads.
LOAD_COLUMNS = ("item_id", "content_hash", "modality", "blob", "text", "sampling_rate")


def load_item(store_root: Path, row: Mapping[str, Any]) -> Any:
    """What an encoder of the item's modality takes. ``row`` is a row of the items table (at least
    its ``LOAD_COLUMNS``).

    A blob is checked against its hash as it is read: a damaged one raises ``BlobIntegrityError``
    naming the item (never decoded into wrong pixels, samples or words)."""
    from ..store.catalog import read_verified

    modality = row["modality"]
    if modality in ("text", "qa"):
        text = row.get("text")
        if text is None and row.get("blob"):
            text = read_verified(store_root, row["blob"], row.get("item_id"), modality).decode("utf-8")
        return text or ""
    if not row.get("blob"):
        raise ValueError(f"item {row['item_id']} ({modality}) has no blob to load")
    path = store_root / row["blob"]
    data = read_verified(store_root, row["blob"], row.get("item_id"), modality)
    if modality == "signal":
        return load_signal(path, row, data)
    return load_array(path, data)
