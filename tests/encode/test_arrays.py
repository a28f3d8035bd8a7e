"""DiskArray: a .npy written block by block and read by rows, equal to the NumPy array it stands for."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from medweave.encode.arrays import DiskArray, DiskArrayWriter, take_rows, write_disk_array


@pytest.fixture
def pair(tmp_path):
    a = np.random.default_rng(0).standard_normal((1000, 7)).astype(np.float32)
    a[[3, 500]] = np.nan
    return a, write_disk_array(tmp_path / "a.npy", a, block=64)


def test_every_kind_of_row_index_reads_what_numpy_gives(pair):
    a, d = pair
    assert d.shape == a.shape and len(d) == 1000 and d.dtype == np.float32
    rng = np.random.default_rng(1)
    keys = [5, -1, np.int64(999), slice(None), slice(10, 20), slice(990, 2000), slice(None, None, 3),
            slice(50, 10), rng.permutation(1000)[:64], np.array([7, 7, 3, 8, 9, 10, 0]), np.array([], np.int64),
            np.array([-2, 4]), rng.random(1000) < 0.3]
    for k in keys:
        np.testing.assert_array_equal(d[k], a[k], err_msg=repr(k))
    np.testing.assert_array_equal(d[np.array([4, 2]), 3], a[np.array([4, 2]), 3])
    np.testing.assert_array_equal(d[2, 1:4], a[2, 1:4])
    np.testing.assert_array_equal(np.asarray(d), a)
    np.testing.assert_array_equal(np.load(d.path), a)  # a plain .npy file


def test_subsets_compose_and_read_nothing_until_indexed(pair):
    a, d = pair
    idx = np.random.default_rng(2).permutation(1000)[:300]
    s = d.subset(idx)
    assert isinstance(s, DiskArray) and s.shape == (300, 7)
    s2 = s.subset(np.arange(10, 40))
    np.testing.assert_array_equal(np.asarray(s2), a[idx][10:40])
    np.testing.assert_array_equal(s[np.array([299, 0])], a[idx][[299, 0]])
    np.testing.assert_array_equal(np.asarray(take_rows(d, idx)), np.asarray(take_rows(a, idx)))
    with pytest.raises(IndexError, match="out of range"):
        s[300]
    with pytest.raises(IndexError, match="out of range"):
        d.subset([1000])


def test_pickling_sends_the_rows_as_an_array_and_the_file_may_go(pair, tmp_path):
    a, d = pair
    s = d.subset(np.arange(100, 110))
    back = pickle.loads(pickle.dumps(s))
    assert type(back) is np.ndarray
    np.testing.assert_array_equal(back, a[100:110])
    d.path.unlink()  # the open descriptor keeps the file readable
    np.testing.assert_array_equal(s[:], a[100:110])


def test_the_writer_checks_shapes_and_the_row_count(tmp_path):
    w = DiskArrayWriter(tmp_path / "w.npy", 5, 3)
    w.append(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="rows of 3"):
        w.append(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="6 rows written, 5 declared"):
        w.append(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="2 rows written, 5 declared"):
        w.close()
    np.save(tmp_path / "three.npy", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="2-D"):
        DiskArray(tmp_path / "three.npy")
