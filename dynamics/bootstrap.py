"""Seeded bootstrap resampling of samples, or of the documents they come from.

Samples cut from one document, and from the copies of one duplicated document, are not
independent: the 2000 samples `memdyn run` scores start in 142 documents, and a document's
samples are mostly memorized together or not at all. Resampling samples then gives intervals far
too narrow (the size trend of `memdyn run`: +9.65 to +12.4 points by samples, +3.14 to +19.3 by
documents; benchmarks/FINDINGS.md). So every interval over training samples resamples their documents (`groups`:
a label per sample, the document it starts in; dynamics.family.data.TrainingData.documents), and
all the samples of a drawn document come together. Without groups each sample is its own unit.

A resample is a weight per sample (how often it is drawn), so one matrix product gives a mean of
every resample at once, (W @ x) / (W @ valid), and one sort an AUROC of every resample.
"""

from __future__ import annotations

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
    (NaN = missing), resampling rows or their groups: weighted_mean_ci of one seeded resampling.

    Why not scipy.stats.bootstrap: it resamples neither groups nor columns with different missing
    cells (shifted alignments), and one weight matrix gives every column's resampled means at once."""
    weights = resample_counts(np.random.default_rng(seed), n_resamples, len(values), groups)
    return weighted_mean_ci(values, weights, level)


def weighted_mean_ci(values, weights: np.ndarray, level: float = 0.95):
    """As mean_ci, for resampling weights [B, n] drawn once (resample_counts) and shared by several
    statistics, which makes their intervals paired. Returns (n valid, mean, ci_lo, ci_hi), each [T]
    (scalars for 1-d values); the interval is NaN where fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    flat = x.ndim == 1
    x = x[:, None] if flat else x
    valid = ~np.isnan(x)
    n_valid = valid.sum(0)
    filled = np.where(valid, x, 0.0)
    weights = np.asarray(weights, dtype=np.float64)
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


def weighted_auroc(member: np.ndarray, nonmember: np.ndarray, member_weights: np.ndarray,
                   nonmember_weights: np.ndarray) -> np.ndarray:
    """AUROC of each resample given as weights (how often each sample is drawn; [B, M], [B, N]) of
    scores where higher means positive (a member, a memorized sample): sum of w_i w_j
    ([member_i > nonmember_j] + [tie] / 2) over sum w_i * sum w_j -> [B], as roc_auc_score with
    those sample weights; NaN for a resample that draws no sample of one side.

    Why by hand: the values never change, only how often each is drawn, so one sort of the
    non-members serves every resample. Per resample, the weight of the non-members below (and tied
    with) each member value is a difference of a cumulative sum, read at positions found once with
    searchsorted: O(B (M + N)) instead of a sort per resample (1000 resamples of 271 + 271: 12 ms
    against 95 ms with scipy's rankdata per resample, the same values; 90 G MAC/s machine)."""
    order = np.argsort(nonmember, kind="stable")
    ranked = nonmember[order]
    B = len(member_weights)
    cum = np.concatenate([np.zeros((B, 1)), np.cumsum(nonmember_weights[:, order], 1)], 1)  # [B, N + 1]
    below_at, tied_at = np.searchsorted(ranked, member, "left"), np.searchsorted(ranked, member, "right")
    below = cum[:, below_at]  # [B, M]
    tied = cum[:, tied_at] - below
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((below + 0.5 * tied) * member_weights).sum(1) / (member_weights.sum(1) * nonmember_weights.sum(1))
