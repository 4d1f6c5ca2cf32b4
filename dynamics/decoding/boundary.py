"""The boundary effect as numbers: aligned curves and jump statistics with bootstrap CIs.

Curves: the per-position mean of a metric (entropy, n-gram counts) per score group, aligned at the
boundary (position 0 = first continuation token) or, for partially memorized sequences
(0 < prefix_len < c), at the first mismatching generated token (position 0 = k + prefix_len).
Jump: per sequence, the value at aligned position 0 minus the mean of the m positions before it;
reported as the mean over a group's sequences with a bootstrap CI that resamples the documents the
sequences start in (dynamics.bootstrap; the `document` column of the collected sequences, each
sequence its own unit in collections that predate it), `documents` of them per group.

Groupings of a model's collected sequences: `level` (group = matches, "0".."c"), `class`
(unmemorized / partial / memorized) and `random` (the natural random sample).

Tables (OUT/tables/, Parquet and CSV):
  curves  model, params, metric, align (boundary | mismatch), grouping, group, position, n, mean,
          ci_lo, ci_hi
  jumps   model, params, metric, align, grouping, group, m, n, documents, jump, ci_lo, ci_hi
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd

from dynamics.bootstrap import resample_counts, weighted_mean_ci
from dynamics.scoring.grid import CLASSES

METRICS = ("entropy_nats", *(f"orig_n{n}" for n in range(1, 6)), *(f"gen_n{n}" for n in range(1, 6)))


def resampling_units(seqs: pd.DataFrame) -> np.ndarray:
    """The unit each collected sequence is resampled with: the document it starts in (each sequence
    its own in collections made before memdyn recorded documents)."""
    return seqs["document" if "document" in seqs else "seq_idx"].to_numpy()


def metric_matrix(positions: pd.DataFrame, metric: str, n_rows: int) -> np.ndarray:
    """[n_rows, T] values of a metric; -1 n-gram counts (undefined) become NaN."""
    p = positions.sort_values(["row", "position"], kind="stable")
    x = p[metric].to_numpy(dtype=np.float64).reshape(n_rows, -1)
    if metric != "entropy_nats" and metric != "entropy_bits":
        x[x < 0] = np.nan
    return x


def shift_align(x: np.ndarray, positions: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-align rows of x [n, T] (at relative positions [T]) so that position `shift[i]` of row i
    becomes 0. Returns (aligned [n, W] with NaN padding, new positions [W])."""
    n, T = x.shape
    shift = np.asarray(shift, dtype=np.int64)
    rel = positions[None, :] - shift[:, None]  # [n, T]
    lo = int(rel.min()) if n else 0
    width = (int(rel.max()) - lo + 1) if n else 0
    out = np.full((n, width), np.nan)
    out[np.arange(n)[:, None], rel - lo] = x
    return out, np.arange(lo, lo + width)


def jump_values(x: np.ndarray, positions: np.ndarray, m: int) -> np.ndarray:
    """Per row: x at position 0 minus the mean of positions -m..-1 (NaNs ignored): [n]."""
    at = int(np.flatnonzero(positions == 0)[0])
    before = x[:, max(0, at - m) : at]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows with no value before
        return x[:, at] - np.nanmean(before, axis=1)


def groupings(seqs: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(grouping, group, row mask) for every non-empty group of a model's sequences."""
    out = [("level", str(m), (seqs["matches"] == m).to_numpy()) for m in sorted(seqs["matches"].unique())]
    out += [("class", c, (seqs["group"] == c).to_numpy()) for c in CLASSES if (seqs["group"] == c).any()]
    if seqs["random_draw"].any():
        out.append(("random", "random", seqs["random_draw"].to_numpy()))
    return out


def _seed(seed: int, *key) -> list[int]:
    """A seed per table cell, so results do not depend on the order cells are computed in."""
    return [seed, zlib.crc32("/".join(map(str, key)).encode())]


def boundary_tables(seqs: pd.DataFrame, positions: pd.DataFrame, meta: dict, seed: int = 0, m: int = 4,
                    n_resamples: int = 1000, metrics=METRICS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, jumps) of one model; see the module docstring."""
    c = int(meta["continuation_len"])
    pos = np.sort(positions["position"].unique())
    partial = ((seqs["prefix_len"] > 0) & (seqs["prefix_len"] < c)).to_numpy()
    units = resampling_units(seqs)
    x = {metric: metric_matrix(positions, metric, len(seqs)) for metric in metrics}
    curves, jumps = [], []
    head = {"model": meta["model"], "params": meta["params"]}
    for align in ("boundary", "mismatch"):
        if align == "boundary":
            aligned, rel, keep = x, pos, np.ones(len(seqs), dtype=bool)
        else:
            shifted = {metric: shift_align(v, pos, seqs["prefix_len"].to_numpy()) for metric, v in x.items()}
            aligned, rel, keep = {k: v[0] for k, v in shifted.items()}, shifted[metrics[0]][1], partial
        for grouping, group, mask in groupings(seqs):
            sel = mask & keep
            if not sel.any():
                continue
            # one resampling per (model, alignment, group), shared by the metrics, curves and jumps (paired intervals)
            rng = np.random.default_rng(_seed(seed, meta["model"], align, grouping, group))
            weights = resample_counts(rng, n_resamples, int(sel.sum()), units[sel])
            for metric in metrics:
                xa = aligned[metric][sel]
                n, mean, lo, hi = weighted_mean_ci(xa, weights)
                curves.append(pd.DataFrame({**head, "metric": metric, "align": align, "grouping": grouping, "group": group,
                                            "position": rel, "n": n, "mean": mean, "ci_lo": lo, "ci_hi": hi}))
                j = jump_values(xa, rel, m)
                n, mean, lo, hi = weighted_mean_ci(j, weights)
                jumps.append(pd.DataFrame({**head, "metric": metric, "align": align, "grouping": grouping, "group": group,
                                           "m": m, "n": [n], "documents": len(np.unique(units[sel][~np.isnan(j)])),
                                           "jump": mean, "ci_lo": lo, "ci_hi": hi}))
    curves = pd.concat(curves, ignore_index=True)
    return curves[curves["n"] > 0].reset_index(drop=True), pd.concat(jumps, ignore_index=True)
