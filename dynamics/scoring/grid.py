"""The vocabulary of a score table, defined once: the main cell, memorization classes and bins,
and each model's last revision.

Scores take the values i/c. Chen et al. (2024) bin them in five levels (<=0.2, <=0.4, <=0.6,
<=0.8, >0.8) for transitions, and compare three classes: unmemorized (score <= 0.2), memorized
(score 1) and partial (in between).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dynamics.errors import MemdynError

MAIN_CELL = (32, 16)  # the paper's main setting: context 32, continuation 16
CLASSES = ("unmemorized", "partial", "memorized")
MEMORIZED = CLASSES.index("memorized")
CLASS_EDGES = (0.2, 1.0)  # unmemorized: score <= 0.2; memorized: score >= 1; partial: in between
BIN_EDGES = (0.2, 0.4, 0.6, 0.8)


def main_cell(contexts, continuations) -> tuple[int, int]:
    """The (context, continuation) cell nearest to the paper's 32 / 16 among those given."""
    k = min(contexts, key=lambda v: (abs(v - MAIN_CELL[0]), v))
    c = min(continuations, key=lambda v: (abs(v - MAIN_CELL[1]), v))
    return int(k), int(c)


def pick_cell(table: pd.DataFrame, context: int | None = None, continuation: int | None = None) -> tuple[int, int]:
    """The cell asked for (checked against the table), else the table's main cell."""
    ks, cs = sorted(table["context_len"].unique()), sorted(table["continuation_len"].unique())
    if not ks:
        raise MemdynError("the score table is empty")
    default_k, default_c = main_cell(ks, cs)
    k = default_k if context is None else context
    c = default_c if continuation is None else continuation
    if k not in ks or c not in cs:
        raise MemdynError(f"no scores for context {k} / continuation {c} (contexts {ks}, continuations {cs})")
    return int(k), int(c)


def last_revisions(table: pd.DataFrame) -> pd.Series:
    """model -> the revision with the largest step that the table holds for it."""
    return table.sort_values("step").groupby("model")["revision"].last()


def score_classes(scores, edges=CLASS_EDGES) -> np.ndarray:
    """Class index per score: 0 unmemorized (<= edges[0]), 2 memorized (>= edges[1]), 1 partial."""
    s = np.asarray(scores, dtype=np.float64)
    return np.where(s <= edges[0], 0, np.where(s >= edges[1] - 1e-9, 2, 1)).astype(np.int64)


def bin_labels(edges=BIN_EDGES) -> list[str]:
    bounds = [0.0, *edges, 1.0]
    return [f"<={hi:g}" if i < len(edges) else f">{bounds[i]:g}" for i, hi in enumerate(bounds[1:])]


def score_bins(scores, edges=BIN_EDGES) -> np.ndarray:
    """Bin index per score: bin i holds edges[i-1] < score <= edges[i]."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(scores, dtype=np.float64), side="left")
