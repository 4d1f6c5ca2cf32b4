"""Suffix-array n-gram index: counts equal brute force, sharding, reopening, and error cases."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dynamics.corpus.megatron import write
from dynamics.errors import MemdynError
from dynamics.files import read_json
from dynamics.ngrams import (
    NgramIndex,
    ShardedNgramIndex,
    build_for_dataset,
    data_fingerprint,
    open_for_dataset,
)


def brute_counts(tokens: np.ndarray, n: int) -> Counter:
    return Counter(map(tuple, np.lib.stride_tricks.sliding_window_view(np.asarray(tokens), n).tolist()))


def queries(tokens: np.ndarray, n: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """Present n-grams (random ones, the first and the very last), random ones (often absent),
    and ones with tokens outside the vocabulary (never present)."""
    windows = np.lib.stride_tricks.sliding_window_view(tokens, n).astype(np.int64)
    present = windows[rng.integers(0, len(windows), 40)]
    ends = windows[[0, -1]]
    random = rng.integers(0, vocab, (40, n))
    outside = rng.integers(0, vocab, (6, n))
    outside[np.arange(6), rng.integers(0, n, 6)] = [vocab, vocab + 1, -1, 70000, -(2**40), 2**40]
    return np.concatenate([present, ends, random, outside])


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint8, np.int64])
def test_count_matches_brute_force(tmp_path, dtype):
    rng = np.random.default_rng(0)
    vocab = 5
    tokens = rng.integers(0, vocab, 3000).astype(dtype)
    index = NgramIndex.build(tokens, tmp_path / "x.ngi")
    for n in range(1, 6):
        q = queries(tokens, n, vocab, rng)
        expect = brute_counts(tokens, n)
        assert index.count(q).tolist() == [expect[tuple(row)] for row in q.tolist()]
    # Whole-stream n-grams, long ones, and an empty batch.
    assert index.count(tokens[None, :]).tolist() == [1]
    assert index.count(tokens[None, 1:]).tolist() == [1]
    assert index.count(np.zeros((0, 3), dtype=np.int64)).shape == (0,)


def test_edge_streams(tmp_path):
    constant = NgramIndex.build(np.full(50, 7, dtype=np.uint16), tmp_path / "c.ngi")
    for n in (1, 2, 50, 51):
        assert constant.count(np.full((1, n), 7)).tolist() == [max(0, 51 - n)]
    one = NgramIndex.build(np.array([3], dtype=np.uint16), tmp_path / "one.ngi")
    assert one.count(np.array([[3], [2], [4]])).tolist() == [1, 0, 0]
    assert one.count(np.array([[3, 3]])).tolist() == [0]
    with pytest.raises(MemdynError, match="empty"):
        NgramIndex.build(np.zeros(0, dtype=np.uint16), tmp_path / "e.ngi")


def test_count_positions_matches_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 4, 2000).astype(np.uint16)
    index = NgramIndex.build(tokens, tmp_path / "x.ngi")
    seqs = np.stack([tokens[100:124], tokens[-24:], rng.integers(0, 5, 24)])  # includes the stream's end
    for n in range(1, 6):
        got = index.count_positions(seqs, n)
        expect = brute_counts(tokens, n)
        assert got.shape == seqs.shape and (got[:, : n - 1] == -1).all()
        for b in range(len(seqs)):
            for t in range(n - 1, seqs.shape[1]):
                assert got[b, t] == expect[tuple(seqs[b, t - n + 1 : t + 1].tolist())]
    assert (index.count_positions(seqs[:, :2], 3) == -1).all()  # shorter than n: nothing to count


def test_reopen_gives_same_counts(tmp_path):
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 6, 1500).astype(np.uint16)
    built = NgramIndex.build(tokens, tmp_path / "x.ngi")
    reopened = NgramIndex.open(tmp_path / "x.ngi", expect_fingerprint=data_fingerprint(tokens))
    q = queries(tokens, 4, 6, rng)
    assert np.array_equal(built.count(q), reopened.count(q))
    assert reopened.tokens.dtype == np.uint16 and reopened.sa.dtype == np.int32
    assert (tmp_path / "x.ngi").stat().st_size <= 10 * len(tokens)
    wide = tokens.astype(np.int64)  # narrowed to uint16 inside; the fingerprint is of the array given
    NgramIndex.build(wide, tmp_path / "w.ngi")
    assert NgramIndex.open(tmp_path / "w.ngi", expect_fingerprint=data_fingerprint(wide)).tokens.dtype == np.uint16


def make_dataset(prefix, rng, n_items=23, vocab=4):
    items = [rng.integers(0, vocab, int(rng.integers(5, 40))).astype(np.uint16) for _ in range(n_items)]
    write(prefix, items, np.uint16)
    return np.concatenate(items)


def test_sharded_counts_equal_unsharded(tmp_path):
    rng = np.random.default_rng(3)
    tokens = make_dataset(tmp_path / "train", rng)
    whole = build_for_dataset(tmp_path / "train", tmp_path / "one", n_shards=1)
    sharded = build_for_dataset(tmp_path / "train", tmp_path / "four", n_shards=4, max_n=6)
    assert len(sharded.shards) == 4 and sum(len(s) for s in sharded.shards) == len(tokens)
    bounds = read_json(tmp_path / "four" / "manifest.json")["bounds"]
    for n in range(1, 7):
        starts = [b - k for b in bounds[1:-1] for k in range(1, n)]  # n-grams spanning a cut
        spanning = tokens[np.add.outer(np.asarray(starts, dtype=np.int64), np.arange(n))].reshape(-1, n)
        q = np.concatenate([queries(tokens, n, 4, rng), spanning])
        expect = [brute_counts(tokens, n)[tuple(row)] for row in q.tolist()]
        assert whole.count(q).tolist() == expect
        assert sharded.count(q).tolist() == expect  # n-grams across shard boundaries included
    with pytest.raises(MemdynError, match="max_n"):
        sharded.count(tokens[None, :7])
    assert whole.count(tokens[None, :]).tolist() == [1]  # one shard: any n

    # Distributed: each machine builds and counts its own shards; the partial sums add up.
    part_a = build_for_dataset(tmp_path / "train", tmp_path / "a", n_shards=4, max_n=6, shards=[0, 3])
    part_b = build_for_dataset(tmp_path / "train", tmp_path / "b", n_shards=4, max_n=6, shards=[1, 2])
    q = queries(tokens, 5, 4, rng)
    assert np.array_equal(part_a.count(q) + part_b.count(q), sharded.count(q))


def test_sharded_build_resumes_and_reports_missing_shards(tmp_path):
    rng = np.random.default_rng(4)
    make_dataset(tmp_path / "train", rng)
    out = tmp_path / "idx"
    build_for_dataset(tmp_path / "train", out, n_shards=3, max_n=4, shards=[0, 2])
    with pytest.raises(MemdynError, match="shard-00001.ngi"):
        ShardedNgramIndex.open(out)
    kept = (out / "shard-00000.ngi").stat().st_mtime_ns
    index = build_for_dataset(tmp_path / "train", out, n_shards=3, max_n=4)  # builds only shard 1
    assert (out / "shard-00000.ngi").stat().st_mtime_ns == kept
    assert len(open_for_dataset(tmp_path / "train", out).shards) == len(index.shards) == 3


def test_index_over_other_data_fails_on_open(tmp_path):
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 5, 500).astype(np.uint16)
    NgramIndex.build(tokens, tmp_path / "x.ngi")
    other = tokens.copy()
    other[0] += 1
    with pytest.raises(MemdynError, match=r"x\.ngi.*other data"):
        NgramIndex.open(tmp_path / "x.ngi", expect_fingerprint=data_fingerprint(other))

    make_dataset(tmp_path / "train", rng)
    build_for_dataset(tmp_path / "train")  # beside the data: train.ngrams/
    make_dataset(tmp_path / "train", rng)  # the data changes under the index
    with pytest.raises(MemdynError, match=r"train\.ngrams.*other data"):
        open_for_dataset(tmp_path / "train")


def test_truncated_or_foreign_index_file(tmp_path):
    tokens = np.random.default_rng(6).integers(0, 5, 500).astype(np.uint16)
    path = tmp_path / "x.ngi"
    NgramIndex.build(tokens, path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(MemdynError, match=r"x\.ngi: truncated"):
        NgramIndex.open(path)
    path.write_bytes(data[:10])
    with pytest.raises(MemdynError, match=r"x\.ngi"):
        NgramIndex.open(path)
    path.write_bytes(b"MMIDIDX\x00\x00" + data[9:])
    with pytest.raises(MemdynError, match=r"x\.ngi: not a memdyn n-gram index"):
        NgramIndex.open(path)
    with pytest.raises(MemdynError, match=r"missing\.ngi: n-gram index not found"):
        NgramIndex.open(tmp_path / "missing.ngi")
