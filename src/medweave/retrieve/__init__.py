"""Vector indexes over embeddings (FAISS) and similar-case search."""

from .index import Index, precision_at_k

__all__ = ["Index", "precision_at_k"]
