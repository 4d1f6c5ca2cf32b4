"""dynamics.bootstrap: intervals that resample samples or the documents they come from."""

import numpy as np
import pytest

from dynamics.bootstrap import mean_ci, resample_counts


def test_mean_ci_on_known_inputs():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(0)
    x = np.column_stack([np.full(50, 3.0), rng.normal(1.0, 2.0, 400)[:50], rng.normal(0.0, 1.0, 50)])
    n, mean, lo, hi = mean_ci(x, seed=1, n_resamples=4000)
    assert n.tolist() == [50, 50, 50]
    assert (mean[0], lo[0], hi[0]) == (3.0, 3.0, 3.0)  # no spread, no interval
    np.testing.assert_allclose(mean, x.mean(0))
    ref = bootstrap((x,), np.mean, axis=0, method="percentile", n_resamples=4000, rng=np.random.default_rng(2))
    np.testing.assert_allclose(lo[1:], ref.confidence_interval.low[1:], atol=0.05)
    np.testing.assert_allclose(hi[1:], ref.confidence_interval.high[1:], atol=0.05)
    se = x[:, 1:].std(0, ddof=1) / np.sqrt(50)  # and close to the normal approximation
    np.testing.assert_allclose(hi[1:] - lo[1:], 2 * 1.96 * se, rtol=0.1)
    # seeded; missing values are skipped per column; fewer than 2 values give no interval
    assert all((a == b).all() for a, b in zip(mean_ci(x, seed=1, n_resamples=100), mean_ci(x, seed=1, n_resamples=100)))
    assert not np.array_equal(mean_ci(x, seed=1, n_resamples=100)[2], mean_ci(x, seed=2, n_resamples=100)[2])
    y = np.array([[1.0, np.nan], [3.0, 5.0], [np.nan, np.nan]])
    n, mean, lo, hi = mean_ci(y, seed=0, n_resamples=200)
    assert n.tolist() == [2, 1] and mean.tolist() == [2.0, 5.0]
    assert 1.0 <= lo[0] <= hi[0] <= 3.0 and np.isnan(lo[1]) and np.isnan(hi[1])


def test_documents_are_drawn_whole():
    rng = np.random.default_rng(0)
    groups = np.array([7, 7, 3, 3, 3, 9, 7])  # unsorted labels, one of them in two runs
    w = resample_counts(rng, 50, len(groups), groups)
    assert w.shape == (50, len(groups))
    for label in np.unique(groups):  # every sample of a document is drawn as often as the document
        assert (w[:, groups == label] == w[:, groups == label][:, :1]).all()
    assert (w[:, groups == 7].sum(1) // 3 + w[:, groups == 3].sum(1) // 3 + w[:, groups == 9].sum(1) == 3).all()
    # each sample its own document: the same draws as resampling samples
    x = rng.normal(size=40)
    assert mean_ci(x, seed=4, groups=np.arange(40)) == pytest.approx(mean_ci(x, seed=4), rel=1e-12)
    with pytest.raises(ValueError, match="label 3 samples, expected 4"):
        resample_counts(rng, 5, 4, [1, 2, 3])


def test_copies_of_a_document_are_not_new_evidence():
    """Ten copies of each of 40 values, each value's copies one document: resampling samples gives
    an interval about sqrt(10) times too narrow; resampling documents gives that of the 40 values."""
    x = np.random.default_rng(1).normal(size=40)
    copied, docs = np.repeat(x, 10), np.repeat(np.arange(40), 10)
    _, mean, lo, hi = mean_ci(x, seed=0, n_resamples=4000)
    _, cmean, clo, chi = mean_ci(copied, seed=0, n_resamples=4000, groups=docs)
    _, _, slo, shi = mean_ci(copied, seed=0, n_resamples=4000)
    assert cmean == pytest.approx(mean)
    assert chi - clo == pytest.approx(hi - lo, rel=0.1)
    assert (shi - slo) * np.sqrt(10) == pytest.approx(hi - lo, rel=0.15)


def test_logistic_slope_interval_resamples_documents():
    from dynamics.analyses.stats import logistic_slope_ci

    rng = np.random.default_rng(2)
    x = rng.uniform(0, 6, 120)
    y = (rng.random(120) < 1 / (1 + np.exp(-(x - 3)))).astype(float)
    a, b, lo, hi = logistic_slope_ci(x, y, seed=0)
    assert lo < b < hi
    assert logistic_slope_ci(x, y, seed=0, groups=np.arange(120)) == (a, b, lo, hi)  # each pair its own document
    ca, cb, clo, chi = logistic_slope_ci(np.repeat(x, 5), np.repeat(y, 5), seed=0, groups=np.repeat(np.arange(120), 5))
    assert cb == pytest.approx(b, rel=1e-6)  # five copies of every pair: the same fit,
    assert chi - clo == pytest.approx(hi - lo, rel=0.2)  # and, by documents, about the same interval
    _, _, slo, shi = logistic_slope_ci(np.repeat(x, 5), np.repeat(y, 5), seed=0)
    assert shi - slo < 0.6 * (hi - lo)  # where resampling the copies narrows it
