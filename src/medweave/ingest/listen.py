"""DICOM from the network: a C-STORE receiver (pynetdicom) that ingests every instance it is sent.

``medweave listen --store DIR --port N`` accepts associations for every storage SOP class in every
transfer syntax pynetdicom knows, and answers C-ECHO. For each C-STORE request:

1. the instance is taken as it came over the wire (``encoded_dataset``: no decoding, no re-encoding)
   and written to ``DIR/incoming/<keyed instance UID>.dcm`` (temporary name, fsync, rename);
2. it is ingested by the same runner and DICOM adapter as ``medweave ingest`` (de-identification,
   blob, catalog rows, all committed in one transaction);
3. only then is the success status sent back. An acknowledged instance is therefore in the store
   (committed) before the sender hears so; a crash before that point leaves at most the spooled file,
   which the next start ingests. The spooled file is removed once its rows are committed.

Series are stacked into volumes when an association ends (not after each instance, which would give
a volume of every partial series). Calling AE titles can be restricted (``allow``): an association
from any other title is rejected. The receiver binds to loopback unless told otherwise, and refuses
to listen beyond loopback without an allow-list.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..settings import is_loopback
from ..store.catalog import Store
from .runner import IngestReport, ingest

log = logging.getLogger(__name__)

SPOOL = "incoming"
SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000  # "Error: cannot understand": the instance will not ingest as it is
OUT_OF_RESOURCES = 0xA700  # "Refused: out of resources": the store could not take it now; resend


class ListenError(Exception):
    """A receiver that cannot start as asked (a bad option, a port in use)."""


@dataclass
class ListenStats:
    stored: int = 0
    already_stored: int = 0
    failed: int = 0
    echoes: int = 0
    associations: int = 0
    errors: list[str] = field(default_factory=list)  # reasons of the last 100 refused instances


def _ae_title(value: str, what: str) -> str:
    title = value.strip()
    if not title or len(title) > 16 or not title.isascii() or "\\" in title or not title.isprintable():
        raise ListenError(f"{what} {value!r}: expected 1 to 16 printable ASCII characters without '\\'")
    return title


class Listener:
    """A C-STORE SCP that ingests into one store. ``start()`` returns once the port is bound;
    ``stop()`` closes it. Every received instance is committed before it is acknowledged."""

    def __init__(self, store_dir: Path, port: int, host: str = "127.0.0.1", ae_title: str = "MEDWEAVE",
                 allow: tuple[str, ...] | list[str] = (), namespace: str = "default",
                 options: dict[str, Any] | None = None, keep_phi: bool = False,
                 on_event: Callable[[str], None] | None = None):
        self.ae_title = _ae_title(ae_title, "--ae-title")
        self.allow = tuple(_ae_title(a, "--allow-ae") for a in allow)
        if not is_loopback(host) and not self.allow:
            raise ListenError(f"listening on {host} (beyond loopback) needs an allow-list of calling AE "
                              "titles (--allow-ae TITLE): DICOM has no other way to tell senders apart")
        if not 0 < port < 65536:
            raise ListenError(f"--port {port}: expected 1..65535")
        self.host, self.port = host, port
        self.namespace = namespace
        self.options = {**(options or {}), "series": "defer"}
        self.store = Store(store_dir, write=True, keep_phi=keep_phi)
        self.spool = self.store.root / SPOOL
        self.spool.mkdir(exist_ok=True)
        self.lock = threading.Lock()  # one writer: the catalog has one connection
        self.stats = ListenStats()
        self.on_event = on_event or (lambda line: None)
        self._server = None
        self._ingest_leftovers()

    # --- storing ---------------------------------------------------------------------------------
    def _ingest(self, paths: list[Path], finish: bool = False) -> IngestReport:
        with self.lock:
            return ingest(paths, self.store, fmt="dicom" if paths else None, namespace=self.namespace,
                          options=self.options, progress=False, workers=1, args="listen",
                          also_finish=("dicom",) if finish else ())

    def _ingest_leftovers(self) -> None:
        """Instances spooled by an earlier run that stopped before committing them."""
        leftovers = sorted(p for p in self.spool.glob("*.dcm") if p.is_file())
        for p in self.spool.glob("*.part"):
            p.unlink(missing_ok=True)  # never complete: never acknowledged
        if leftovers:
            report = self._ingest(leftovers, finish=True)
            for p in leftovers:
                p.unlink(missing_ok=True)
            self.on_event(f"ingested {report.n_ok} instance(s) spooled by an earlier run "
                          f"({report.n_failed} failed)")

    def _spool(self, data: bytes, sop_instance: str) -> Path:
        # named by the keyed twin of its instance UID: a re-sent instance replaces its earlier version
        name = self.store.deid.uid(sop_instance or hashlib.sha256(data).hexdigest())
        final = self.spool / f"{name}.dcm"
        tmp = self.spool / f"{name}.{threading.get_ident()}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    def store_instance(self, data: bytes, sop_instance: str) -> tuple[int, str]:
        """Spool, ingest and commit one instance; (status, comment) for the C-STORE response."""
        try:
            path = self._spool(data, sop_instance)
        except OSError as exc:
            return OUT_OF_RESOURCES, f"cannot spool the instance: {exc.strerror}"
        try:
            report = self._ingest([path])
        except Exception as exc:  # the store itself failed (disk full, ...): the sender may retry
            log.exception("ingest of a received instance failed")
            return OUT_OF_RESOURCES, f"store error: {type(exc).__name__}"
        path.unlink(missing_ok=True)
        if report.n_failed:
            reason = report.errors[0][1] if report.errors else "not ingested"
            self.stats.failed += 1
            self.stats.errors = (self.stats.errors + [reason])[-100:]
            return CANNOT_UNDERSTAND, reason
        if report.n_ok:
            self.stats.stored += 1
        else:
            self.stats.already_stored += 1
        return SUCCESS, ""

    # --- the DICOM side --------------------------------------------------------------------------
    def _handle_store(self, event) -> Any:
        from pydicom.dataset import Dataset

        sop_instance = str(event.request.AffectedSOPInstanceUID or "")
        status, comment = self.store_instance(event.encoded_dataset(include_meta=True), sop_instance)
        if status == SUCCESS:
            return SUCCESS
        reply = Dataset()
        reply.Status = status
        reply.ErrorComment = comment[:64]  # LO
        self.on_event(f"refused an instance: {comment}")
        return reply

    def _handle_echo(self, event) -> int:
        self.stats.echoes += 1
        return SUCCESS

    def _handle_end(self, event) -> None:
        """A connection closed (released, aborted or dropped): stack the series it completed."""
        try:
            report = self._ingest([], finish=True)
            if report.n_items_added:
                self.on_event(f"stacked {report.n_items_added} series volume(s)")
        except Exception:
            log.exception("series stacking after an association failed")

    def _handle_accepted(self, event) -> None:
        self.stats.associations += 1

    def start(self) -> None:
        """Bind the port and serve in background threads."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        ae.require_called_aet = True  # associations addressed to another AE title are rejected
        if self.allow:
            ae.require_calling_aet = list(self.allow)
        handlers = [(evt.EVT_C_STORE, self._handle_store), (evt.EVT_C_ECHO, self._handle_echo),
                    (evt.EVT_ACCEPTED, self._handle_accepted), (evt.EVT_CONN_CLOSE, self._handle_end)]
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            self.store.close()
            raise ListenError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self._ae = ae

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        with self.lock:
            self.store.close()

    def serve_forever(self) -> None:
        """Start, then block until interrupted (Ctrl-C or SIGTERM)."""
        import signal

        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        try:
            while not stop.is_set():
                time.sleep(0.2)
        finally:
            self.stop()
