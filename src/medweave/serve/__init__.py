"""The server: REST, an OpenAI-compatible chat endpoint and the web UI, in one FastAPI app."""

from .app import create_app

__all__ = ["create_app"]
