"""How samples move between memorization levels, and the paper's count tables.

The paper bins scores in five levels (dynamics.scoring.grid) and follows each sample from one
model (or checkpoint) to another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dynamics.errors import MemdynError
from dynamics.scoring.grid import BIN_EDGES, bin_labels, last_revisions, pick_cell, score_bins

def _select(table: pd.DataFrame, ref: str) -> pd.DataFrame:
    """'MODEL' (its last revision in the table) or 'MODEL@REVISION'."""
    model, _, revision = ref.partition("@")
    part = table[table["model"] == model]
    if part.empty:
        raise MemdynError(f"no scores for model {model!r} (models in the table: {', '.join(sorted(table['model'].unique()))})")
    if not revision:
        revision = last_revisions(part)[model]
    part = part[part["revision"] == revision]
    if part.empty:
        raise MemdynError(f"no scores for {model}@{revision} (revisions: {', '.join(sorted(table.loc[table['model'] == model, 'revision'].unique()))})")
    return part


def transition_matrix(table: pd.DataFrame, src: str, dst: str, edges=BIN_EDGES, context: int | None = None,
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


DISCOVERY_DRAWS = (1, 10, 100, 1000)  # the n of the (n, 0.5)-discoverable shares


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Counts and shares of each score level per (model, revision, context, continuation); plus
    the paper's headline columns: memorized (score 1) and unmemorized (score 0). Where the table
    has them, beyond greedy: per sampling scheme s, disc_n<N>_<s> = share of samples that are
    (N, 0.5)-discoverable (n50_<s> <= N: N draws reproduce the continuation with probability >= 0.5)
    for N in DISCOVERY_DRAWS; and approx_memorized_share (BLEU-4 >= the threshold), mean_bleu4,
    mean_edit_distance."""
    keys = ["model", "step", "revision", "context_len", "continuation_len"]
    t = table.assign(memorized=table["score"] >= 1.0, unmemorized_share=table["score"] <= 0.0)
    measures = {"n": ("score", "count"), "mean_score": ("score", "mean"), "memorized": ("memorized", "sum"),
                "unmemorized_share": ("unmemorized_share", "mean")}
    for scheme in extraction_schemes(table):
        for n in DISCOVERY_DRAWS:
            t[f"disc_n{n}_{scheme}"] = table[f"n50_{scheme}"] <= n
            measures[f"disc_n{n}_{scheme}"] = (f"disc_n{n}_{scheme}", "mean")
    if "bleu4" in table:
        measures.update(approx_memorized_share=("approx_memorized", "mean"), mean_bleu4=("bleu4", "mean"),
                        mean_edit_distance=("edit_distance", "mean"))
    out = t.groupby(keys, sort=True).agg(**measures).reset_index()
    out["memorized"] = out["memorized"].astype(int)
    out.insert(out.columns.get_loc("memorized") + 1, "memorized_share", out["memorized"] / out["n"])
    return out


def extraction_schemes(table: pd.DataFrame) -> list[str]:
    """Names of the sampling schemes whose extraction columns the score table holds."""
    return [c[len("n50_"):] for c in table.columns if c.startswith("n50_")]


def level_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Long table: count and share of every score value i/c per (model, revision, k, c)."""
    keys = ["model", "step", "revision", "context_len", "continuation_len"]
    counts = table.groupby(keys + ["matches"]).size().rename("count").reset_index()
    counts["score"] = counts["matches"] / counts["continuation_len"]
    counts["share"] = counts["count"] / counts.groupby(keys)["count"].transform("sum")
    return counts


def write_summary(scores: str | Path, out: str | Path | None = None) -> tuple[pd.DataFrame, Path]:
    """`memdyn summarize`: the summary of a scores directory, saved as CSV at `out` (default
    SCORES/_summary.csv; an existing file there that is no earlier summary is refused)."""
    from dynamics.files import atomic_path, check_output_file, csv_header
    from dynamics.scoring.table import read_scores

    if out is not None:
        check_output_file(out, "--out", lambda p: csv_header(p).startswith("model,step,revision,context_len,continuation_len,"))
    table = summarize(read_scores(scores))
    path = Path(out) if out is not None else Path(scores) / "_summary.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return table, path


def write_transitions(scores: str | Path, src: str, dst: str, *, edges=BIN_EDGES, context: int | None = None,
                      continuation: int | None = None, out: str | Path | None = None) -> tuple[pd.DataFrame, Path]:
    """`memdyn transitions`: the transition matrix from src to dst ('MODEL' or 'MODEL@REVISION'),
    saved as CSV at `out` (default inside the scores directory, named with a leading _)."""
    from dynamics.files import atomic_path, check_output_file, csv_header
    from dynamics.scoring.table import read_scores

    if out is not None:
        check_output_file(out, "--out", lambda p: csv_header(p).endswith(",n"))
    edges = sorted(edges)
    if not edges or edges[0] <= 0 or edges[-1] >= 1:
        raise MemdynError(f"--bins must be numbers strictly between 0 and 1, got {edges}")
    matrix = transition_matrix(read_scores(scores), src, dst, edges, context, continuation)
    path = Path(out) if out is not None else Path(scores) / f"_transitions_{src}_to_{dst}.csv".replace("@", "_")
    with atomic_path(path) as tmp:
        matrix.to_csv(tmp)
    return matrix, path
