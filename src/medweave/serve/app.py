"""``create_app(store=None, model_dir=None, vqa_model_dir=None, token=None)``: the FastAPI application,
with any combination of a store, a fusion model and a VQA model (at least one).

REST under ``/api`` (OpenAPI docs at ``/docs``), the OpenAI-compatible ``/v1``, and the web UI
(``/``, ``/case/{id}``, ``/ask``) from static files in this package. With a ``token``, every ``/api``
and ``/v1`` request must carry ``Authorization: Bearer <token>``. Errors are JSON:
``{"error": {"message", "type", "code"}}`` (the OpenAI error shape, for every route).
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..explain import ExplainError
from .state import ServeError, build_state

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("medweave.serve")


def error_response(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes JSON with a clear message (never an HTML page or a bare trace)."""

    @app.exception_handler(ServeError)
    async def _serve(request: Request, exc: ServeError):
        return error_response(exc.status, exc.message, exc.kind)

    @app.exception_handler(ExplainError)
    async def _explain(request: Request, exc: ExplainError):
        return error_response(404 if str(exc).startswith("unknown case") else 400, str(exc), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error_response(422, "invalid request: " + "; ".join(parts), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = "not found: see /docs for the routes" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, message, "invalid_request_error")

    @app.exception_handler(Exception)
    async def _other(request: Request, exc: Exception):
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log", "server_error")


def install_auth(app: FastAPI, token: str | None) -> None:
    """Bearer-token check for /api and /v1 when a token is set (constant-time comparison)."""
    if not token:
        return
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if request.url.path.startswith(("/api/", "/v1/")):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error_response(401, "missing or wrong API token: send 'Authorization: Bearer <token>'",
                                      "authentication_error")
        return await call_next(request)


def install_ui(app: FastAPI) -> None:
    """The web UI: three pages and their script/style, no build step."""
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/case/{case_id}", include_in_schema=False)
    def case_page(case_id: str):
        return FileResponse(STATIC / "case.html")

    @app.get("/ask", include_in_schema=False)
    def ask_page():
        return FileResponse(STATIC / "ask.html")


def create_app(store: str | Path | None = None, model_dir: str | Path | None = None,
               vqa_model_dir: str | Path | None = None, token: str | None = None,
               max_upload_bytes: int | None = None) -> FastAPI:
    """The application for whatever it is given: a store, a fusion model (with the store it was trained
    on, or ``store``), a VQA model (``medweave vqa train``), any combination, at least one.

    A part that cannot be loaded is a ``ValueError`` / ``FileNotFoundError`` naming it."""
    from .api import build_router
    from .openai_compat import build_router as build_v1

    state = build_state(store, model_dir, vqa_model_dir, token=token)
    if max_upload_bytes:
        state.max_upload_bytes = max_upload_bytes
    app = FastAPI(title="medweave", version="0.1",
                  description="Multimodal medical AI on a CPU: cases, predictions, explanations, VQA.")
    app.state.medweave = state
    install_error_handlers(app)
    install_auth(app, token)
    app.include_router(build_router())
    app.include_router(build_v1())
    install_ui(app)
    return app
