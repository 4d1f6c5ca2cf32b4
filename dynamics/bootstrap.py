"""Seeded bootstrap resampling of samples, or of the documents they come from.

Samples cut from one document, and from the copies of one duplicated document, are not
independent: in the embedded world 2000 scored samples start in about 140 documents, and a
document's samples are mostly memorized together or not at all. Resampling samples then gives
intervals far too narrow (the size trend of `memdyn run`: 9.7 to 12.4 points by samples, 3.2 to
19.4 by documents). So every interval over training samples resamples their documents (`groups`:
a label per sample, the document it starts in; dynamics.family.data.TrainingData.documents), and
all the samples of a drawn document come together. Without groups each sample is its own unit.

A resample is a weight per sample (how often it is drawn), so one matrix product gives a mean of
every resample at once: (W @ x) / (W @ valid).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

N_RESAMPLES = 1000


def draw_counts(draws: np.ndarray, size: int) -> np.ndarray:
    """How often each of `size` items is drawn in each row of an index array [B, K] -> [B, size]."""
    B = len(draws)
    return np.bincount((np.arange(B)[:, None] * size + draws).ravel(), minlength=B * size).reshape(B, size)


def resample_counts(rng: np.random.Generator, n_resamples: int, n: int, groups=None) -> np.ndarray:
    """[B, n] resampling weights of n samples: the samples drawn with replacement, or (groups: a
    label per sample) the groups drawn with replacement, each drawn group's samples together."""
    if not n:
        return np.zeros((n_resamples, 0), np.int64)
    if groups is None:
        return draw_counts(rng.integers(0, n, (n_resamples, n)), n)
    labels, index = np.unique(np.asarray(groups), return_inverse=True)
    if len(index) != n:
        raise ValueError(f"groups label {len(index)} samples, expected {n}")
    counts = draw_counts(rng.integers(0, len(labels), (n_resamples, len(labels))), len(labels))
    return counts[:, index.ravel()]


def mean_ci(values, seed, n_resamples: int = N_RESAMPLES, groups=None, level: float = 0.95):
    """Percentile bootstrap interval of the mean of values [n] or of each column of values [n, T]
    (NaN = missing), resampling rows or their groups.

    Returns (n valid, mean, ci_lo, ci_hi), each [T] (scalars for 1-d values); the interval is NaN
    where fewer than 2 values. Why not scipy.stats.bootstrap: it resamples neither groups nor
    columns with different missing cells (shifted alignments), and one weight matrix gives every
    column's resampled means in one product."""
    x = np.asarray(values, dtype=np.float64)
    flat = x.ndim == 1
    x = x[:, None] if flat else x
    valid = ~np.isnan(x)
    n_valid = valid.sum(0)
    filled = np.where(valid, x, 0.0)
    groups = None if groups is None else tuple(np.asarray(groups).tolist())
    weights = _cached_counts(tuple(np.atleast_1d(seed).tolist()), n_resamples, len(x), groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(0) / n_valid
        means = (weights @ filled) / (weights @ valid)  # [B, T]; NaN where a resample holds no valid value
    a = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        # (nanquantile equals quantile without NaN, at several times its cost)
        lo, hi = (np.nanquantile if np.isnan(means).any() else np.quantile)(means, [a, 1 - a], axis=0)
    few = n_valid < 2
    lo[few], hi[few] = np.nan, np.nan
    if flat:
        return int(n_valid[0]), float(mean[0]), float(lo[0]), float(hi[0])
    return n_valid, mean, lo, hi


# the dynamics stage's boundary tables draw one resampling per (alignment, group) for all 11
# metrics: drawn once and kept (as uint16: about 2 kB per row; a model's groups hold ~10k rows)
@functools.lru_cache(maxsize=128)
def _cached_counts(seed: tuple, n_resamples: int, n: int, groups: tuple | None) -> np.ndarray:
    return resample_counts(np.random.default_rng(list(seed)), n_resamples, n, groups).astype(np.uint16 if n < 2 ** 16 else np.uint32)
