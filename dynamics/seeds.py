"""Sub-seeds: one seed per command, and an independent stream for each purpose derived from it.

Every random choice draws from `rng(seed, purpose, ...)` (or a torch generator seeded with
`derive_seed(seed, purpose, ...)`), so adding a draw for one purpose never shifts another's.
"""

from __future__ import annotations

import zlib

import numpy as np


def _key(part: int | str) -> int:
    if isinstance(part, str):
        return zlib.crc32(part.encode())  # stable across processes, unlike hash()
    if int(part) < 0:
        raise ValueError(f"seed parts must be >= 0, got {part}")
    return int(part)


def derive_seed(seed: int, *purpose: int | str) -> int:
    """A 63-bit seed for `purpose` (strings and non-negative integers), independent of other purposes."""
    words = np.random.SeedSequence([_key(seed), *map(_key, purpose)]).generate_state(2, dtype=np.uint32)
    return int(words.astype(np.uint64) @ np.array([1 << 31, 1], dtype=np.uint64))


def rng(seed: int, *purpose: int | str) -> np.random.Generator:
    """A numpy generator for `purpose`."""
    return np.random.default_rng(derive_seed(seed, *purpose))
