"""Per-sample duplication beside the scores, and the dose-response fit."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from dynamics.errors import MemdynError


def test_logistic_fit_equals_sklearn_and_recovers_the_slope():
    from sklearn.linear_model import LogisticRegression

    from dynamics.analyses.stats import logistic_fit, logistic_slope_ci

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 7, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(-3 + 0.6 * x)))).astype(float)
    a, b = logistic_fit(x, y)
    ref = LogisticRegression(C=1e12, max_iter=1000).fit(x[:, None], y)
    assert a == pytest.approx(ref.intercept_[0], abs=1e-4) and b == pytest.approx(ref.coef_[0, 0], abs=1e-4)
    assert b == pytest.approx(0.6, abs=0.05)
    _, slope, lo, hi = logistic_slope_ci(x, y, seed=0)
    # the bootstrap interval is close to the Wald interval of the fit (the inverse Fisher information)
    X = np.column_stack([np.ones_like(x), x])
    p = 1 / (1 + np.exp(-X @ np.array([a, b])))
    se = np.sqrt(np.linalg.inv(X.T @ (X * (p * (1 - p))[:, None]))[1, 1])
    assert (lo, hi) == pytest.approx((b - 1.96 * se, b + 1.96 * se), abs=0.2 * se)
    assert logistic_slope_ci(x, y, seed=0) == (_, slope, lo, hi)  # seeded
    assert np.isnan(logistic_slope_ci(x, np.zeros_like(y), seed=0)[1])  # one class: no slope
    few = np.zeros_like(y)
    few[np.argsort(x)[-3:]] = 1  # three positives: a separable fit would run off to the clip
    assert np.isnan(logistic_slope_ci(x, few, seed=0)[1])


def test_dose_response_on_synthetic_log_linear_data():
    from dynamics.analyses.duplication import dose_response

    rng = np.random.default_rng(1)
    counts = np.exp(rng.uniform(0, np.log(100), 3000)).astype(int) + 1
    p = 1 / (1 + np.exp(-(-4 + 0.9 * np.log2(counts))))
    scored = pd.DataFrame({"model": "m", "step": 10, "span_count": counts, "document": np.arange(3000),
                           "score": (rng.random(3000) < p).astype(float)})
    bins, fits = dose_response(scored, seed=0)
    assert list(bins["bin"][:3]) == ["2-3", "4-7", "8-15"]  # log-spaced (no count is 1 here)
    assert bins["share"].is_monotonic_increasing or np.corrcoef(bins["bin_lo"], bins["share"])[0, 1] > 0.9
    assert (bins["ci_lo"] <= bins["share"]).all() and (bins["share"] <= bins["ci_hi"]).all()
    fit = fits.iloc[0]
    assert fit["slope_lo"] < 0.9 < fit["slope_hi"] and fit["slope_lo"] > 0
    assert fit["memorized"] == int(scored["score"].sum())
    # the same samples in 60 documents of 50, each document's samples alike: the slope is the same,
    # its interval (documents resampled) wider
    like = scored.sort_values(["span_count", "score"]).assign(document=np.arange(3000) // 50)
    wide = dose_response(like, seed=0)[1].iloc[0]
    assert wide["slope"] == pytest.approx(fit["slope"])
    assert wide["slope_hi"] - wide["slope_lo"] > 1.5 * (fit["slope_hi"] - fit["slope_lo"])


def test_annotation_counts_spans_in_the_training_stream(micro_family, micro_scores, tmp_path):
    from dynamics.analyses.duplication import DUPLICATION, annotate_scores
    from dynamics.corpus.megatron import IndexedDataset
    from dynamics.family.spec import load_family
    from dynamics.scoring.table import read_scores

    scores = tmp_path / "scores"
    shutil.copytree(micro_scores, scores)
    family = load_family(micro_family)
    before = pd.read_parquet(scores)
    annotate_scores(family, scores)
    dup = pd.read_parquet(scores / DUPLICATION)
    after = read_scores(scores)
    assert len(after) == len(before)  # the score table is unchanged by the file beside it
    cells = before[["seq_idx", "context_len", "continuation_len"]].drop_duplicates()
    assert len(dup) == len(cells)
    ds = IndexedDataset(family.data.prefix)
    stream = np.asarray(ds.tokens()).astype(np.int64)
    samples = np.asarray(ds.batch(0, len(ds)))
    meta = pd.read_parquet(micro_family / "data" / "samples.parquet").query("split == 'train'").set_index("sample_idx")
    rows = dup[(dup.context_len == 16) & (dup.continuation_len == 4)]
    # two samples of the most duplicated documents and two unique ones, counted by brute force
    pick = pd.concat([rows.nlargest(2, "span_count"), rows.nsmallest(2, "span_count")])
    for r in pick.itertuples():
        span = samples[r.seq_idx, :20]
        windows = np.lib.stride_tricks.sliding_window_view(stream, 20)
        assert r.span_count == int((windows == span).all(1).sum()) >= 1
        assert r.max_doc_copies == meta.loc[r.seq_idx, "max_doc_copies"]
        assert r.document == meta.loc[r.seq_idx, "first_doc"]
    assert rows["span_count"].max() > 5 and (rows["category"] == "recitation").sum() == (rows["span_count"] > 5).sum()
    mtime = (scores / DUPLICATION).stat().st_mtime_ns
    annotate_scores(family, scores)  # complete: kept
    assert (scores / DUPLICATION).stat().st_mtime_ns == mtime
    # truncated: read_duplication says so in one line, and annotate_scores writes it again
    from dynamics.analyses.duplication import read_duplication

    (scores / DUPLICATION).write_bytes((scores / DUPLICATION).read_bytes()[:300])
    with pytest.raises(MemdynError, match=r"_duplication.parquet is damaged .*annotate_scores"):
        read_duplication(scores)
    annotate_scores(family, scores)
    assert read_duplication(scores).equals(dup)


def test_old_family_is_refused_naming_the_rebuild_command(micro_family, micro_scores, tmp_path):
    from dynamics.analyses.duplication import annotate_scores
    from dynamics.family.spec import load_family

    old = tmp_path / "old"
    shutil.copytree(micro_family, old, symlinks=True)
    manifest = json.loads((old / "family.json").read_text())
    manifest.pop("world", None)
    (old / "family.json").write_text(json.dumps(manifest))
    scores = tmp_path / "scores"
    shutil.copytree(micro_scores, scores)
    with pytest.raises(MemdynError, match=r"memdyn family train --preset micro"):
        annotate_scores(load_family(old), scores)
    assert not (scores / "_duplication.parquet").exists()  # nothing written


def test_checks_pass_only_when_the_interval_excludes_zero():
    from dynamics.analyses.checks import directional, paired_diff

    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.2).astype(float)
    b = np.maximum(a, (rng.random(400) < 0.3).astype(float))  # b memorizes all a does and more
    d = paired_diff(a, b, seed=0)
    assert d[1] > 0 and directional(*d)[0] == "PASS"
    assert directional(*paired_diff(b, a, seed=0))[0] == "FAIL"
    assert directional(*paired_diff(b, a, seed=0), rising=False)[0] == "PASS"
    same = paired_diff(a, a[::-1], seed=0)  # no effect: the interval straddles 0
    assert same[1] < 0 < same[2]
    status, why = directional(*same)
    assert status == "FAIL" and "not shown at 95%" in why
    assert directional(np.nan, np.nan, np.nan)[0] == "NOT SHOWN"


def test_analyses_stage_skips_what_an_old_family_cannot_support(micro_family, micro_scores, tmp_path):
    from dynamics.analyses.stage import run_analyses, skipped
    from dynamics.family.spec import load_family

    w = tmp_path / "w"
    shutil.copytree(micro_family, w / "family", symlinks=True)
    manifest = json.loads((w / "family" / "family.json").read_text())
    manifest.pop("world", None)
    (w / "family" / "family.json").write_text(json.dumps(manifest))
    shutil.copytree(micro_scores, w / "scores")
    shutil.copytree(micro_scores, w / "scores_checkpoints")
    run_analyses(load_family(w / "family"), w, 16, 4, progress=False)  # completes, saying why
    why = skipped(w)
    assert set(why) == {"duplication", "canaries"} and "memdyn family train --preset micro" in why["duplication"]
    assert not (w / "scores" / "_duplication.parquet").exists() and not (w / "canaries").exists()


def test_dose_caption_skips_a_top_bin_of_one_sample():
    """The caption's most duplicated bin is the highest one holding enough samples to say something."""
    from dynamics.report.world import dose_caption

    bins = pd.DataFrame({"model": "m", "bin": ["1", "32-63", "64-127"], "bin_lo": [1, 32, 64], "n": [1164, 230, 1],
                         "share": [0.0163, 0.152, 0.0]})
    fits = pd.DataFrame({"model": ["m"], "slope": [0.43], "slope_lo": [0.29], "slope_hi": [0.62], "memorized": [60],
                         "n": [2000], "spearman": [0.47]})
    text = dose_caption(bins, fits, "m")
    assert "15.2% of those occurring 32-63 times (n=230)" in text and "64-127" not in text


def test_separated_outcomes_have_no_slope():
    """Memorized samples all at the smallest count: no finite fit, so no slope (not Newton's last step)."""
    from dynamics.analyses.stats import logistic_slope_ci

    x = np.r_[np.zeros(10), np.zeros(500), np.arange(1, 7).repeat(80)]
    y = np.r_[np.ones(10), np.zeros(500 + 480)]
    assert np.isnan(logistic_slope_ci(x, y, seed=0)).all()
    y[-3:] = 1  # three memorized samples at the largest count break the separation
    a, slope, lo, hi = logistic_slope_ci(x, y, seed=0)
    assert np.isfinite([a, slope, lo, hi]).all() and slope > -21
