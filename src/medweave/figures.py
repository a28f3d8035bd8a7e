"""matplotlib for every figure medweave draws (report plots, saliency overlays, leaderboards), safe
under threads.

The web server draws figures in its request threads (a case page asks for several saliency overlays
at once, and signal plots), and pyplot is imported lazily there. Neither is safe in parallel: a first
``import matplotlib.pyplot`` racing another thread's can hand one of them a partly initialised module
(once seen as a circular-import error in the server), and pyplot's figure registry and backend
switch are process-wide state. So every figure is made through ``subplots`` here: under one
process-wide lock, the Agg backend is chosen before pyplot is imported, the figure is created, drawn,
saved and closed, and only then does another thread get its turn. Drawing is serialised (a few
tens of milliseconds a figure); the figures are small.

captum imports pyplot itself (``captum.attr`` imports its visualisation module, which imports
``matplotlib.cm``, ``colors`` and ``pyplot`` in another order than pyplot's own imports): two threads
importing the same modules in different orders is what lets Python hand one of them a partly
initialised module. So captum is imported through ``import_after_pyplot`` too, under the same lock,
after pyplot: its matplotlib imports then find complete modules.
"""

from __future__ import annotations

import importlib
import io
import threading
from contextlib import contextmanager
from typing import Any, Iterator

_LOCK = threading.RLock()  # re-entrant: a figure drawn while another is (``to_png`` inside ``subplots``)


def _pyplot():
    """matplotlib.pyplot with the Agg backend (the caller holds ``_LOCK``)."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot is imported; a no-op once Agg is the backend
    import matplotlib.pyplot as plt

    return plt


def import_after_pyplot(name: str) -> Any:
    """``importlib.import_module(name)`` for a library that imports pyplot itself (``captum.attr``):
    under the figure lock, after pyplot was imported with Agg."""
    with _LOCK:
        _pyplot()
        return importlib.import_module(name)


@contextmanager
def subplots(*args: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``(figure, axes)`` of ``plt.subplots(*args, **kwargs)``, held under the figure lock until the
    block ends; the figure is closed then (also when drawing failed). Save it inside the block
    (``to_png``)."""
    with _LOCK:
        plt = _pyplot()
        fig, axes = plt.subplots(*args, **kwargs)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def to_png(fig: Any, **savefig: Any) -> bytes:
    """The figure as PNG bytes (``savefig``'s options: ``bbox_inches`` "tight" by default)."""
    buf = io.BytesIO()
    with _LOCK:
        fig.savefig(buf, format="png", **{"bbox_inches": "tight", **savefig})
    return buf.getvalue()
