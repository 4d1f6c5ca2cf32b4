"""How samples move between memorization levels, and the paper's count tables.

Scores take the values i/c; the paper bins them in five levels (<=0.2, <=0.4, <=0.6, <=0.8, >0.8)
and follows each sample from one model (or checkpoint) to another.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dynamics.errors import MemdynError

DEFAULT_EDGES = (0.2, 0.4, 0.6, 0.8)


def bin_labels(edges) -> list[str]:
    bounds = [0.0, *edges, 1.0]
    return [f"<={hi:g}" if i < len(edges) else f">{bounds[i]:g}" for i, hi in enumerate(bounds[1:])]


def score_bins(scores: pd.Series | np.ndarray, edges=DEFAULT_EDGES) -> np.ndarray:
    """Bin index per score: bin i holds edges[i-1] < score <= edges[i]."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(scores, dtype=np.float64), side="left")


def _select(table: pd.DataFrame, ref: str) -> pd.DataFrame:
    """'MODEL' (its last revision in the table) or 'MODEL@REVISION'."""
    model, _, revision = ref.partition("@")
    part = table[table["model"] == model]
    if part.empty:
        raise MemdynError(f"no scores for model {model!r} (models in the table: {', '.join(sorted(table['model'].unique()))})")
    if not revision:
        revision = part.sort_values("step")["revision"].iloc[-1]
    part = part[part["revision"] == revision]
    if part.empty:
        raise MemdynError(f"no scores for {model}@{revision} (revisions: {', '.join(sorted(table.loc[table['model'] == model, 'revision'].unique()))})")
    return part


def pick_cell(table: pd.DataFrame, context: int | None, continuation: int | None) -> tuple[int, int]:
    """The (context, continuation) cell to use: as asked, else the paper's 32/16 if present, else the smallest."""
    ks, cs = sorted(table["context_len"].unique()), sorted(table["continuation_len"].unique())
    k = context if context is not None else (32 if 32 in ks else ks[0])
    c = continuation if continuation is not None else (16 if 16 in cs else cs[0])
    if k not in ks or c not in cs:
        raise MemdynError(f"no scores for context {k} / continuation {c} (contexts {ks}, continuations {cs})")
    return int(k), int(c)


def transition_matrix(table: pd.DataFrame, src: str, dst: str, edges=DEFAULT_EDGES, context: int | None = None,
                      continuation: int | None = None) -> pd.DataFrame:
    """Row-normalised crosstab of score bins for the same samples under `src` and `dst`."""
    k, c = pick_cell(table, context, continuation)
    cell = table[(table["context_len"] == k) & (table["continuation_len"] == c)]
    a = _select(cell, src).set_index("seq_idx")["score"]
    b = _select(cell, dst).set_index("seq_idx")["score"]
    common = a.index.intersection(b.index)
    if common.empty:
        raise MemdynError(f"{src} and {dst} share no scored samples")
    labels = bin_labels(edges)
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(counts, (score_bins(a[common], edges), score_bins(b[common], edges)), 1)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.full(counts.shape, np.nan), where=rows > 0)
    out = pd.DataFrame(share, index=pd.Index(labels, name=f"{src} \\ {dst}"), columns=labels)
    out["n"] = rows[:, 0]
    return out


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Counts and shares of each score level per (model, revision, context, continuation); plus
    the paper's headline columns: memorized (score 1) and unmemorized (score 0)."""
    keys = ["model", "step", "revision", "context_len", "continuation_len"]
    g = table.groupby(keys, sort=True)["score"]
    out = g.agg(n="count", mean_score="mean").reset_index()
    out["memorized"] = g.apply(lambda s: int((s >= 1.0).sum())).values
    out["memorized_share"] = out["memorized"] / out["n"]
    out["unmemorized_share"] = g.apply(lambda s: float((s <= 0.0).mean())).values
    return out


def level_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Long table: count and share of every score value i/c per (model, revision, k, c)."""
    keys = ["model", "step", "revision", "context_len", "continuation_len"]
    counts = table.groupby(keys + ["matches"]).size().rename("count").reset_index()
    counts["score"] = counts["matches"] / counts["continuation_len"]
    counts["share"] = counts["count"] / counts.groupby(keys)["count"].transform("sum")
    return counts
