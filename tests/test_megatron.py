import struct

import numpy as np
import pytest

from dynamics.corpus import megatron
from dynamics.corpus.steps import pythia_revisions, revision_name, revision_step, sample_step, samples_seen, step_samples
from dynamics.errors import MemdynError


@pytest.mark.parametrize("code", sorted(megatron.DTYPES))
def test_round_trip_every_dtype(tmp_path, code):
    dtype = megatron.DTYPES[code]
    rng = np.random.default_rng(code)
    items = [rng.integers(0, 100, size=n).astype(dtype) for n in (5, 0, 17, 3)]
    megatron.write(tmp_path / "d", items, dtype, doc_ends=[2, 4])
    ds = megatron.IndexedDataset(tmp_path / "d")
    assert ds.dtype == dtype and len(ds) == 4
    for a, b in zip(items, ds):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ds.tokens(1, 3), np.concatenate(items[1:3]))
    np.testing.assert_array_equal(ds.doc_idx, [0, 2, 4])
    assert ds.n_tokens == 25


def test_hand_built_idx(tmp_path):
    """An .idx written byte by byte from the spec reads back exactly (uint16, 2 items, 2 docs)."""
    tokens = np.array([7, 8, 9, 65535, 1], dtype="<u2")
    (tmp_path / "h.bin").write_bytes(tokens.tobytes())
    idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8) + struct.pack("<Q", 2) + struct.pack("<Q", 3)
    idx += struct.pack("<2i", 3, 2) + struct.pack("<2q", 0, 6) + struct.pack("<3q", 0, 1, 2)
    (tmp_path / "h.idx").write_bytes(idx)
    ds = megatron.IndexedDataset(tmp_path / "h.bin")
    assert ds.dtype == np.uint16
    assert list(ds[0]) == [7, 8, 9] and list(ds[1]) == [65535, 1] and list(ds[-1]) == [65535, 1]
    # our writer produces the same bytes
    megatron.write(tmp_path / "w", [tokens[:3], tokens[3:]], np.uint16, doc_ends=[1, 2])
    assert (tmp_path / "w.idx").read_bytes() == idx


def test_fixed_length_batch(tmp_path):
    data = np.arange(30, dtype=np.int32).reshape(6, 5)
    megatron.write(tmp_path / "f", list(data), np.int32)
    ds = megatron.IndexedDataset(tmp_path / "f")
    assert ds.fixed_length() == 5
    np.testing.assert_array_equal(ds.batch(2, 5), data[2:5])


def test_past_2_31_tokens_no_overflow(tmp_path):
    """Two uint8 items of 1.5e9 tokens each (a sparse 3 GB file): pointers and sums are int64."""
    n = 1_500_000_000
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(2 * n)
    idx = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 1, 2, 2)
    idx += struct.pack("<2i", n, n) + struct.pack("<2q", 0, n) + struct.pack("<2q", 0, 2)
    (tmp_path / "big.idx").write_bytes(idx)
    ds = megatron.IndexedDataset(tmp_path / "big")
    assert ds.n_tokens == 2 * n > 2**31
    assert len(ds[1]) == n and ds[1][-1] == 0
    assert len(ds.tokens(0, 2)) == 2 * n


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:-5]), "truncated or corrupt .idx"),
        (lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:20]), "truncated .idx"),
        (lambda p: p.with_suffix(".bin").write_bytes(p.with_suffix(".bin").read_bytes()[:-2]), "does not match its .idx"),
        (lambda p: p.with_suffix(".idx").write_bytes(b"XXXXXXXXX" + p.with_suffix(".idx").read_bytes()[9:]), "bad magic"),
        (lambda p: p.with_suffix(".bin").unlink(), "file not found"),
    ],
)
def test_corrupt_files_are_named(tmp_path, damage, message):
    megatron.write(tmp_path / "c", [np.arange(10), np.arange(4)], np.uint16)
    damage(tmp_path / "c.bin")
    with pytest.raises(MemdynError, match=message) as e:
        megatron.IndexedDataset(tmp_path / "c")
    assert str(tmp_path / "c.") in str(e.value)


def test_pythia_step_mapping():
    assert step_samples(0) == range(0, 1024)
    assert step_samples(3, batch_size=16) == range(48, 64)
    assert samples_seen(143000) == 146_432_000  # all of Pythia's training samples
    assert sample_step(1023) == 0 and sample_step(1024) == 1
    for s in (0, 7, 1000):
        assert revision_step(revision_name(s)) == s
    revs = pythia_revisions()
    assert revs[:3] == ["step0", "step1", "step2"] and "step512" in revs and revs[-1] == "step143000"
    assert len(revs) == 1 + 10 + 143
    with pytest.raises(ValueError, match="step<N>"):
        revision_step("main")
