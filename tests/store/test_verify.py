"""Blob integrity: a blob whose bytes no longer match its hash is caught on read, naming the item;
`medweave store verify` checks a whole store and can forget damaged items so a re-ingest restores them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medweave.encode.loaders import load_item
from medweave.ingest import ingest
from medweave.store import Store
from medweave.store.catalog import PACK_MAX_BLOB, BlobIntegrityError, blob_location, read_verified, sha256_bytes


def _store_with_images(tmp_path: Path, n: int = 3) -> tuple[Path, Path]:
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(src / f"img{i}.png")
    (src / "note.txt").write_text("Findings: clear lungs.\n")
    store = tmp_path / "s"
    with Store(store, write=True) as st:
        assert ingest([src], st, progress=False).ok
    return src, store


def _flip_a_byte(store: Path, rel: str) -> None:
    """Damage blob ``rel`` where it lies: its file, or its range of a pack."""
    path, offset, length = blob_location(store, rel)
    data = bytearray(path.read_bytes())
    data[offset + (len(data) if length is None else length) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def _verify(store: Path, *extra: str):
    """The real command, in process (a subprocess per call costs a CLI start-up each)."""
    from typer.testing import CliRunner

    from medweave.cli import app

    res = CliRunner().invoke(app, ["store", "verify", "--store", str(store), *extra])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    res.returncode = res.exit_code
    return res


def test_a_damaged_blob_is_caught_on_read_naming_the_item(tmp_path):
    _, store = _store_with_images(tmp_path)
    with Store(store) as st:
        rows = st.items("modality = 'image'").to_dict("records")
    good, bad = rows[0], rows[1]
    assert load_item(store, good).shape == (16, 16)
    _flip_a_byte(store, bad["blob"])
    with pytest.raises(BlobIntegrityError) as exc:
        load_item(store, bad)
    msg = str(exc.value)
    assert bad["item_id"] in msg and bad["blob"] in msg and "damaged" in msg and "store verify" in msg
    with Store(store) as st:
        with pytest.raises(BlobIntegrityError, match=bad["item_id"]):
            st.read_blob(bad["blob"], bad["item_id"])
        path, offset, length = blob_location(store, good["blob"])
        assert length is not None  # a small blob: a range of a pack
        assert st.read_blob(good["blob"]) == path.read_bytes()[offset:offset + length]
    path.chmod(0o644)
    with open(path, "r+b") as fh:  # a pack cut short (the disk lost its end)
        fh.truncate(offset + length - 1)
    with pytest.raises(BlobIntegrityError, match=r"is cut short: its pack .* holds"):
        read_verified(store, good["blob"], good["item_id"])
    path.unlink()
    with pytest.raises(BlobIntegrityError, match=r"is missing from the store"):
        read_verified(store, good["blob"], good["item_id"])


@pytest.mark.slow
def test_store_verify_lists_damaged_items_then_forgets_them_and_a_reingest_restores(tmp_path):
    src, store = _store_with_images(tmp_path)
    clean = _verify(store, "--json")
    assert clean.returncode == 0, clean.output
    report = json.loads(clean.stdout)
    assert report["ok"] and report["blobs"] == 4 and not report["damaged"]

    with Store(store) as st:
        bad = st.items("modality = 'image'").to_dict("records")[2]
        n_items = len(st.items())
    _flip_a_byte(store, bad["blob"])
    found = _verify(store)
    assert found.returncode == 1
    assert f"DAMAGED {bad['item_id']} (image" in found.stdout and "1 item(s) damaged" in found.stdout, found.stdout

    forgot = _verify(store, "--forget-damaged")
    assert forgot.returncode == 1 and "forgot 1 item(s) of 1 source(s)" in forgot.stdout, forgot.stdout
    with Store(store) as st:
        assert len(st.items()) == n_items - 1
    with Store(store, write=True) as st:  # the same files again: only the forgotten one is read
        res = ingest([src], st, progress=False)
        assert res.n_items_added == 1 and res.n_already == 3
    again = _verify(store, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["ok"], again.stdout
    with Store(store) as st:
        row = st.items("item_id = ?", [bad["item_id"]]).to_dict("records")[0]
        assert load_item(store, row).shape == (16, 16)


@pytest.mark.parametrize("size", [1500, PACK_MAX_BLOB + 15], ids=["packed", "file"])
def test_putting_the_same_content_again_repairs_a_damaged_blob(tmp_path, size):
    """A file blob is put back in place; a packed one is appended again (a pack is never rewritten)
    and the damaged range is no longer handed out."""
    with Store(tmp_path / "s", write=True) as st:
        data = (b"some blob bytes" * (size // 15 + 1))[:size]
        rel = st.put_blob(data, sha256_bytes(data), ".bin")
        assert st.put_blob(data, sha256_bytes(data), ".bin") == rel  # the same content, stored once
        _flip_a_byte(st.root, rel)
        with pytest.raises(BlobIntegrityError):
            st.read_blob(rel)
        again = st.put_blob(data, sha256_bytes(data), ".bin")
        assert (again == rel) == (size > PACK_MAX_BLOB)
        assert st.read_blob(again) == data and st.put_blob(data, sha256_bytes(data), ".bin") == again
        assert not list((st.root / "blobs" / ".tmp").iterdir())
