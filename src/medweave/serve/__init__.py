"""The server: REST, an OpenAI-compatible chat endpoint and the web UI, in one FastAPI app."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what the names below resolve to, imported only on first use
    from .app import create_app

__getattr__, __dir__ = lazy_exports(__name__, {
    "create_app": ".app",
})
__all__ = [
    "create_app",
]
