"""Case-level arrays kept on disk: a 2-D ``.npy`` file written once, block by block, and read back by
rows with ``os.pread``.

Training and evaluation take their inputs a batch of rows at a time, so the arrays of every case need
not be in memory. The file is read, not memory-mapped, on purpose: pages of a mapped file that a
process has touched count in its resident set (a pass over a mapped array makes the process's peak
RSS grow by the array's size, though the kernel may drop them), while the page cache behind ``pread``
is the system's. A ``DiskArray`` holds at most the rows it was asked for.

``DiskArray`` behaves like the read-only NumPy array it stands for where the training code uses one:
``a[rows]`` (an int, a slice, an int or boolean index array; ``a[rows, cols]`` too) gives an
``ndarray``; ``a.subset(rows)`` gives another ``DiskArray`` over the same file, reading nothing;
``np.asarray(a)`` reads it all; pickling sends the rows it stands for as a plain array (a chunk sent
to a Ray actor is an ``ndarray`` there, and no file path has to be shared).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class _File:
    """An open file descriptor, closed when the last array over it is gone (the file may be unlinked
    meanwhile: POSIX keeps it readable through the descriptor)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self):
        try:
            os.close(self.fd)
        except (OSError, AttributeError, TypeError):
            pass


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: a DiskArray is a 2-D C-ordered .npy file; got shape {shape}, "
                             f"fortran_order={fortran}")
        return shape, dtype, f.tell()


class DiskArray:
    """A read-only 2-D array in a ``.npy`` file, read by rows (see the module docstring)."""

    ndim = 2

    def __init__(self, path: str | Path, rows: np.ndarray | None = None, _file: _File | None = None,
                 _header: tuple | None = None):
        path = Path(path)
        self._file = _file or _File(path)
        if _header is None:
            shape, self.dtype, self._offset = _read_header(path)
            self._n, self._dim = shape
        else:
            self._n, self._dim, self.dtype, self._offset = _header
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if self._rows is not None and len(self._rows) and (self._rows.min() < 0 or self._rows.max() >= self._n):
            raise IndexError(f"{path}: row index out of range for {self._n} rows")

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n if self._rows is None else len(self._rows), self._dim)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self._dim * self.dtype.itemsize

    def _physical(self, key) -> np.ndarray | slice:
        """File rows for ``key`` (a slice of a whole file stays a slice: one contiguous read)."""
        n = len(self)
        if isinstance(key, slice):
            if self._rows is None and key.step in (None, 1):
                start, stop, _ = key.indices(n)
                return slice(start, max(start, stop))
            local = np.arange(n)[key]
        else:
            local = np.asarray(key)
            if local.dtype == bool:
                if local.shape != (n,):
                    raise IndexError(f"boolean index of shape {local.shape} for {n} rows")
                local = np.flatnonzero(local)
            elif not np.issubdtype(local.dtype, np.integer):
                raise IndexError(f"rows of a DiskArray are indexed by ints, slices or booleans; got {local.dtype}")
            local = np.where(local < 0, local + n, local)
            if local.size and (local.min() < 0 or local.max() >= n):
                raise IndexError(f"row index out of range for {n} rows")
        return local if self._rows is None else self._rows[local]

    def _read_block(self, start: int, stop: int) -> np.ndarray:
        row = self._dim * self.dtype.itemsize
        want = (stop - start) * row
        buf = bytearray(want)
        view, got = memoryview(buf), 0
        while got < want:
            k = os.preadv(self._file.fd, [view[got:]], self._offset + start * row + got)
            if k <= 0:
                raise OSError(f"{self.path}: short read at row {start} ({got} of {want} bytes)")
            got += k
        return np.frombuffer(buf, dtype=self.dtype).reshape(stop - start, self._dim)

    def _read_rows(self, phys: np.ndarray) -> np.ndarray:
        """The file rows ``phys`` (any order, repeats allowed), in that order; each run of consecutive
        rows is one read."""
        out = np.empty((len(phys), self._dim), dtype=self.dtype)
        if not len(phys):
            return out
        order = np.argsort(phys, kind="stable")
        sorted_rows = phys[order]
        uniq, first = np.unique(sorted_rows, return_index=True)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        block_rows = np.empty((len(uniq), self._dim), dtype=self.dtype)
        for run in np.split(np.arange(len(uniq)), breaks):
            block_rows[run] = self._read_block(int(uniq[run[0]]), int(uniq[run[-1]]) + 1)
        which = np.searchsorted(uniq, sorted_rows)
        out[order] = block_rows[which]
        return out

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        scalar = isinstance(key, (int, np.integer))
        phys = self._physical(np.array([key]) if scalar else key)
        out = (self._read_block(phys.start, phys.stop).copy() if isinstance(phys, slice)
               else self._read_rows(phys))
        if scalar:
            out = out[0]
        return out[(slice(None),) * (0 if scalar else 1) + rest] if rest else out

    def subset(self, rows) -> "DiskArray":
        """The rows ``rows`` of this array as another DiskArray over the same file (nothing is read)."""
        phys = self._physical(rows)
        if isinstance(phys, slice):
            phys = np.arange(phys.start, phys.stop)
        return DiskArray(self.path, phys, self._file, (self._n, self._dim, self.dtype, self._offset))

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __reduce__(self):
        return (np.asarray, (np.asarray(self),))

    def __repr__(self) -> str:
        return f"DiskArray({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


class DiskArrayWriter:
    """Writes a ``(n, dim)`` array to a ``.npy`` file block after block, in row order: ``append``
    blocks until ``n`` rows are written, then ``close`` (checks the count) and ``open`` the result."""

    def __init__(self, path: str | Path, n: int, dim: int, dtype=np.float32):
        self.path, self.n, self.dim, self.dtype = Path(path), int(n), int(dim), np.dtype(dtype)
        self.written = 0
        self._f = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.n, self.dim)}
        np.lib.format.write_array_header_2_0(self._f, header)

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"{self.path}: block of shape {block.shape}; rows of {self.dim} expected")
        if self.written + len(block) > self.n:
            raise ValueError(f"{self.path}: {self.written + len(block)} rows written, {self.n} declared")
        self._f.write(block.tobytes())
        self.written += len(block)

    def close(self) -> DiskArray:
        self._f.close()
        if self.written != self.n:
            raise ValueError(f"{self.path}: {self.written} rows written, {self.n} declared")
        return DiskArray(self.path)


def write_disk_array(path: str | Path, array: np.ndarray, block: int = 4096) -> DiskArray:
    """``array`` (2-D) written to ``path`` as a DiskArray, ``block`` rows at a time."""
    w = DiskArrayWriter(path, array.shape[0], array.shape[1], array.dtype)
    for s in range(0, array.shape[0], block):
        w.append(array[s:s + block])
    return w.close()


def take_rows(a, index) -> "np.ndarray | DiskArray":
    """``a[index]`` for an ndarray; for a DiskArray the lazy ``subset`` (nothing read)."""
    return a.subset(index) if isinstance(a, DiskArray) else a[index]
