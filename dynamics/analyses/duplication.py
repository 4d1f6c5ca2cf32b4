"""Per-sample duplication beside the scores, and the dose-response of memorization on it.

`annotate_scores(family, scores)` writes `<scores>/_duplication.parquet` (the `_` keeps
`pandas.read_parquet(<scores>)` the score table): one row per (seq_idx, context_len,
continuation_len) of the scored grid with

  span_count      occurrences of sample[0:k+c] in the training stream (dynamics.ngrams index,
                  built beside the data on first use); >= 1 for a training sample
  max_doc_copies  the largest `copies` of the documents the sample covers (data/samples.parquet)
  document        the document the sample starts in: the unit the intervals resample
  rule, category  the taxonomy's reconstruction rule and category (dynamics.analyses.taxonomy)

`dose_response` bins samples by span_count in powers of two and gives the memorized share (score
1) per (model, step, bin) with a bootstrap 95% CI. The log-linear fit is a logistic regression of
memorized on log2(span_count) per (model, step): `slope` is the change in log-odds per doubling of
the occurrence count (Carlini et al. 2022 find memorization log-linear in duplication), with a
bootstrap 95% CI. Both bootstraps resample documents, not samples (dynamics.bootstrap).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dynamics.analyses import taxonomy, world
from dynamics.analyses.stats import log2_bins, logistic_slope_ci
from dynamics.bootstrap import mean_ci
from dynamics.corpus.megatron import IndexedDataset
from dynamics.errors import MemdynError
from dynamics.family.spec import FamilySpec
from dynamics.files import atomic_path, read_json

DUPLICATION = "_duplication.parquet"
KEYS = ["seq_idx", "context_len", "continuation_len"]


def _scored(scores: Path) -> tuple[dict, pd.DataFrame]:
    from dynamics.scoring.table import SETTINGS, read_scores

    table = read_scores(scores)
    return read_json(scores / SETTINGS), table[KEYS].drop_duplicates().sort_values(KEYS, ignore_index=True)


def annotate_scores(family: FamilySpec, scores: str | Path) -> Path:
    """Write (or keep, when it covers every scored cell) `<scores>/_duplication.parquet`."""
    scores = Path(scores)
    settings, cells = _scored(scores)
    path = scores / DUPLICATION
    if path.is_file():
        try:
            old = pd.read_parquet(path)
        except (OSError, ValueError):  # pyarrow's errors for a truncated or garbled file: written again below
            old = cells.iloc[:0]
        if "document" in old and len(old) == len(cells) and old.merge(cells, on=KEYS).shape[0] == len(cells):
            return path
    meta = world.train_samples(family)  # an old-layout family fails here, before any work
    ds = IndexedDataset(family.data.prefix)
    if settings.get("data") != ds.fingerprint():
        raise MemdynError(f"{scores} was scored on other data than the family's training samples ({family.data.prefix}); "
                          f"duplication counts need scores of the training data (`memdyn score --family {family.root}`)")
    from dynamics.family.data import training_data
    from dynamics.family.load import load_tokenizer

    train = training_data(family)
    index = train.ngrams
    tok = load_tokenizer(family)
    seqs = np.sort(cells["seq_idx"].unique())
    tokens = np.asarray(ds.batch(0, len(ds)))[seqs].astype(np.int64)
    row_of = pd.Series(np.arange(len(seqs)), index=seqs)
    parts = []
    for (k, c), g in cells.groupby(["context_len", "continuation_len"], sort=True):
        rows = row_of.loc[g["seq_idx"]].to_numpy()
        counts = index.count(tokens[rows, : k + c])
        rules = taxonomy.reconstruction_rules(tokens[rows], k, c, tok.decode)
        parts.append(pd.DataFrame({"seq_idx": g["seq_idx"].to_numpy(), "context_len": k, "continuation_len": c,
                                   "span_count": counts.astype(np.int64), "rule": rules,
                                   "category": taxonomy.categorize(counts, rules)}))
    table = pd.concat(parts, ignore_index=True)
    table["max_doc_copies"] = table["seq_idx"].map(meta["max_doc_copies"]).fillna(0).astype(np.int64)
    table["document"] = train.documents(table["seq_idx"])
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    return path


def read_duplication(scores: str | Path) -> pd.DataFrame:
    path = Path(scores) / DUPLICATION
    if not path.is_file():
        hint = "`memdyn run` annotates its scores; for others call dynamics.analyses.duplication.annotate_scores"
        raise MemdynError(f"{scores} has no {DUPLICATION} (per-sample duplication counts); {hint}")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError):  # pyarrow's errors for a truncated or garbled file
        raise MemdynError(f"{path} is damaged (not a whole Parquet file); write it again with "
                          "dynamics.analyses.duplication.annotate_scores(family, scores)") from None


def joined(scores: pd.DataFrame, dup: pd.DataFrame, k: int, c: int) -> pd.DataFrame:
    """Score rows at cell (k, c) with the duplication columns."""
    cell = scores[(scores["context_len"] == k) & (scores["continuation_len"] == c)]
    return cell.merge(dup, on=KEYS, how="inner")


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation of count and score; NaN when either is constant."""
    return float(pd.Series(x).corr(pd.Series(y), method="spearman")) if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")


def dose_response(scored: pd.DataFrame, seed: int, measure: str = "span_count") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(bins, fits): memorized share per (model, step, log2 bin of `measure`) with 95% CIs, and
    per (model, step) the logistic fit of memorized on log2(measure) with the slope's 95% CI."""
    bins, fits = [], []
    b, labels = log2_bins(scored[measure])
    scored = scored.assign(bin=b)
    for (model, step), g in scored.groupby(["model", "step"], sort=True):
        mem = (g["score"] >= 1).to_numpy(float)
        for i, part in g.groupby("bin", sort=True):
            m = (part["score"] >= 1).to_numpy(float)
            _, _, lo, hi = mean_ci(m, seed, groups=part["document"])
            bins.append({"model": model, "step": int(step), "bin": labels[i], "bin_lo": 2 ** int(i),
                         "count_mean": float(part[measure].mean()), "n": len(part), "memorized": int(m.sum()),
                         "share": m.mean(), "ci_lo": lo, "ci_hi": hi})
        x = np.log2(np.maximum(g[measure].to_numpy(float), 1))
        a, slope, lo, hi = logistic_slope_ci(x, mem, seed, groups=g["document"])
        fits.append({"model": model, "step": int(step), "measure": measure, "n": len(g), "memorized": int(mem.sum()),
                     "intercept": a, "slope": slope, "slope_lo": lo, "slope_hi": hi,
                     "spearman": _spearman(x, g["score"].to_numpy())})
    return pd.DataFrame(bins), pd.DataFrame(fits)
