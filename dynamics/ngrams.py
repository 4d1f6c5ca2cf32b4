"""N-gram counts over a training token stream, from a suffix array stored beside the data.

Every n-gram (n >= 1) that occurs in a token stream is a prefix of one or more suffixes of the
stream, and those suffixes are adjacent in the suffix array (all suffixes, sorted). So the count
of an n-gram is the width of its range in the suffix array, found by two binary searches. That
is what infini-gram does; here the search is vectorised across a batch of n-grams with numpy.

Building: the suffix array comes from libdivsufsort (the `pydivsufsort` package). It sorts bytes,
so a uint16 stream is sorted as its big-endian byte pairs and only suffixes at even byte offsets
are kept (big-endian byte order is token order; pydivsufsort does this itself for wider dtypes).
Measured on one (shared) core: ~2.3M tokens/s on a 50M-token stream, peak RAM ~22 bytes per
token; counting runs at ~150k-270k n-grams/s for n = 2..5 (benchmarks/bench_ngrams.py).

On disk (one file, `*.ngi`, memory-mapped when opened):
    0        8 bytes  magic b"MDNGRAM\\0"
    8        uint64   H, the length of the JSON header (padded with spaces to a multiple of 8)
    16       H bytes  JSON: version, token_dtype, sa_dtype, n_tokens, n_suffixes, fingerprint
    16+H     tokens   n_tokens x token dtype (a copy, so the index stands alone)
    ...      sa       n_suffixes x int32 (int64 when n_tokens >= 2**31)
    ...      first    int64 [n_first] distinct first tokens, then int64 [n_first + 1] their
                      start ranks in sa (unigram counts without a search)
Little-endian; each array is 0-padded to a multiple of 8 bytes. A uint16 stream with an int32
suffix array takes 6 bytes per token (plus 16 bytes per distinct token).

The fingerprint (token count, dtype and a hash of 64 evenly spaced blocks of tokens) is stored
in the index and checked when it is opened against a data file, so an index built over other
data fails at once instead of returning wrong counts.

Corpora that do not fit one machine
-----------------------------------
Counts are additive over disjoint parts of a stream, so a large corpus is indexed as shards:
the stream is cut at token boundaries b_0 = 0 < b_1 < ... < b_K = N (for a Megatron dataset, at
item boundaries, `build_for_dataset(prefix, n_shards=K)`), and shard i indexes the n-grams that
START in [b_i, b_{i+1}). To count an n-gram that starts near the end of a shard and runs into the
next one, shard i also stores the first max_n - 1 tokens of shard i+1 as context, but only its
own start positions go into its suffix array, so nothing is counted twice. Counts are therefore
exact for every n <= max_n (default 2049, a whole Pythia sample); longer n-grams are refused.

A shard needs ~22 bytes of RAM per token while it is built and 6 bytes per token on disk, so
choose K so that one shard fits a machine (1B-token shards: ~22 GB to build, 6 GB to keep;
below 2**31 tokens the suffix array stays int32). Shards are independent: machine j builds its
own share with `build_for_dataset(prefix, out, n_shards=K, shards=[...])` (every machine writes
the same manifest.json, which is a pure function of the data and K), opens it with
`ShardedNgramIndex.open(out, shards=[...])`, counts a batch of n-grams, and the per-machine count
arrays are summed. On one machine, `ShardedNgramIndex.open(out)` opens all shards and sums for
you. An interrupted build resumes: shards whose file already matches the manifest are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from dynamics.corpus.megatron import IndexedDataset, paths
from dynamics.errors import MemdynError
from dynamics.files import atomic_path, read_json, write_json

MAGIC = b"MDNGRAM\x00"
VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_MAX_N = 2049  # one Pythia sample: duplicate counts of whole samples stay exact across shards
CHUNK_ELEMENTS = 1 << 21  # n-gram tokens per vectorised search (~100 MB of temporaries)
_PAST_END = np.iinfo(np.int64).min  # token value for positions past the end: sorts before any token


def data_fingerprint(tokens: np.ndarray, blocks: int = 64, block_len: int = 1024) -> dict:
    """A cheap identity for a token stream: length, dtype and a hash of evenly spaced blocks.

    Reads at most blocks * block_len tokens, so it is fast even on a memory-mapped 300B-token
    stream; values are hashed as int64 so the hash does not depend on the dtype (stored apart).
    """
    n = len(tokens)
    h = hashlib.blake2b(digest_size=16)
    for start in np.unique(np.linspace(0, max(n - block_len, 0), blocks).astype(np.int64)):
        h.update(np.asarray(tokens[start : start + block_len], dtype="<i8").tobytes())
    return {"n_tokens": int(n), "dtype": str(np.dtype(tokens.dtype)), "sample_blake2b": h.hexdigest()}


def _as_tokens(tokens: np.ndarray) -> np.ndarray:
    """1-D, contiguous, little-endian, and at most 32 bits wide (int64 arrays are narrowed)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise MemdynError(f"tokens must be a 1-D integer array, got {tokens.dtype} with shape {tokens.shape}")
    if len(tokens) == 0:
        raise MemdynError("cannot index an empty token stream")
    if tokens.dtype.itemsize > 4:
        lo, hi = int(tokens.min()), int(tokens.max())
        narrow = np.uint16 if 0 <= lo and hi < 2**16 else np.int32
        if not np.iinfo(np.int32).min <= lo <= hi <= np.iinfo(np.int32).max:
            raise MemdynError(f"token ids {lo}..{hi} do not fit 32 bits")
        tokens = tokens.astype(narrow)
    return np.ascontiguousarray(tokens, dtype=tokens.dtype.newbyteorder("<"))


def _suffix_array(tokens: np.ndarray) -> np.ndarray:
    try:
        from pydivsufsort import divsufsort
    except ImportError as e:  # a hard dependency, but say how to fix it rather than a traceback
        raise MemdynError("building an n-gram index needs pydivsufsort: pip install pydivsufsort") from e
    # pydivsufsort sorts wider dtypes as big-endian bytes and keeps the aligned offsets (see top).
    return divsufsort(tokens.astype(tokens.dtype.newbyteorder("="), copy=False))


class _Counts:
    """count_positions for anything with a batched `count`."""

    def count(self, ngrams: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def count_positions(self, seqs: np.ndarray, n: int) -> np.ndarray:
        """Count of the n-gram ENDING at each position of seqs [B, T], as int64 [B, T].

        Positions t < n - 1, where fewer than n tokens end at t, are -1.
        """
        seqs = np.asarray(seqs)
        if seqs.ndim != 2:
            raise ValueError(f"seqs must be [batch, length], got shape {seqs.shape}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        b, t = seqs.shape
        out = np.full((b, t), -1, dtype=np.int64)
        if t >= n:
            windows = np.lib.stride_tricks.sliding_window_view(seqs, n, axis=1)  # [B, T-n+1, n]
            out[:, n - 1 :] = self.count(windows.reshape(-1, n)).reshape(b, t - n + 1)
        return out


class NgramIndex(_Counts):
    """Suffix array over one token stream (or one shard of it); `count` is batched."""

    def __init__(self, path: Path, tokens: np.ndarray, sa: np.ndarray, first_values: np.ndarray,
                 first_starts: np.ndarray, meta: dict):
        self.path, self.tokens, self.sa, self.meta = path, tokens, sa, meta
        # The suffix array is sorted by first token, so the suffixes starting with first_values[k]
        # are sa[first_starts[k]:first_starts[k + 1]]: unigram counts need no search, and longer
        # n-grams search only their first token's range.
        self.first_values, self.first_starts = first_values, first_starts
        self.fingerprint: dict = meta["fingerprint"]

    def __len__(self) -> int:
        """Number of n-gram start positions indexed (the shard's own tokens)."""
        return len(self.sa)

    @classmethod
    def build(cls, tokens: np.ndarray, path: str | os.PathLike, *, own: int | None = None,
              fingerprint: dict | None = None) -> "NgramIndex":
        """Index `tokens` (1-D, any int dtype) into the file `path`, atomically, and open it.

        own: only n-grams starting at positions < own are counted; tokens[own:] is context that
        lets them run past the end (the overlap of a shard with the next). Default: all.
        fingerprint: stored for `open(expect_fingerprint=...)`; default `data_fingerprint(tokens)`.
        """
        if fingerprint is None:
            fingerprint = data_fingerprint(np.asarray(tokens))  # of the array as given (before narrowing)
        tokens = _as_tokens(tokens)
        n = len(tokens)
        own = n if own is None else own
        if not 0 < own <= n:
            raise ValueError(f"own must be in 1..{n}, got {own}")
        sa = _suffix_array(tokens)
        if own < n:
            sa = sa[sa < own]
        sa = sa.astype("<i4" if n < 2**31 else "<i8", copy=False)
        values, counts = np.unique(tokens[:own], return_counts=True)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype("<i8")
        meta = {
            "version": VERSION,
            "token_dtype": tokens.dtype.str,
            "sa_dtype": sa.dtype.str,
            "n_tokens": n,
            "n_suffixes": len(sa),
            "n_first": len(values),
            "fingerprint": fingerprint,
        }
        header = json.dumps(meta).encode()
        header += b" " * (-len(header) % 8)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(MAGIC + struct.pack("<Q", len(header)) + header)
                for array in (tokens, sa, values.astype("<i8"), starts):
                    array.tofile(f)
                    f.write(b"\0" * (-array.nbytes % 8))  # keep every array 8-byte aligned
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike, *, expect_fingerprint: dict | None = None) -> "NgramIndex":
        """Memory-map an index; MemdynError if it is missing, truncated, or built over other data."""
        path = Path(path)
        if not path.is_file():
            raise MemdynError(f"{path}: n-gram index not found (build it with NgramIndex.build or build_for_dataset)")
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) < 16 or head[:8] != MAGIC:
                raise MemdynError(f"{path}: not a memdyn n-gram index (bad magic or truncated header)")
            (h,) = struct.unpack("<Q", head[8:])
            try:
                meta = json.loads(f.read(h))
                version = meta["version"]
                layout = [(np.dtype(meta["token_dtype"]), int(meta["n_tokens"])),
                          (np.dtype(meta["sa_dtype"]), int(meta["n_suffixes"])),
                          (np.dtype("<i8"), int(meta["n_first"])),
                          (np.dtype("<i8"), int(meta["n_first"]) + 1)]
            except (ValueError, KeyError, TypeError) as e:
                raise MemdynError(f"{path}: corrupt n-gram index header ({e})") from None
        if version != VERSION:
            raise MemdynError(f"{path}: n-gram index version {version}, this memdyn reads {VERSION}; rebuild it")
        offsets, offset = [], 16 + h
        for dtype, count in layout:
            offsets.append(offset)
            offset += count * dtype.itemsize + (-count * dtype.itemsize % 8)
        if size != offset:
            raise MemdynError(
                f"{path}: truncated or corrupt n-gram index ({size} bytes, header says {offset}); rebuild it"
            )
        if expect_fingerprint is not None:
            expect = json.loads(json.dumps(expect_fingerprint))  # compare as stored (tuples -> lists)
            if meta["fingerprint"] != expect:
                raise MemdynError(
                    f"{path}: n-gram index was built over other data (index fingerprint "
                    f"{meta['fingerprint']}, data fingerprint {expect}); rebuild it for this data"
                )
        buf = np.memmap(path, dtype=np.uint8, mode="r")
        arrays = [np.frombuffer(buf, dtype=d, count=c, offset=o) for (d, c), o in zip(layout, offsets)]
        return cls(path, *arrays, meta)

    def count(self, ngrams: np.ndarray) -> np.ndarray:
        """Occurrences of each row of ngrams [B, n] (n >= 1) in the stream, as int64 [B]."""
        q = np.asarray(ngrams)
        if q.ndim != 2 or q.shape[1] < 1:
            raise ValueError(f"ngrams must be [batch, n] with n >= 1, got shape {q.shape}")
        q = q.astype(np.int64)
        # The first token's range of the suffix array (empty when the token never starts an n-gram).
        k = np.minimum(np.searchsorted(self.first_values, q[:, 0]), len(self.first_values) - 1)
        found = self.first_values[k] == q[:, 0]
        lo = np.where(found, self.first_starts[k], 0)
        hi = np.where(found, self.first_starts[k + 1], 0)
        if q.shape[1] == 1:
            return hi - lo
        out = np.zeros(len(q), dtype=np.int64)
        info = np.iinfo(self.tokens.dtype)
        rows = np.flatnonzero(found & ((q >= info.min) & (q <= info.max)).all(axis=1))  # others can't occur
        chunk = max(1, CHUNK_ELEMENTS // q.shape[1])  # bounds the [chunk, n] temporaries
        for start in range(0, len(rows), chunk):
            r = rows[start : start + chunk]
            rest = q[r, 1:]
            after = rest.copy()
            after[:, -1] += 1  # the smallest (n-1)-gram above every one that starts with rest
            bounds = self._lower_bound(np.concatenate([rest, after]), np.tile(lo[r], 2), np.tile(hi[r], 2))
            out[r] = bounds[len(r) :] - bounds[: len(r)]
        return out

    def _lower_bound(self, q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """For each row of q [B, m] (int64, the n-gram minus its first token) and suffix-array range
        [lo, hi) of suffixes sharing that first token: the first rank in the range whose tokens
        1..m are >= q. Vectorised over the batch; the loop is over the ~log2(range) halvings, and
        each halving works only on the rows whose range is not yet empty."""
        m = q.shape[1]
        n_tok = len(self.tokens)
        offsets = np.arange(1, m + 1, dtype=np.int64)
        lo, hi = lo.copy(), hi.copy()
        active = np.flatnonzero(lo < hi)
        while len(active):
            l, h, qa = lo[active], hi[active], q[active]
            mid = (l + h) >> 1
            pos = self.sa[mid].astype(np.int64)[:, None] + offsets  # [A, m]
            suffix = self.tokens[np.minimum(pos, n_tok - 1)].astype(np.int64)
            suffix[pos >= n_tok] = _PAST_END  # a suffix shorter than n sorts before its extensions
            differ = suffix != qa
            j = differ.argmax(axis=1)  # first differing token (0 when all equal; then differ is False)
            rows = np.arange(len(active))
            less = differ[rows, j] & (suffix[rows, j] < qa[rows, j])
            lo[active] = np.where(less, mid + 1, l)
            hi[active] = np.where(less, h, mid)
            active = active[lo[active] < hi[active]]
        return lo


class ShardedNgramIndex(_Counts):
    """Several shard indexes of one stream; counts are the sums of the shards' counts."""

    def __init__(self, shards: list[NgramIndex], max_n: int | None, path: Path):
        self.shards, self.path = shards, path
        self.max_n = max_n  # longest n counted exactly; None for a single shard (any n)

    @classmethod
    def build(cls, tokens: np.ndarray, out_dir: str | os.PathLike, *, bounds: Sequence[int],
              max_n: int = DEFAULT_MAX_N, fingerprint: dict | None = None,
              shards: Iterable[int] | None = None, items: Sequence[int] | None = None) -> "ShardedNgramIndex":
        """Index tokens cut at `bounds` (0 = b_0 < ... < b_K = len(tokens)) into out_dir.

        Writes out_dir/manifest.json and out_dir/shard-XXXXX.ngi for the shards listed in
        `shards` (default all), skipping shard files that already match; returns those shards
        opened. `items`: the item boundaries behind `bounds`, recorded for reference.
        """
        out_dir, tokens = Path(out_dir), np.asarray(tokens)
        bounds = [int(b) for b in bounds]
        shards = None if shards is None else list(shards)
        n = len(tokens)
        if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != n or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"bounds must rise strictly from 0 to len(tokens) = {n}, got {bounds[:5]}...")
        if max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {max_n}")
        manifest = {
            "format": "memdyn-ngram-shards",
            "version": VERSION,
            "max_n": int(max_n),
            "fingerprint": data_fingerprint(tokens) if fingerprint is None else fingerprint,
            "bounds": bounds,
            "items": None if items is None else [int(i) for i in items],
            "shards": [f"shard-{i:05d}.ngi" for i in range(len(bounds) - 1)],
        }
        manifest = json.loads(json.dumps(manifest))
        if not (out_dir / MANIFEST).is_file() or read_json(out_dir / MANIFEST) != manifest:
            write_json(out_dir / MANIFEST, manifest)
        for i in range(len(bounds) - 1) if shards is None else shards:
            path, expect = out_dir / manifest["shards"][i], _shard_fingerprint(manifest, i)
            try:
                NgramIndex.open(path, expect_fingerprint=expect)
                continue  # already built by an earlier (interrupted or other-machine) run
            except MemdynError:
                pass
            start, stop = bounds[i], bounds[i + 1]
            stored = tokens[start : min(stop + max_n - 1, n)]  # own tokens + context for the overlap
            NgramIndex.build(stored, path, own=stop - start, fingerprint=expect)
        return cls.open(out_dir, shards=shards)

    @classmethod
    def open(cls, out_dir: str | os.PathLike, *, expect_fingerprint: dict | None = None,
             shards: Iterable[int] | None = None) -> "ShardedNgramIndex":
        """Open the shards in `shards` (default all; a subset gives that machine's partial sums)."""
        out_dir = Path(out_dir)
        if not (out_dir / MANIFEST).is_file():
            raise MemdynError(f"{out_dir / MANIFEST}: sharded n-gram index not found (build it with build_for_dataset)")
        try:
            manifest = read_json(out_dir / MANIFEST)
            names, max_n = manifest["shards"], int(manifest["max_n"])
        except (ValueError, KeyError, TypeError) as e:
            raise MemdynError(f"{out_dir / MANIFEST}: corrupt manifest ({e})") from None
        if expect_fingerprint is not None and manifest["fingerprint"] != json.loads(json.dumps(expect_fingerprint)):
            raise MemdynError(
                f"{out_dir / MANIFEST}: n-gram index was built over other data (index fingerprint "
                f"{manifest['fingerprint']}, data fingerprint {expect_fingerprint}); rebuild it for this data"
            )
        todo = range(len(names)) if shards is None else list(shards)
        opened = [NgramIndex.open(out_dir / names[i], expect_fingerprint=_shard_fingerprint(manifest, i)) for i in todo]
        return cls(opened, max_n if len(names) > 1 else None, out_dir)

    def count(self, ngrams: np.ndarray) -> np.ndarray:
        """Sum of the shards' counts of each row of ngrams [B, n], as int64 [B]."""
        q = np.asarray(ngrams)
        if self.max_n is not None and q.ndim == 2 and q.shape[1] > self.max_n:
            raise MemdynError(
                f"{self.path}: shards overlap by {self.max_n - 1} tokens, so counts are exact only for "
                f"n <= {self.max_n}, got n = {q.shape[1]}; rebuild with a larger max_n"
            )
        total = np.zeros(len(q), dtype=np.int64)
        for shard in self.shards:
            total += shard.count(q)
        return total


def _shard_fingerprint(manifest: dict, i: int) -> dict:
    """What shard i's file must carry: the data's fingerprint plus its place in the cut."""
    b = manifest["bounds"]
    return {"data": manifest["fingerprint"], "shard": i, "tokens": [b[i], b[i + 1]], "max_n": manifest["max_n"]}


def default_index_dir(prefix: str | os.PathLike) -> Path:
    """`<prefix>.ngrams/`, beside the dataset's .bin/.idx."""
    bin_path, _ = paths(prefix)
    return bin_path.with_suffix(".ngrams")


def build_for_dataset(prefix: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, n_shards: int = 1,
                      max_n: int = DEFAULT_MAX_N, shards: Iterable[int] | None = None) -> ShardedNgramIndex:
    """Index a Megatron .bin/.idx dataset in n_shards shards cut at item boundaries (about equal
    token counts), into out_dir (default `<prefix>.ngrams/`). `shards` builds only those."""
    ds = IndexedDataset(prefix)
    if ds.n_tokens == 0:
        raise MemdynError(f"{ds.bin_path}: the dataset has no tokens to index")
    if not 1 <= n_shards <= len(ds):
        raise MemdynError(f"n_shards must be in 1..{len(ds)} (the number of items), got {n_shards}")
    ends = np.cumsum(ds.sizes, dtype=np.int64)  # token offset after each item
    targets = np.arange(1, n_shards) * ds.n_tokens // n_shards
    items = np.unique(np.concatenate([[0], np.searchsorted(ends, targets, side="left") + 1, [len(ds)]]))
    bounds, first = np.unique(np.concatenate([[0], ends[items[1:] - 1]]), return_index=True)
    items = items[first]  # empty items could repeat a bound; keep each cut once
    tokens = ds.tokens()
    return ShardedNgramIndex.build(
        tokens, out_dir or default_index_dir(prefix), bounds=bounds, max_n=max_n,
        fingerprint=data_fingerprint(tokens), shards=shards, items=items,
    )


def open_for_dataset(prefix: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                     shards: Iterable[int] | None = None) -> ShardedNgramIndex:
    """Open the index of a dataset, checking that it was built over exactly this data."""
    ds = IndexedDataset(prefix)
    expect = data_fingerprint(ds.tokens())
    return ShardedNgramIndex.open(out_dir or default_index_dir(prefix), expect_fingerprint=expect, shards=shards)
