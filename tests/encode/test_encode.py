"""Encoders on real items, and the embedding cache: encode twice -> nothing re-encoded; a new version
re-encodes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medweave.cohort import build_cohort
from medweave.encode import ENCODERS, EmbeddingCache, EncodeStats, Encoder, encode_cohort, get_encoder
from medweave.encode.image import to_input, window_to_uint8
from medweave.encode.loaders import Signal
from medweave.ingest import ingest
from medweave.registry import UnknownNameError
from medweave.store import Store
from medweave.store.catalog import blob_location


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    rng = np.random.default_rng(0)
    for i in range(6):
        arr = (rng.random((48, 40)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"pt{i}_img.png")
        (root / f"pt{i}_note.txt").write_text(f"Note {i}: {'opacity' if i % 2 else 'clear'} lungs.")
    st = Store(root / "store", write=True)
    assert ingest([root], st, progress=False).ok
    yield st
    st.close()


def test_image_preprocessing_matches_the_weights_expectations():
    x = to_input(np.arange(100 * 80, dtype=np.float32).reshape(100, 80) * 16)  # 12-bit-like values
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -1.0 <= x.min() < -0.9 and 0.9 < x.max() <= 1.0  # x/255 with mean = std = 0.5
    assert np.allclose(x[0], x[1])  # grayscale replicated
    assert (window_to_uint8(np.full((4, 4), 7.0)) == 0).all()  # a constant image is not a division by zero


def test_real_encoders_give_their_declared_sizes(store):
    img = get_encoder("efficientnet-lite0").encode([np.random.default_rng(0).random((64, 64)) * 4000])
    assert img.shape == (1, 1280) and np.isfinite(img).all()
    txt = get_encoder("e5-small").encode(["Right lower lobe opacity.", "Lungs are clear."])
    assert txt.shape == (2, 384) and np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-3)
    sig = Signal(np.sin(np.linspace(0, 60, 2500))[None].repeat(3, 0).astype(np.float32), 250.0)
    stats = get_encoder("signal-stats").encode([sig])
    assert stats.shape == (1, get_encoder("signal-stats").dim)
    wave = get_encoder("signal-waveform").encode([sig])
    assert wave.shape == (1, 12 * 1000) and np.isclose(wave[0, :1000].std(), 1, atol=0.01)
    vol = get_encoder("efficientnet-lite0-volume").encode([np.random.default_rng(1).random((5, 32, 32))])
    assert vol.shape == (1, 2560)


def test_encoding_twice_encodes_nothing_and_a_new_version_re_encodes(store, tmp_path):
    cohort = build_cohort(store)
    cache = EmbeddingCache(tmp_path / "emb.duckdb")
    first = EncodeStats()
    emb = encode_cohort(cohort, store, cache=cache, progress=False, stats=first)
    assert first.encoded == 12 and first.cached == 0
    assert emb.arrays["image"].shape == (6, 1280) and emb.mask["image"].all()
    second = EncodeStats()
    emb2 = encode_cohort(cohort, store, cache=cache, progress=False, stats=second)
    assert second.encoded == 0 and second.cached == 12
    np.testing.assert_array_equal(emb.arrays["text"], emb2.arrays["text"])

    class E5v2(type(get_encoder("e5-small"))):
        version = "2"

    ENCODERS.register("e5-small", E5v2)
    try:
        third = EncodeStats()
        encode_cohort(cohort, store, cache=cache, progress=False, stats=third, modalities=["text"])
        assert third.encoded == 6 and third.cached == 0
    finally:
        ENCODERS.register("e5-small", "medweave.encode.text:E5Small")
    assert cache.count("e5-small") == 12
    cache.close()


def test_absent_cases_are_nan_not_zero(store):
    from medweave.cohort import simulate_missing

    cohort = simulate_missing(build_cohort(store), "text", "mcar", rate=0.5, seed=1)
    emb = encode_cohort(cohort, store, progress=False, modalities=["text"])
    absent = ~emb.mask["text"]
    assert absent.any() and np.isnan(emb.arrays["text"][absent]).all()
    assert np.isfinite(emb.arrays["text"][~absent]).all()


def test_an_item_that_cannot_load_is_reported_and_absent(store, tmp_path):
    cohort = build_cohort(store)
    blob = store.items("modality = 'image'")["blob"].iloc[0]
    path, offset, length = blob_location(store.root, blob)  # its file, or its range of a pack
    saved = path.read_bytes()
    end = len(saved) if length is None else offset + length
    path.write_bytes(saved[:offset] + b"not an image any more".ljust(end - offset, b"!") + saved[end:])
    try:
        emb = encode_cohort(cohort, store, progress=False, modalities=["image"])
    finally:
        path.write_bytes(saved)
    assert len(emb.failures) == 1 and emb.mask["image"].sum() == 5


def test_plugin_encoder_by_name_and_unknown_names():
    class Mean(Encoder):
        name, version, modalities, dim = "mean", "1", ("image",), 1

        def encode(self, inputs):
            return np.array([[float(np.mean(a))] for a in inputs], np.float32)

    ENCODERS.register("mean", Mean)
    assert get_encoder("mean").encode([np.ones((2, 2))]).tolist() == [[1.0]]
    with pytest.raises(UnknownNameError, match="allowed values: .*efficientnet-lite0"):
        get_encoder("resnet50")


def test_cases_encoded_chunk_by_chunk_give_the_same_embeddings(store, tmp_path):
    """Cases are encoded a chunk at a time (memory holds one chunk's vectors): chunks of one and of
    four cases give what one chunk of every case gives, with the cache filled once either way."""
    from medweave.cohort import simulate_missing

    cohort = simulate_missing(build_cohort(store), "text", "mcar", rate=0.4, seed=2)
    whole_cache = EmbeddingCache(tmp_path / "whole.duckdb")
    whole = encode_cohort(cohort, store, progress=False, modalities=["image", "text"], chunk_cases=10_000,
                          cache=whole_cache)
    whole_cache.close()
    for size in (1, 4):
        stats = EncodeStats()
        cache = EmbeddingCache(tmp_path / f"chunks-{size}.duckdb")
        part = encode_cohort(cohort, store, progress=False, modalities=["image", "text"], chunk_cases=size,
                             cache=cache, stats=stats)
        assert stats.encoded == cache.count() == 6 + int(cohort.table["text_present"].sum())
        cache.close()
        assert part.case_ids == whole.case_ids
        for m in ("image", "text"):
            np.testing.assert_array_equal(part.mask[m], whole.mask[m])
            np.testing.assert_allclose(part.arrays[m], whole.arrays[m], rtol=1e-5, atol=1e-6)  # (batches differ)
    assert (~whole.mask["text"]).any() and whole.mask["image"].all()


def test_cases_encoded_to_disk_give_the_same_arrays_read_by_rows(store, tmp_path):
    """``out_dir``: each chunk's case rows are appended to MODALITY.npy and the arrays come back as
    DiskArrays; the floats (NaN rows of absent cases included) are those of the in-memory arrays."""
    from medweave.cohort import simulate_missing
    from medweave.encode.arrays import DiskArray

    cohort = simulate_missing(build_cohort(store), "text", "mcar", rate=0.4, seed=2)
    cache = EmbeddingCache(tmp_path / "cache.duckdb")
    mem = encode_cohort(cohort, store, progress=False, modalities=["image", "text"], cache=cache, chunk_cases=4)
    (tmp_path / "arrays").mkdir()
    disk = encode_cohort(cohort, store, progress=False, modalities=["image", "text"], cache=cache, chunk_cases=4,
                         out_dir=tmp_path / "arrays")
    cache.close()
    for m in ("image", "text"):
        assert isinstance(disk.arrays[m], DiskArray) and disk.arrays[m].shape == mem.arrays[m].shape
        assert (tmp_path / "arrays" / f"{m}.npy").is_file()
        np.testing.assert_array_equal(np.asarray(disk.arrays[m]), mem.arrays[m])  # NaN == NaN here
        np.testing.assert_array_equal(disk.mask[m], mem.mask[m])
        np.testing.assert_array_equal(np.load(tmp_path / "arrays" / f"{m}.npy"), mem.arrays[m])
    assert np.isnan(np.asarray(disk.arrays["text"])[~disk.mask["text"]]).all()
    sub = disk.subset(np.array([5, 0, 3]))
    np.testing.assert_array_equal(np.asarray(sub.arrays["image"]), mem.arrays["image"][[5, 0, 3]])


def test_native_size_encoder_keeps_each_pictures_size_and_groups_sizes_in_a_batch():
    from medweave.encode.image import NATIVE_MIN

    rng = np.random.default_rng(3)
    small, wide, tiny = rng.random((64, 64)) * 4000, rng.random((48, 96)) * 4000, rng.random((8, 8)) * 4000
    assert to_input(small, None).shape == (3, 64, 64)
    assert to_input(wide, None).shape == (3, 48, 96)
    assert to_input(tiny, None).shape == (3, NATIVE_MIN, NATIVE_MIN)  # enlarged to the backbone's stride
    enc = get_encoder("efficientnet-lite0-native")
    together = enc.encode([small, wide, small[::-1], tiny])
    assert together.shape == (4, 1280) and np.isfinite(together).all()
    alone = np.concatenate([enc.encode([small]), enc.encode([wide]), enc.encode([small[::-1]]), enc.encode([tiny])])
    # each row is its own picture, in order; float32 convolutions of a batch of 2 and of 1 may take other
    # kernels (CI once saw 1.4e-5 on values near 3), while a row of another picture is off by O(0.1)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)
    # not the 224 encoder under another name: a 64 px picture gives other features than resized to 224
    assert not np.allclose(together[0], get_encoder("efficientnet-lite0").encode([small])[0], atol=1e-3)
