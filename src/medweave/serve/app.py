"""``create_app(store=None, model_dir=None, vqa_model_dir=None, token=None)``: the FastAPI application,
with any combination of a store, a fusion model and a VQA model (at least one).

REST under ``/api`` (OpenAPI docs at ``/docs``), the OpenAI-compatible ``/v1``, and the web UI
(``/``, ``/case/{id}``, ``/ask``) from static files in this package. With a ``token``, every ``/api``
and ``/v1`` request must carry ``Authorization: Bearer <token>``. Errors are JSON:
``{"error": {"message", "type", "code"}}`` (the OpenAI error shape, for every route).

Limits (``Limits``, an ASGI middleware in front of everything): a request body larger than
``max_body_bytes`` is refused with 413 (by its Content-Length before it is read, or as soon as a
chunked body passes the limit), and each client address may send ``rate_limit`` requests per second
(bursts of twice that) before it gets 429 with Retry-After. Loopback clients are exempt from the rate
limit unless ``rate_limit_loopback``: they are processes of the machine's own users.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
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


def error_response(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


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
        if exc.status_code == 405:  # with the Allow header Starlette sets (RFC 9110)
            message = f"method {request.method} not allowed here; allowed: {(exc.headers or {}).get('Allow', '?')}"
        return error_response(exc.status_code, message, "invalid_request_error", getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _other(request: Request, exc: Exception):
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log", "server_error")


class _BodyTooLarge(StarletteHTTPException):
    pass


class Limits:
    """Request-body size limit and a per-client token-bucket rate limit (pure ASGI: it sees the body
    chunks as they arrive, so a large body is refused before it is held in memory)."""

    def __init__(self, app, max_body_bytes: int, rate_limit: float = 0.0, rate_limit_loopback: bool = False):
        self.app = app
        self.max_body = int(max_body_bytes)
        self.rate = float(rate_limit or 0.0)
        self.burst = max(1.0, 2 * self.rate)
        self.loopback = rate_limit_loopback
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)
        self._lock = threading.Lock()

    @staticmethod
    async def _reply(send, status: int, message: str, kind: str, headers: list | None = None) -> None:
        body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    def _wait(self, client: str) -> float:
        """0 when the client may go on (a token taken), else the seconds until its next token."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                if len(self._buckets) > 10000:  # forget idle clients
                    self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from ..settings import is_loopback

        client = (scope.get("client") or ("unknown", 0))[0]
        if self.rate > 0 and (self.loopback or not is_loopback(client)):
            wait = self._wait(client)
            if wait > 0:
                return await self._reply(send, 429, f"too many requests: the limit is {self.rate:g} per second "
                                         f"per client; retry in {wait:.1f} s", "rate_limit_error",
                                         [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
        too_large = (f"request body too large: the limit is {self.max_body:,} bytes "
                     f"({self.max_body / 2**20:.0f} MiB)")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await self._reply(send, 400, f"invalid Content-Length {length[:40]!r}", "invalid_request_error")
            if declared > self.max_body:
                return await self._reply(send, 413, too_large, "invalid_request_error")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge(413, too_large)
            return message

        await self.app(scope, limited, send)


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
               max_upload_bytes: int | None = None, max_body_bytes: int | None = None,
               rate_limit: float = 20.0, rate_limit_loopback: bool = False) -> FastAPI:
    """The application for whatever it is given: a store, a fusion model (with the store it was trained
    on, or ``store``), a VQA model (``medweave vqa train``), any combination, at least one.
    ``max_body_bytes`` (default: twice the upload limit plus 1 MiB) and ``rate_limit`` (requests per
    second per client, 0 = none) are the ``Limits`` above.

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
    app.add_middleware(Limits, max_body_bytes=max_body_bytes or 2 * state.max_upload_bytes + 2**20,
                       rate_limit=rate_limit, rate_limit_loopback=rate_limit_loopback)
    return app
