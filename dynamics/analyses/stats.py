"""Small statistics shared by the analyses: seeded bootstrap intervals, log-spaced bins and the
logistic fit of a 0/1 outcome on one feature (Newton-Raphson; no penalty, so the slope is the
plain maximum-likelihood one)."""

from __future__ import annotations

import numpy as np

N_RESAMPLES = 1000


def bootstrap_ci(values, seed: int, n_resamples: int = N_RESAMPLES, stat=np.mean, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `stat` over resamples of `values` (with replacement); (nan, nan) when empty."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_resamples, len(x)))
    stats = stat(x[idx], axis=1)
    a = (1 - level) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def diff_ci(a, b, seed: int, n_resamples: int = N_RESAMPLES, level: float = 0.95) -> tuple[float, float, float]:
    """mean(b) - mean(a) and its percentile interval, a and b resampled independently."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    da = a[rng.integers(0, len(a), size=(n_resamples, len(a)))].mean(1)
    db = b[rng.integers(0, len(b), size=(n_resamples, len(b)))].mean(1)
    q = (1 - level) / 2
    d = db - da
    return float(b.mean() - a.mean()), float(np.quantile(d, q)), float(np.quantile(d, 1 - q))


def log2_bins(counts) -> tuple[np.ndarray, list[str]]:
    """Bin index of each count >= 1 in powers of two (1, 2-3, 4-7, ...) and the bins' labels."""
    c = np.maximum(np.asarray(counts, dtype=np.int64), 1)
    b = np.floor(np.log2(c)).astype(int)
    labels = [f"{2 ** i}" if i == 0 else f"{2 ** i}-{2 ** (i + 1) - 1}" for i in range(int(b.max(initial=0)) + 1)]
    return b, labels


def logistic_fit(x, y, iters: int = 50) -> tuple[float, float]:
    """(intercept, slope) of P(y = 1) = sigmoid(a + b x), by Newton-Raphson."""
    w = _logistic_batch(np.asarray(x, dtype=float)[None], np.asarray(y, dtype=float)[None], iters)[0]
    return float(w[0]), float(w[1])


def _logistic_batch(x: np.ndarray, y: np.ndarray, iters: int = 50) -> np.ndarray:
    """Newton-Raphson for R independent one-feature logistic fits at once: x, y [R, n] -> w [R, 2].
    Separable data has no finite maximum; there the weights stop growing at |w| = 50 instead of
    diverging."""
    w = np.zeros((len(x), 2))
    for _ in range(iters):
        z = np.clip(w[:, :1] + w[:, 1:] * x, -30, 30)
        p = 1 / (1 + np.exp(-z))
        v = p * (1 - p) + 1e-12
        g = np.stack([(y - p).sum(1), ((y - p) * x).sum(1)], 1)
        h00, h01, h11 = v.sum(1) + 1e-9, (v * x).sum(1), (v * x * x).sum(1) + 1e-9
        det = h00 * h11 - h01 ** 2
        step = np.stack([(h11 * g[:, 0] - h01 * g[:, 1]) / det, (h00 * g[:, 1] - h01 * g[:, 0]) / det], 1)
        w = np.clip(w + step, -50, 50)
        if np.abs(step).max() < 1e-8:
            break
    return w


def logistic_slope_ci(x, y, seed: int, n_resamples: int = 200, level: float = 0.95) -> tuple[float, float, float, float]:
    """(intercept, slope, slope CI low, slope CI high): the fit and a bootstrap over (x, y) pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or len(np.unique(y)) < 2 or np.ptp(x) == 0:
        return (float("nan"),) * 4  # one class, or one x: no slope to fit
    a, b = logistic_fit(x, y)
    i = np.random.default_rng(seed).integers(0, len(x), size=(n_resamples, len(x)))
    slopes = _logistic_batch(x[i], y[i])[:, 1]
    q = (1 - level) / 2
    return a, b, float(np.quantile(slopes, q)), float(np.quantile(slopes, 1 - q))
