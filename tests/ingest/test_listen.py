"""`medweave listen`: a real DICOM receiver on a loopback port, fed by real senders — dcmtk's storescu
and echoscu (Debian package dcmtk) and pynetdicom's storescu — including a sender and a receiver
killed with SIGKILL in the middle of an association."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medweave.ingest import ingest
from medweave.store.catalog import Store, blob_location

from .test_dicom import corpus_files, open_store, write_series

FIXED_KEY = "5e" * 32
needs_dcmtk = pytest.mark.skipif(shutil.which("storescu") is None,
                                 reason="dcmtk's storescu/echoscu not installed (Debian package dcmtk)")
LISTEN = """
import sys
from pathlib import Path
from medweave.ingest.listen import Listener
Listener(Path(sys.argv[1]), int(sys.argv[2]), allow=sys.argv[3:]).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_listener(store: Path, port: int, *allow: str, cli: bool = False) -> subprocess.Popen:
    """The receiver in its own process; returns once it accepts connections."""
    store.mkdir(parents=True, exist_ok=True)
    if not (store / "secret.key").exists():
        (store / "secret.key").write_text(FIXED_KEY)
    if cli:
        cmd = [str(Path(sys.executable).with_name("medweave")), "listen", "--store", str(store),
               "--port", str(port), *[a for t in allow for a in ("--allow-ae", t)]]
    else:
        cmd = [sys.executable, "-c", LISTEN, str(store), str(port), *allow]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"listener exited early: {proc.stdout.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("listener did not start within 120 s")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def own_syntax_profile(files: list[Path], path: Path) -> list[str]:
    """A storescu configuration that proposes, for each SOP class, the transfer syntaxes the files
    are stored in, so that dcmtk sends every file as it is (no transcoding)."""
    pairs = set()
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                pairs.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
            except Exception:
                continue
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for i, (sop, ts) in enumerate(sorted(pairs)[:128]):
        lines.append(f"PresentationContext{i + 1} = {sop}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[Own]", "PresentationContexts = Contexts"]
    path.write_text("\n".join(lines) + "\n")
    return ["-xf", str(path), "Own"]


def storescu(port: int, files: list[Path], *extra: str, aet: str = "SENDER",
             folder: Path | None = None) -> subprocess.CompletedProcess:
    """dcmtk's storescu sending ``files`` in one association. With ``folder`` the files are linked
    there and sent with directory scanning, which skips (with a warning) the files dcmtk cannot
    read instead of refusing to start; -nh goes on after a refused instance."""
    if folder is not None:
        folder.mkdir(parents=True)
        for i, f in enumerate(files):
            (folder / f"{i:04d}.dcm").symlink_to(f)
        targets = ["+sd", "-nh", str(folder)]
    else:
        targets = [str(f) for f in files]
    return subprocess.run(["storescu", "-v", "-aet", aet, "-aec", "MEDWEAVE", *extra, "127.0.0.1",
                           str(port), *targets], capture_output=True, text=True, timeout=600)


def acknowledged(log: str) -> list[Path]:
    """The files whose C-STORE got a Success status, in sending order, from storescu's verbose log
    (its stderr; the progress dots go to stdout)."""
    done, current = [], None
    for line in log.splitlines():
        m = re.match(r"I: Sending file: (.+)$", line)
        if m:
            current = Path(m.group(1).strip()).resolve()
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def sop_instance(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("SOPInstanceUID", ""))


def store_content(root: Path) -> tuple[set, dict]:
    """A store as what it holds, independent of how the bytes travelled: patients, studies, and per
    item its catalog fields, pixel statistics and de-identified header (file meta and the pixel
    data's encoding left out: a sender may re-encode an instance, e.g. decompress RLE)."""
    with Store(root) as store:
        patients = {tuple(r) for r in store.con.execute(
            "SELECT patient_id, sex FROM patients").fetchall()}
        studies = {tuple(r) for r in store.con.execute(
            "SELECT study_id, patient_id, study_date FROM studies").fetchall()}
        rows = store.con.execute(
            "SELECT patient_id, study_id, modality, series_id, rows, cols, frames, position, dicom_modality, "
            "pixel_spacing_x, meta, blob, format FROM items").fetchall()
        items = {}
        for *fields, meta, blob, fmt in rows:
            meta = json.loads(meta or "{}")
            key = (fields[2], meta.get("sop_instance_uid") or meta.get("members_digest"), fmt)
            header = None
            if fmt == "dicom":
                ds = pydicom.dcmread(io.BytesIO(store.read_blob(blob)))
                header = {e.tag: str(e.value) for e in ds if e.tag != 0x7FE00010}
            kept = {k: v for k, v in meta.items() if k not in ("transfer_syntax", "transfer_syntax_name",
                                                                 "members", "members_digest")}
            # items derived from an instance without their own UID (structured-report text, waveform
            # signals) share a key: compared as a list in a fixed order, not as whichever row came last
            items.setdefault(key, []).append((tuple(fields), json.dumps(kept, sort_keys=True), header))
    for values in items.values():
        values.sort(key=lambda v: json.dumps(v, sort_keys=True, default=str))
    return patients | {("study",) + s for s in studies}, items


@needs_dcmtk
@pytest.mark.slow
def test_dcmtk_sends_the_corpus_and_the_store_equals_a_file_ingest(tmp_path):
    files = corpus_files()
    port = free_port()
    proc = start_listener(tmp_path / "net", port)
    try:
        sent = storescu(port, files, *own_syntax_profile(files, tmp_path / "storescu.cfg"),
                        folder=tmp_path / "outbox")
    finally:
        log = stop(proc)
    acked = acknowledged(sent.stderr)
    assert len(acked) >= 100, (len(acked), sent.stderr[-3000:], log[-2000:])
    assert not list((tmp_path / "net" / "incoming").glob("*")), "spooled files left behind"
    # pydicom-data holds one instance in several files (the same SOP Instance UID in other encodings):
    # over the network a re-sent instance replaces the earlier one, so compare with the last one sent
    last = {sop_instance(f): f for f in acked}
    with open_store(tmp_path / "files") as store:
        ingest(sorted(last.values()), store, progress=False)
    net, by_file = store_content(tmp_path / "net"), store_content(tmp_path / "files")
    assert len(net[1]) >= 50
    assert net[0] == by_file[0]  # the same patients and studies
    assert net[1].keys() == by_file[1].keys()
    differ = [k for k in net[1] if net[1][k] != by_file[1][k]]
    assert not differ, [(k, net[1][k][:2], by_file[1][k][:2]) for k in differ[:3]]


@needs_dcmtk
@pytest.mark.slow
def test_echo_allow_list_and_pynetdicom_storescu_through_the_cli(tmp_path):
    import pydicom.data

    port = free_port()
    proc = start_listener(tmp_path / "store", port, "SENDER", cli=True)
    try:
        ok = subprocess.run(["echoscu", "-aet", "SENDER", "-aec", "MEDWEAVE", "127.0.0.1", str(port)],
                            capture_output=True, text=True, timeout=60)
        refused = subprocess.run(["echoscu", "-aet", "INTRUDER", "-aec", "MEDWEAVE", "127.0.0.1", str(port)],
                                 capture_output=True, text=True, timeout=60)
        wrong_called = subprocess.run(["echoscu", "-aet", "SENDER", "-aec", "OTHER", "127.0.0.1", str(port)],
                                      capture_output=True, text=True, timeout=60)
        intruder = storescu(port, [Path(pydicom.data.get_testdata_file("MR_small.dcm"))], aet="INTRUDER")
        ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
        pynet = subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(port), str(ct),
                                "-aet", "SENDER", "-aec", "MEDWEAVE"], capture_output=True, text=True, timeout=300)
    finally:
        out = stop(proc)
    assert ok.returncode == 0, ok.stderr
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
    assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stderr + wrong_called.stdout
    assert not acknowledged(intruder.stdout + intruder.stderr)
    assert pynet.returncode == 0, pynet.stderr
    assert "1 instance(s) stored" in out and "1 echo(es)" in out, out
    with Store(tmp_path / "store") as store:
        items = store.items()
        blob = store.read_blob(items.iloc[0]["blob"])
    assert len(items) == 1 and items.iloc[0]["dicom_modality"] == "CT"
    ds, original = pydicom.dcmread(io.BytesIO(blob)), pydicom.dcmread(ct)
    assert ds.PatientIdentityRemoved == "YES" and str(ds.PatientName) != str(original.PatientName)
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def _check_consistent(root: Path) -> tuple[set[str], int]:
    """Open the store as a writer would (the sweep runs), and check every item's blob: present,
    matching its hash, a complete DICOM file. Returns the stored SOP instance UIDs and item count."""
    import hashlib

    with Store(root, write=True) as store:
        rows = store.con.execute("SELECT blob, content_hash, meta FROM items WHERE format = 'dicom'").fetchall()
        for blob, digest, _ in rows:
            data = store.read_blob(blob)
            assert hashlib.sha256(data).hexdigest() == digest, blob
            assert pydicom.dcmread(io.BytesIO(data)).pixel_array.size > 0
        on_disk = {p for p in (root / "blobs").rglob("*") if p.is_file()}
        named = {blob_location(root, r[0])[0] for r in store.con.execute("SELECT blob FROM items").fetchall()}
        assert on_disk == named  # every blob file and pack is a row's, and every row's blob is there
        instances = {json.loads(m)["sop_instance_uid"] for _, _, m in rows}
    return instances, len(rows)


def _send_and_kill(port: int, files: list[Path], after: int, victim: subprocess.Popen | None = None) -> list[Path]:
    """storescu sending ``files`` in one association; once ``after`` instances are acknowledged,
    SIGKILL the sender (``victim`` None) or ``victim`` (the receiver). Returns the acknowledged files."""
    sender = subprocess.Popen(["storescu", "-v", "-aet", "SENDER", "-aec", "MEDWEAVE", "127.0.0.1", str(port),
                               *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in sender.stdout:
        lines.append(line)
        if len(acknowledged("".join(lines))) >= after:
            os.kill((victim or sender).pid, signal.SIGKILL)
            break
    (victim or sender).wait(timeout=60)
    lines += sender.stdout.read().splitlines(keepends=True)
    sender.wait(timeout=120)
    acked = acknowledged("".join(lines))
    assert after <= len(acked) < len(files), "the kill did not fall in the middle of the association"
    return acked


def _expected_instances(acked: list[Path], tmp_path: Path) -> set[str]:
    with open_store(tmp_path / "keys") as keys:  # same key as the receiver's store
        return {keys.deid.uid(sop_instance(f)) for f in acked}


@needs_dcmtk
@pytest.mark.slow
def test_sender_killed_mid_association_keeps_every_acknowledged_instance(tmp_path):
    write_series(tmp_path / "series", n=40)
    files = sorted((tmp_path / "series").glob("*.dcm"))
    port = free_port()
    proc = start_listener(tmp_path / "store", port)
    try:
        acked = _send_and_kill(port, files, after=12)
        time.sleep(1.0)  # the dropped connection's clean-up (series stacking) finishes
    finally:
        stop(proc)
    instances, n_items = _check_consistent(tmp_path / "store")
    assert _expected_instances(acked, tmp_path) <= instances, "an acknowledged instance is missing"
    assert n_items >= len(acked)
    assert not list((tmp_path / "store" / "incoming").glob("*.part"))


@needs_dcmtk
@pytest.mark.slow
def test_receiver_killed_mid_association_loses_no_acknowledged_instance(tmp_path):
    write_series(tmp_path / "series", n=40)
    files = sorted((tmp_path / "series").glob("*.dcm"))
    port = free_port()
    proc = start_listener(tmp_path / "store", port)
    acked = _send_and_kill(port, files, after=10, victim=proc)
    proc = start_listener(tmp_path / "store", port)  # a restart ingests what was spooled, not yet committed
    stop(proc)
    instances, _ = _check_consistent(tmp_path / "store")
    assert _expected_instances(acked, tmp_path) <= instances
    assert not list((tmp_path / "store" / "incoming").glob("*"))
