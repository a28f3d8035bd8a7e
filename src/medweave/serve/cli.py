"""``medweave serve``: the REST API, the OpenAI-compatible endpoint and the web UI on one port."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..settings import is_loopback

EPILOG = ("Example: medweave serve --store demo-out/store --model demo-out/models/sequential "
          "--host 127.0.0.1 --port 8000;  medweave serve --vqa-model runs/vqa --port 8000  (a VQA model alone: "
          "OpenAI-compatible /v1/chat/completions)")


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen on a non-loopback address without an API token."""
    if not is_loopback(host) and not token:
        raise ValueError(f"refusing to listen on {host}: any address other than loopback needs an API token "
                         "(--token or $MEDWEAVE_API_TOKEN); clients then send 'Authorization: Bearer <token>'")


def serve_command(
    store: Optional[Path] = typer.Option(None, "--store", help="Store folder (cases, uploads are ingested here)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Fusion model folder from `medweave train` "
                                         "(its own store unless --store)."),
    vqa_model: Optional[Path] = typer.Option(None, "--vqa-model", help="VQA model folder (ask, /v1/chat/completions)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="Port."),
    token: Optional[str] = typer.Option(None, "--token", help="API token (default: $MEDWEAVE_API_TOKEN); "
                                        "required for any non-loopback --host."),
    max_upload_mb: int = typer.Option(20, "--max-upload-mb", help="Size limit per uploaded file."),
    rate_limit: float = typer.Option(20.0, "--rate-limit", help="Requests per second per client address "
                                     "(bursts of twice that; then 429); 0: no limit. Loopback clients are exempt."),
    rate_limit_loopback: bool = typer.Option(False, "--rate-limit-loopback", help="Rate-limit loopback clients too "
                                             "(a load test; a reverse proxy on this machine, whose clients all "
                                             "come from loopback, shares one limit)."),
) -> None:
    """Serve any combination of a store, a fusion model and a VQA model (at least one): REST with OpenAPI
    docs (/docs), OpenAI-compatible /v1/chat/completions, and the web UI (/)."""
    import uvicorn
    from rich.console import Console

    from .app import create_app

    token = token or os.environ.get("MEDWEAVE_API_TOKEN") or None
    err = Console(stderr=True)
    try:
        check_exposure(host, token)
        app = create_app(store, model, vqa_model, token=token, max_upload_bytes=max_upload_mb * 1024 * 1024,
                         rate_limit=rate_limit, rate_limit_loopback=rate_limit_loopback)
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    loaded = ", ".join(f"{k} {v}" for k, v in app.state.medweave.loaded().items() if v is not None)
    err.print(f"medweave serving on http://{host}:{port}/ (API docs: /docs): {loaded}", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="info")
