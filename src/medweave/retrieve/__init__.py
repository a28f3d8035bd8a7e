"""Vector indexes over embeddings (FAISS) and similar-case search."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what the names below resolve to, imported only on first use
    from .index import Index, precision_at_k

__getattr__, __dir__ = lazy_exports(__name__, {
    "Index": ".index", "precision_at_k": ".index",
})
__all__ = [
    "Index", "precision_at_k",
]
