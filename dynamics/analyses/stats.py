"""Small statistics shared by the analyses: log-spaced bins and the logistic fit of a 0/1 outcome
on one feature (Newton-Raphson; no penalty, so the slope is the plain maximum-likelihood one) with
a bootstrap interval (dynamics.bootstrap: resampling samples or their documents)."""

from __future__ import annotations

import numpy as np

from dynamics.bootstrap import N_RESAMPLES, resample_counts

MIN_CLASS = 5  # samples of each outcome a logistic slope needs; with fewer it is set by one or two points


def log2_bins(counts) -> tuple[np.ndarray, list[str]]:
    """Bin index of each count >= 1 in powers of two (1, 2-3, 4-7, ...) and the bins' labels."""
    c = np.maximum(np.asarray(counts, dtype=np.int64), 1)
    b = np.floor(np.log2(c)).astype(int)
    labels = [f"{2 ** i}" if i == 0 else f"{2 ** i}-{2 ** (i + 1) - 1}" for i in range(int(b.max(initial=0)) + 1)]
    return b, labels


def logistic_fit(x, y, iters: int = 50) -> tuple[float, float]:
    """(intercept, slope) of P(y = 1) = sigmoid(a + b x), by Newton-Raphson."""
    cx, cy, counts = _cells(x, y)
    w = _logistic_batch(cx, cy, counts[None].astype(float), iters)[0]
    return float(w[0]), float(w[1])


def _cells(x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (x, y) pairs and their counts: the likelihood depends on the data only through them."""
    pairs, counts = np.unique(np.stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)], 1), axis=0, return_counts=True)
    return pairs[:, 0], pairs[:, 1], counts


def _logistic_batch(x: np.ndarray, y: np.ndarray, weights: np.ndarray, iters: int = 50) -> np.ndarray:
    """Newton-Raphson for R weighted one-feature logistic fits over the same cells at once: x, y [U]
    (cell values), weights [R, U] (cell counts) -> w [R, 2]. Separable data has no finite maximum;
    there the weights stop at |w| = 50 instead of diverging."""
    w = np.zeros((len(weights), 2))
    for _ in range(iters):
        z = np.clip(w[:, :1] + w[:, 1:] * x, -30, 30)
        p = 1 / (1 + np.exp(-z))
        r, v = weights * (y - p), weights * (p * (1 - p) + 1e-12)
        g0, g1 = r.sum(1), (r * x).sum(1)
        h00, h01, h11 = v.sum(1) + 1e-9, (v * x).sum(1), (v * x * x).sum(1) + 1e-9
        det = h00 * h11 - h01 ** 2
        step = np.stack([(h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det], 1)
        new = np.clip(w + step, -50, 50)
        done = np.abs(new - w).max() < 1e-8  # separable resamples stop moving at the clip
        w = new
        if done:
            break
    return w


def separated(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether one outcome lies wholly at or beyond the other's extreme x (ties included): then the
    likelihood keeps rising as the slope runs off to -inf or +inf (quasi-complete separation; e.g.
    tiny's 10 memorized samples at step 200, all with a span occurring once, gave a slope of -21.5
    where Newton stopped)."""
    pos, neg = x[y == 1], x[y == 0]
    return bool(pos.max() <= neg.min() or pos.min() >= neg.max())


def logistic_slope_ci(x, y, seed: int, n_resamples: int = N_RESAMPLES, level: float = 0.95,
                      groups=None) -> tuple[float, float, float, float]:
    """(intercept, slope, slope CI low, slope CI high): the fit and a bootstrap over (x, y) pairs,
    or over their groups (a label per pair: its document). A resample only changes how often each
    distinct (x, y) cell is drawn, so all resamples are fitted at once over the cells."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if min(y.sum(), len(y) - y.sum()) < MIN_CLASS or np.ptp(x) == 0 or separated(x, y):
        return (float("nan"),) * 4  # a class too rare, one x, or no finite maximum: no slope
    a, b = logistic_fit(x, y)
    pairs, cell = np.unique(np.stack([x, y], 1), axis=0, return_inverse=True)
    counts = resample_counts(np.random.default_rng(seed), n_resamples, len(x), groups)  # [B, n]
    weights = counts @ np.eye(len(pairs))[cell.ravel()]  # [B, cells]
    slopes = _logistic_batch(pairs[:, 0], pairs[:, 1], weights)[:, 1]
    q = (1 - level) / 2
    return a, b, float(np.quantile(slopes, q)), float(np.quantile(slopes, 1 - q))
