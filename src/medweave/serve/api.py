"""The REST routes under /api: cohort, cases, predict, explain, similar, upload + ingest, ask."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel

from ..explain import PARTS, ExplainError, explain
from .state import (ERROR_RESPONSES, ServeError, ServerState, check_type, decode_image, image_embedding, nearest, safe_filename,
                    save_within, _plain)


PARTS_PATTERN = "^(" + "|".join(PARTS) + ")?(,(" + "|".join(PARTS) + ")?)*$"


class Health(BaseModel):
    status: str
    store: Optional[str] = None
    model: Optional[str] = None
    cases: Optional[int] = None
    vqa: Optional[str] = None


class PredictRequest(BaseModel):
    case_id: str


def state_of(request: Request) -> ServerState:
    return request.app.state.medweave


def build_router() -> APIRouter:
    r = APIRouter(prefix="/api", responses=ERROR_RESPONSES)

    @r.get("/health", summary="Liveness and what is loaded")
    def health(request: Request) -> Health:
        return Health(status="ok", **state_of(request).loaded())

    @r.get("/cohort", summary="Cases, splits, presence per modality, targets")
    def cohort(request: Request) -> dict[str, Any]:
        ctx = state_of(request).model()
        s = ctx.cohort.summary()
        return {"cases": s["cases"], "splits": s["splits"], "targets": s["targets"], "modalities": ctx.modalities,
                "present": {m: int(ctx.dataset.mask[:, j].sum()) for j, m in enumerate(ctx.modalities)},
                "model": {"kind": ctx.model.kind, "head": ctx.head.name}}

    @r.get("/cases", summary="List cases (paged)")
    def cases(request: Request, split: Optional[str] = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        ctx = state_of(request).model()
        tab = ctx.cohort.table
        idx = np.flatnonzero(tab["split"].to_numpy() == split) if split else np.arange(len(tab))
        page = idx[max(0, offset):max(0, offset) + min(max(limit, 1), 500)]
        return {"total": int(len(idx)), "offset": offset, "cases": [case_row(ctx, int(i)) for i in page]}

    @r.get("/cases/{case_id}", summary="One case: modalities, report text, labs, images, signals")
    def case(request: Request, case_id: str) -> dict[str, Any]:
        return case_detail(state_of(request), case_id)

    @r.post("/predict", summary="Predict one case (every head; per-step for sequential models)")
    def predict(request: Request, body: PredictRequest) -> dict[str, Any]:
        return state_of(request).model().predict(body.case_id)

    @r.get("/cases/{case_id}/explain", summary="Explain one case (parts: modalities, tabular, image, text)")
    def explain_case(request: Request, case_id: str,
                     parts: str = Query("modalities,tabular,image,text", pattern=PARTS_PATTERN,
                                        description="comma-separated: " + ", ".join(PARTS)),
                     fast: Optional[str] = Query(None, description="present: image saliency by occlusion only "
                                                 "(no integrated gradients)")) -> dict[str, Any]:
        wanted = [p for p in parts.split(",") if p]
        return explain(state_of(request).model(), case_id, parts=wanted or PARTS, image_methods=("occlusion",)
                       if fast is not None else ("integrated_gradients", "occlusion"))

    @r.get("/cases/{case_id}/similar", summary="Cases with the closest embedding of one modality")
    def similar(request: Request, case_id: str, modality: str = "image", k: int = 5) -> dict[str, Any]:
        ctx = state_of(request).model()
        j = ctx.modalities.index(modality) if modality in ctx.modalities else None
        row = ctx.row(case_id)
        if j is None or not ctx.dataset.mask[row, j]:
            raise ServeError(404, f"case {case_id!r} has no {modality} to compare")
        return {"case_id": case_id, "modality": modality,
                "similar": state_of(request).with_reports(
                    nearest(ctx, ctx.dataset.inputs[modality][row], modality, k, exclude=case_id))}

    @r.post("/similar", summary="Cases whose image is closest to an uploaded image")
    async def similar_image(request: Request, image: UploadFile = File(...), k: int = Form(5)) -> dict[str, Any]:
        st = state_of(request)
        ctx = st.model()
        arr = decode_image(await read_limited(image, st.max_upload_bytes))
        return {"similar": st.with_reports(nearest(ctx, image_embedding(arr, ctx), "image", k))}

    @r.post("/upload", summary="Upload files and ingest them into the store (size limit, type check)")
    async def upload(request: Request, files: List[UploadFile] = File(..., min_length=1)) -> dict[str, Any]:
        st = state_of(request)
        folder = st.upload_dir()
        try:
            for f in files:
                name = safe_filename(f.filename)
                data = await read_limited(f, st.max_upload_bytes)
                check_type(name, data[:132])
                save_within(folder, name, data)
        except ServeError:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            raise
        return st.ingest_folder(folder)

    @r.post("/ask", summary="Ask a question about an image (VQA model), with similar cases")
    async def ask(request: Request, question: str = Form(..., pattern=r"\S", description="the question (not blank)"),
                  image: Optional[UploadFile] = File(None),
                  k: int = Form(5)) -> dict[str, Any]:
        st = state_of(request)
        if not question.strip():
            raise ServeError(400, "the question is empty")
        data = await read_limited(image, st.max_upload_bytes) if image is not None else None
        picture = None
        if data is not None:
            from ..generate import ImageData
            from ..generate.messages import sniff_mime

            decode_image(data)  # a clear 415 for anything that is not a picture
            picture = ImageData(data, sniff_mime(data) or "application/octet-stream")
        result = answer_question(st, picture, question)
        similar = []
        if data is not None and st.ctx is not None and "image" in st.ctx.modalities:
            similar = st.with_reports(nearest(st.ctx, image_embedding(decode_image(data), st.ctx), "image", k))
        return {**result, "question": question, "similar": similar}

    @r.post("/transcribe", summary="Transcribe a spoken question (Whisper tiny.en, offline)")
    async def transcribe_audio(request: Request, audio: UploadFile = File(...)) -> dict[str, Any]:
        st = state_of(request)
        data = await read_limited(audio, st.max_upload_bytes)
        cases = getattr(getattr(st.answerer, "model", None), "cases", None) or []
        return transcribe_bytes(data, audio.filename or "question.wav", [c["question"] for c in cases])

    @r.get("/items/{item_id}/image.png", summary="An image item as PNG (windowed, 8 bit)", response_class=Response,
           responses={200: {"content": {"image/png": {}}, "description": "The picture"}})
    def item_image(request: Request, item_id: str) -> Response:
        return Response(image_png(state_of(request), item_id), media_type="image/png")

    @r.get("/items/{item_id}/signal.png", summary="A signal item plotted (first 5 s of every lead)",
           response_class=Response, responses={200: {"content": {"image/png": {}}, "description": "The plot"}})
    def item_signal(request: Request, item_id: str) -> Response:
        return Response(signal_png(state_of(request), item_id), media_type="image/png")

    return r


async def read_limited(upload: UploadFile, limit: int) -> bytes:
    """The whole upload, or a 413 error as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"file too large: the limit is {limit // (1024 * 1024)} MiB per file",
                             "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def transcribe_bytes(data: bytes, filename: str, questions: list[str] | None = None) -> dict[str, str]:
    """Speech to text with the VQA package's Whisper (WAV, WebM/Opus, OGG, MP3: decoded by PyAV): ``heard``,
    the transcript, and ``text``, the question it is read as against the VQA model's training ``questions``
    (``read_question``; the transcript itself without a model)."""
    import tempfile

    from ..vqa.speech import read_question, transcribe

    suffix = Path(filename).suffix.lower()
    if suffix not in (".wav", ".webm", ".ogg", ".mp3", ".m4a", ".flac"):
        raise ServeError(415, f"audio {filename!r}: expected .wav, .webm, .ogg, .mp3, .m4a or .flac")
    with tempfile.NamedTemporaryFile(suffix=suffix) as fh:
        fh.write(data)
        fh.flush()
        try:
            text = transcribe(fh.name)
        except Exception as exc:  # undecodable audio is the client's problem, said plainly
            raise ServeError(400, f"audio {filename!r} could not be transcribed: {type(exc).__name__}") from None
    return {"text": read_question(text, questions or []), "heard": text}


def answer_question(st: ServerState, image, question: str) -> dict[str, Any]:
    """The VQA model's answer (``image``: ``ImageData`` or None), or a 503 naming why there is none."""
    if st.answerer is None:
        raise ServeError(503, st.vqa_error, "vqa_unavailable")
    from ..generate import BackendError

    try:
        out = st.answerer.answer(image, question)
    except BackendError as exc:
        raise ServeError(415 if "decoded" in str(exc) else 400, str(exc)) from None
    return {"answer": out["answer"], "confidence": out["probability"], "type": out["type"],
            "model": st.answerer.name, "abstained": out["abstained"],
            **({"reason": out["reason"]} if out["abstained"] else {}), "picture_gate": out["picture_gate"]}


def case_row(ctx, i: int) -> dict[str, Any]:
    row = ctx.cohort.table.iloc[i]
    return {"case_id": ctx.dataset.case_ids[i], "split": str(row["split"]),
            "present": [m for j, m in enumerate(ctx.modalities) if ctx.dataset.mask[i, j]],
            "targets": {t: _plain(row[t]) for t in ctx.cohort.targets}}


def case_detail(st: ServerState, case_id: str) -> dict[str, Any]:
    """What the case page shows. Only de-identified store content: no names, no source paths."""
    from ..store.catalog import read_verified

    ctx = st.model()
    out = case_row(ctx, ctx.row(case_id))
    row = ctx.cohort.table.iloc[ctx.row(case_id)]
    out["covariates"] = {c: _plain(row[c]) for c in ctx.cohort.covariates}
    ids = {m: list(row[f"{m}_items"]) for m in ctx.cohort.modalities}
    out["images"] = [{"item_id": i, "url": f"/api/items/{i}/image.png"} for i in ids.get("image", [])]
    out["signals"] = [{"item_id": i, "url": f"/api/items/{i}/signal.png"} for i in ids.get("signal", [])]
    texts = st.query("SELECT item_id, text, blob FROM items WHERE item_id IN (SELECT unnest(?)) ORDER BY item_id",
                     [ids.get("text", [])]) if ids.get("text") else []
    out["reports"] = [{"item_id": t["item_id"], "text": t["text"]
                       or read_verified(st.store_dir, t["blob"], t["item_id"], "text").decode("utf-8")}
                      for t in texts]
    labs = st.query("SELECT code, value_num, value_text, unit, time FROM items WHERE item_id IN (SELECT unnest(?)) "
                    "AND code IS NOT NULL ORDER BY code, time", [ids.get("table", [])]) if ids.get("table") else []
    out["labs"] = [{"code": r["code"], "value": _plain(r["value_num"]) if r["value_num"] is not None
                    and not (isinstance(r["value_num"], float) and np.isnan(r["value_num"])) else r["value_text"],
                    "unit": r["unit"]} for r in labs]
    return out


def image_png(st: ServerState, item_id: str) -> bytes:
    from PIL import Image
    import io

    from ..encode.image import middle_slice, window_to_uint8
    from ..encode.loaders import load_item

    arr = load_item(st.store_dir, st.item(item_id, "image"))
    buf = io.BytesIO()
    Image.fromarray(window_to_uint8(middle_slice(arr))).save(buf, format="PNG")
    return buf.getvalue()


def signal_png(st: ServerState, item_id: str) -> bytes:
    from ..encode.loaders import load_item
    from ..report.plots import signal_plot

    row = st.item(item_id, "signal")
    sig = load_item(st.store_dir, row)
    names = (row.get("channel_names") or "").split(",") if row.get("channel_names") else []
    return signal_plot(sig.data, sig.rate, names)


__all__ = ["build_router", "ExplainError"]
