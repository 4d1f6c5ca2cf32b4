"""Reader and writer for Megatron / GPT-NeoX `MMapIndexedDataset` files (`.bin` + `.idx`).

This is the format of Pythia's pre-shuffled Pile. The layout (little-endian) is in
shared/REFERENCE.md section 4. It is written by hand because the only public implementations
live inside Megatron-LM / GPT-NeoX, which are far too heavy to depend on for 60 lines of numpy.

All offsets are int64 and all length sums are done in int64, so files past 2**31 tokens work.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from dynamics.errors import MemdynError
from dynamics.files import atomic_path

MAGIC = b"MMIDIDX\x00\x00"
FINGERPRINT_SLICES, FINGERPRINT_SLICE_LEN = 64, 4096  # ~256k values per array at most
VERSION = 1
HEADER_BYTES = 9 + 8 + 1 + 8 + 8  # magic, version, dtype code, N, D

DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float32),
    7: np.dtype(np.float64),
    8: np.dtype(np.uint16),
}
CODES: dict[np.dtype, int] = {dtype: code for code, dtype in DTYPES.items()}


def paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """`prefix` may be given with or without the `.bin` / `.idx` suffix."""
    prefix = str(prefix)
    for suffix in (".bin", ".idx"):
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    return Path(prefix + ".bin"), Path(prefix + ".idx")


def smallest_dtype(vocab_size: int) -> np.dtype:
    """uint16 for vocabularies that fit (Pythia's choice), int32 otherwise."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


class IndexedDataset:
    """Memory-mapped read access: `ds[i]` is item i, `ds[a:b]` a list of items, `ds.tokens(a, b)`
    the concatenated tokens of items a..b-1 as one array (a zero-copy view).

    Every check runs when the files are opened, so a corrupt pair fails before any work starts.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.bin_path, self.idx_path = paths(prefix)
        for p in (self.idx_path, self.bin_path):
            if not p.is_file():
                raise MemdynError(f"{p}: file not found (expected a Megatron .bin/.idx pair)")
        idx_size = self.idx_path.stat().st_size
        if idx_size < HEADER_BYTES:
            raise MemdynError(f"{self.idx_path}: truncated .idx file ({idx_size} bytes, header needs {HEADER_BYTES})")
        with open(self.idx_path, "rb") as f:
            header = f.read(HEADER_BYTES)
        if header[:9] != MAGIC:
            raise MemdynError(f"{self.idx_path}: not a Megatron .idx file (bad magic {header[:9]!r})")
        version, code, n, d = struct.unpack("<QBQQ", header[9:])
        if version != VERSION:
            raise MemdynError(f"{self.idx_path}: unsupported .idx version {version} (only version 1 exists)")
        if code not in DTYPES:
            raise MemdynError(f"{self.idx_path}: unknown dtype code {code} (valid codes are 1-8)")
        expected = HEADER_BYTES + 4 * n + 8 * n + 8 * d
        if idx_size != expected:
            raise MemdynError(
                f"{self.idx_path}: truncated or corrupt .idx file ({idx_size} bytes, "
                f"header says {n} items and {d} document indices = {expected} bytes)"
            )
        self.dtype = DTYPES[code]
        index = np.memmap(self.idx_path, mode="r", dtype=np.uint8)
        self.sizes = np.frombuffer(index, dtype="<i4", count=n, offset=HEADER_BYTES)
        self.pointers = np.frombuffer(index, dtype="<i8", count=n, offset=HEADER_BYTES + 4 * n)
        self.doc_idx = np.frombuffer(index, dtype="<i8", count=d, offset=HEADER_BYTES + 12 * n)
        n_tokens = int(self.sizes.sum(dtype=np.int64))
        bin_size = self.bin_path.stat().st_size
        if bin_size != n_tokens * self.dtype.itemsize:
            raise MemdynError(
                f"{self.bin_path}: size {bin_size} bytes does not match its .idx "
                f"({n_tokens} tokens x {self.dtype.itemsize} bytes); the pair is truncated or mismatched"
            )
        if n and (self.pointers[0] != 0 or self.pointers[-1] != (n_tokens - int(self.sizes[-1])) * self.dtype.itemsize):
            raise MemdynError(f"{self.idx_path}: corrupt pointers (they do not add up to the item sizes)")
        self.n_tokens = n_tokens
        self._bin = np.memmap(self.bin_path, mode="r", dtype=self.dtype) if n_tokens else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items in {self.bin_path}")
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._bin[start : start + int(self.sizes[i])]

    def tokens(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens of items [start, stop) concatenated, as a memory-mapped view."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"item range {start}:{stop} out of range for {len(self)} items in {self.bin_path}")
        if start == stop:
            return self._bin[:0]
        first = int(self.pointers[start]) // self.dtype.itemsize
        last = int(self.pointers[stop - 1]) // self.dtype.itemsize + int(self.sizes[stop - 1])
        return self._bin[first:last]

    def fingerprint(self) -> str:
        """A content id of the pair that survives moving or renaming it: the .idx header and sizes
        of both files, evenly spaced slices of the item sizes and of the token stream. Cheap on
        the Pile (a few MB read), and outputs record it instead of a path."""
        h = hashlib.sha256()
        h.update(struct.pack("<QQQ", len(self.sizes), len(self.doc_idx), self.n_tokens))
        h.update(str(self.dtype).encode())
        for array in (self.sizes, self.doc_idx, self._bin):
            step = max(1, len(array) // FINGERPRINT_SLICES)
            for start in range(0, len(array), step):
                h.update(np.ascontiguousarray(array[start : start + FINGERPRINT_SLICE_LEN]).tobytes())
        return h.hexdigest()

    def fixed_length(self) -> int:
        """The common item length (Pythia: 2049); an error if items differ in length."""
        if len(self) == 0:
            raise MemdynError(f"{self.idx_path}: the dataset has no items")
        length = int(self.sizes[0])
        if not np.all(self.sizes == length):
            raise MemdynError(f"{self.idx_path}: items have different lengths; packed fixed-length samples expected")
        return length

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Items [start, stop) of a fixed-length dataset as a 2-D array [stop - start, length]."""
        return np.asarray(self.tokens(start, stop)).reshape(stop - start, self.fixed_length())


def write(prefix: str | os.PathLike, items: Iterable[np.ndarray], dtype, doc_ends: Iterable[int] | None = None) -> None:
    """Write `items` (1-D token arrays) as a `.bin/.idx` pair, atomically.

    `doc_ends`: item counts after which a document ends (Megatron's doc_idx without its leading 0);
    by default every item is its own document.
    """
    dtype = np.dtype(dtype)
    if dtype not in CODES:
        raise MemdynError(f"dtype {dtype} cannot be stored in a .bin file (use one of {sorted(map(str, CODES))})")
    bin_path, idx_path = paths(prefix)
    sizes: list[int] = []
    with atomic_path(bin_path) as tmp_bin:
        with open(tmp_bin, "wb") as f:
            for item in items:
                item = np.asarray(item)
                if item.ndim != 1:
                    raise ValueError(f"items must be 1-D token arrays, got shape {item.shape}")
                f.write(item.astype(dtype, copy=False).tobytes())
                sizes.append(len(item))
        sizes_arr = np.asarray(sizes, dtype=np.int64)
        pointers = np.zeros(len(sizes_arr), dtype="<i8")
        np.cumsum(sizes_arr[:-1] * dtype.itemsize, out=pointers[1:])
        doc_idx = np.concatenate([[0], np.arange(1, len(sizes_arr) + 1) if doc_ends is None else list(doc_ends)]).astype("<i8")
        with atomic_path(idx_path) as tmp_idx:
            with open(tmp_idx, "wb") as f:
                f.write(MAGIC)
                f.write(struct.pack("<QBQQ", VERSION, CODES[dtype], len(sizes_arr), len(doc_idx)))
                f.write(sizes_arr.astype("<i4").tobytes())
                f.write(pointers.tobytes())
                f.write(doc_idx.tobytes())
