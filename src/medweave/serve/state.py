"""What the server holds — any of: a store (opened per request, under a lock), a fusion model with its
cohort, a VQA answerer (the ``builtin`` generation backend) — and the helpers the routes share
(uploads, image decoding, similarity). A route that needs a part the server was not started with
answers 503 naming the option that provides it."""

from __future__ import annotations

import io
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pydantic import BaseModel

from ..cohort import is_missing
from ..explain import ModelContext
from ..store import Store

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
ALLOWED_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".txt", ".csv", ".tsv", ".json", ".xml",
                    ".nii", ".nii.gz", ".hea", ".dat")
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"II*\x00": "tiff", b"MM\x00*": "tiff"}


class ServeError(Exception):
    """An error a route turns into a JSON response with ``status`` and a clear ``message``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    """Every error the server sends (the OpenAI error shape)."""

    error: ErrorDetail


# The error responses every route may give, in the OpenAPI document (FastAPI's default 422 schema,
# ``{"detail": [...]}``, is not what the server sends: ``install_error_handlers`` turns it into this).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {status: {"model": ErrorBody, "description": text} for status, text in {
    400: "Bad request: the message says what is wrong",
    401: "Missing or wrong API token (when the server has one)",
    404: "No such case, item or route",
    413: "Request body or upload too large",
    415: "Not a file type this route reads",
    422: "Invalid request: the message names each field and what is wrong with it",
    429: "Too many requests from this client (Retry-After says when to retry)",
    503: "The model this route needs is not loaded",
}.items()}


@dataclass
class ServerState:
    store_dir: Path | None = None
    model_dir: Path | None = None
    ctx: ModelContext | None = None
    answerer: Any = None  # a ``medweave.generate.builtin.BuiltinBackend``
    vqa_error: str = "no VQA model loaded: start the server with --vqa-model DIR"
    token: str | None = None
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    lock: threading.RLock = field(default_factory=threading.RLock)

    def model(self) -> ModelContext:
        """The fusion model and its cohort, or a 503 saying how to load one."""
        if self.ctx is None:
            raise ServeError(503, "no fusion model loaded: start the server with --model DIR (cases, predict, "
                             "explain, similar need one)", "model_unavailable")
        return self.ctx

    def store(self) -> Path:
        if self.store_dir is None:
            raise ServeError(503, "no store: start the server with --store DIR (uploads are ingested into it)",
                             "store_unavailable")
        return self.store_dir

    def loaded(self) -> dict[str, Any]:
        return {"store": str(self.store_dir) if self.store_dir else None,
                "model": self.ctx.model.kind if self.ctx is not None else None,
                "cases": len(self.ctx.dataset) if self.ctx is not None else None,
                "vqa": self.answerer.name if self.answerer is not None else None}

    # --- store access ---------------------------------------------------------------------------
    def query(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        """Rows of a read-only query on the store (one connection per call, serialised by the lock)."""
        with self.lock, Store(self.store()) as st:
            return st.con.execute(sql, params).df().to_dict("records")

    def item(self, item_id: str, modality: str) -> dict[str, Any]:
        rows = self.query("SELECT * EXCLUDE (labels, meta) FROM items WHERE item_id = ? AND modality = ?",
                          [item_id, modality])
        if not rows:
            raise ServeError(404, f"no {modality} item {item_id!r} in the store")
        return rows[0]

    def with_reports(self, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Similar-case hits with each case's report(s): findings and impression (or the text), from the
        store (already de-identified), so the similar-case panel shows what the cases say."""
        import json

        from ..retrieve.kb import report_sections

        ctx = self.model()
        ids = {h["case_id"]: ctx.items_of(h["case_id"], "text") if "text" in ctx.modalities else [] for h in hits}
        wanted = sorted({i for v in ids.values() for i in v})
        rows = {r["item_id"]: r for r in self.query(
            "SELECT item_id, text, meta FROM items WHERE item_id IN (SELECT unnest(?))", [wanted])} if wanted else {}
        out = []
        for h in hits:
            reports = []
            for i in ids[h["case_id"]]:
                r = rows.get(i)
                if r is None:
                    continue
                meta = json.loads(r["meta"]) if isinstance(r["meta"], str) else (r["meta"] or {})
                sec = report_sections(r["text"] or "", (meta or {}).get("sections"))
                reports.append({"item_id": i, "findings": sec.get("FINDINGS"), "impression": sec.get("IMPRESSION"),
                                "text": None if sec.get("FINDINGS") or sec.get("IMPRESSION") else (r["text"] or "")[:600]})
            out.append({**h, "reports": reports})
        return out

    def reload(self) -> None:
        """Rebuild the cohort (after an ingest): new cases become visible."""
        if self.model_dir is None:
            return
        with self.lock:
            self.ctx = ModelContext.load(self.model_dir, store_dir=self.store_dir)

    # --- uploads --------------------------------------------------------------------------------
    def upload_dir(self) -> Path:
        path = (self.store() / "uploads" / uuid.uuid4().hex).resolve()
        path.mkdir(parents=True)
        return path

    def ingest_folder(self, folder: Path) -> dict[str, Any]:
        """Ingest an upload folder into the store, reload the cohort, delete the folder. The report
        names files by their position only (file names can carry identifiers)."""
        from ..ingest import ingest

        names = sorted(p.name for p in folder.iterdir())
        try:
            with self.lock:
                with Store(self.store_dir, write=True) as st:
                    report = ingest([folder], st, progress=False, args="serve upload")
                self.reload()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        errors = [{"file": _position(names, p), "reason": _strip_paths(r, folder)} for p, r in report.errors]
        skipped = [{"file": _position(names, p), "reason": r} for p, r in report.skipped]
        return {"ingested": report.n_ok, "skipped_already_stored": report.n_already,
                "skipped_not_data": skipped, "failed": report.n_failed,
                "items_added": report.n_items_added, "per_adapter": report.per_adapter, "errors": errors,
                "cases": len(self.ctx.dataset) if self.ctx is not None else None}


def build_state(store: str | Path | None = None, model_dir: str | Path | None = None,
                vqa_model_dir: str | Path | None = None, token: str | None = None) -> ServerState:
    """The state for any combination of a store, a fusion model (with the store it was trained on, or
    ``store``) and a VQA model, at least one: what the server and the agent tools (``medweave mcp``)
    hold. A part that cannot be loaded is a ``ValueError`` / ``FileNotFoundError`` naming it."""
    from ..generate import BackendError
    from ..generate.builtin import BuiltinBackend

    if store is None and model_dir is None and vqa_model_dir is None:
        raise ValueError("nothing to serve: give at least one of --store DIR, --model DIR, --vqa-model DIR")
    store = Path(store) if store is not None else None
    if store is not None and not (store / "catalog.duckdb").is_file():
        raise FileNotFoundError(f"{store}: not a medweave store (no catalog.duckdb); create one with "
                                "`medweave ingest PATH --store DIR`")
    state = ServerState(store, Path(model_dir) if model_dir is not None else None, token=token)
    if model_dir is not None:
        state.ctx = ModelContext.load(model_dir, store_dir=store)
        state.store_dir = state.ctx.store_dir
    if vqa_model_dir is not None:
        try:
            state.answerer = BuiltinBackend(model=Path(vqa_model_dir))
        except BackendError as exc:
            raise ValueError(f"--vqa-model: {exc}") from None
    return state


def _position(names: list[str], path: str) -> str:
    name = PurePosixPath(str(path).replace("\\", "/")).name
    return f"file {names.index(name) + 1}" if name in names else "a file"


def _strip_paths(reason: str, folder: Path) -> str:
    return reason.replace(str(folder), "<upload>")


def safe_filename(name: str | None) -> str:
    """The last component of an uploaded file name, reduced to [A-Za-z0-9._-]; never '', '.' or '..'."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    if not base:
        raise ServeError(400, f"invalid file name {name!r}: give the file a name such as scan.dcm")
    return base[:120]


def check_type(name: str, head: bytes) -> None:
    """Allowed suffix, and for pictures/DICOM the matching magic bytes."""
    low = name.lower()
    if not low.endswith(ALLOWED_SUFFIXES):
        raise ServeError(415, f"file type of {name!r} is not accepted; allowed: {', '.join(ALLOWED_SUFFIXES)}",
                         "unsupported_media_type")
    kind = sniff_image(head)
    if low.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")) and kind is None:
        raise ServeError(415, f"{name!r}: the content is not the image its suffix says (no PNG/JPEG/TIFF/DICOM "
                         "signature)", "unsupported_media_type")


def sniff_image(head: bytes) -> str | None:
    """'png', 'jpeg', 'tiff', 'dicom' from the first bytes, or None."""
    if head[128:132] == b"DICM":
        return "dicom"
    for magic, kind in IMAGE_MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def save_within(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``folder/name``; refuses any path that would land outside ``folder``."""
    dest = (folder / name).resolve()
    if not dest.is_relative_to(folder.resolve()) or dest.parent != folder.resolve():
        raise ServeError(400, f"invalid file name {name!r}: uploads are written inside the store only")
    dest.write_bytes(data)
    return dest


def decode_image(data: bytes) -> np.ndarray:
    """An uploaded or data-URL image (PNG/JPEG/TIFF/DICOM) as a float32 array."""
    from PIL import Image, UnidentifiedImageError

    from ..encode.loaders import _dicom_pixels

    kind = sniff_image(data[:132])
    if kind is None:
        raise ServeError(415, "the image is not PNG, JPEG, TIFF or DICOM", "unsupported_media_type")
    if kind == "dicom":
        return _dicom_pixels(data)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L" if im.mode in ("L", "LA", "P", "1", "I;16", "I") else "RGB"),
                              dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise ServeError(415, f"the image cannot be decoded: {exc}", "unsupported_media_type") from None


def image_embedding(arr: np.ndarray, ctx: ModelContext | None = None) -> np.ndarray:
    """The embedding of one image by the model's image encoder (``ctx``: its fine-tuned one when it
    has one, so that uploads compare with the cases' own vectors), else EfficientNet-Lite0."""
    if ctx is not None:
        return ctx.image_encoder().encode([arr])[0]
    from ..encode.image import features, to_input

    return features(to_input(arr)[None])[0]


def nearest(ctx: ModelContext | None, query: np.ndarray, modality: str = "image", k: int = 5,
            exclude: str | None = None) -> list[dict[str, Any]]:
    """The k cases whose ``modality`` embedding is closest (cosine) to ``query``."""
    if ctx is None:
        raise ServeError(503, "no fusion model loaded: start the server with --model DIR to compare cases",
                         "model_unavailable")
    if modality not in ctx.modalities:
        raise ServeError(404, f"the model has no {modality} modality; modalities: {', '.join(ctx.modalities)}")
    j = ctx.modalities.index(modality)
    present = np.flatnonzero(ctx.dataset.mask[:, j])
    emb = np.nan_to_num(ctx.dataset.inputs[modality][present].astype(np.float64))
    q = np.asarray(query, dtype=np.float64)
    sims = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q) + 1e-12)
    out = []
    for i in np.argsort(-sims):
        cid = ctx.dataset.case_ids[present[i]]
        if cid == exclude:
            continue
        row = ctx.cohort.table.iloc[present[i]]
        out.append({"case_id": cid, "similarity": float(sims[i]), "split": str(row["split"]),
                    "targets": {t: _plain(row[t]) for t in ctx.cohort.targets}})
        if len(out) >= k:
            break
    return out


def _plain(v: Any) -> Any:
    if is_missing(v):
        return None
    return v.item() if hasattr(v, "item") else v
