"""Embedding trajectories: hidden states along the greedy continuation, per score level.

Decoding step i (0..c-1) is represented by the state that PRODUCED generated token i, i.e. the
hidden state at input position k - 1 + i (relative position i - 1). Per (model, layer):

  distances    per step, the mean state of each score level (matches) and the cosine and L2
               distances between every two levels' means
  projections  a 2-D PCA (and UMAP, fixed random_state) space fitted on the per-sequence states
               (each sequence's mean over decoding steps); the level means of every step are
               projected into the same space, so each level traces a trajectory over the steps
  separation   how well memorized (score 1) and unmemorized (score 0) sequences separate, and all
               levels: silhouette score of the per-sequence states, and the held-out accuracy of a
               linear probe (standardised logistic regression, seeded stratified 70/30 split)

Tables (OUT/tables/, Parquet and CSV):
  distances    model, params, layer, step, level_a, level_b, cosine, l2
  projections  model, params, layer, method (pca | umap), kind (sequence | level_mean), row, seq_idx,
               level, step (-1 for sequences), x, y
  separation   model, params, layer, contrast (memorized_vs_unmemorized | levels), n, n_classes,
               silhouette, probe_accuracy, probe_balanced_accuracy, chance_accuracy
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

CHUNK_ROWS = 512  # rows of a memory-mapped [n, T, d] array held in float32 at once


def step_summaries(hidden: np.ndarray, levels: np.ndarray, k: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunked pass over hidden [n, T, d]: per-sequence mean over decoding steps [n, d], the
    distinct levels [L], and the level means per step [L, c, d]."""
    n, _, d = hidden.shape
    values, inverse = np.unique(levels, return_inverse=True)
    sums = np.zeros((len(values), c, d))
    seq_mean = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS):
        states = np.asarray(hidden[start : start + CHUNK_ROWS, k - 1 : k - 1 + c], dtype=np.float64)  # [b, c, d]
        seq_mean[start : start + len(states)] = states.mean(1)
        np.add.at(sums, inverse[start : start + len(states)], states)
    counts = np.bincount(inverse, minlength=len(values))
    return seq_mean, values, sums / counts[:, None, None]


def distance_table(level_means: np.ndarray, levels: np.ndarray) -> pd.DataFrame:
    """Cosine and L2 distances between the level means of every step: level_means [L, c, d]."""
    from sklearn.metrics import pairwise_distances

    L, c, _ = level_means.shape
    a, b = np.meshgrid(levels, levels, indexing="ij")
    rows = []
    for step in range(c):
        m = level_means[:, step]  # [L, d]
        rows.append(pd.DataFrame({
            "step": step, "level_a": a.ravel(), "level_b": b.ravel(),
            "cosine": pairwise_distances(m, metric="cosine").ravel(), "l2": pairwise_distances(m, metric="euclidean").ravel(),
        }))
    return pd.concat(rows, ignore_index=True)


# umap-learn computes every distance below this many rows (exactly), through sklearn with its own
# numba metric called once per pair from Python: a fit of 1693 states of 256 dimensions took 7.6 s,
# against 2.9 s on the same distances computed by sklearn's vectorised euclidean (2-core CPU, idle,
# 93-95 G MAC/s). Above it umap-learn searches neighbours approximately itself.
UMAP_EXACT_ROWS = 4096


# umap-learn's numba kernels that it compiles without numba's cache, anew in every process: 8 s of
# each `memdyn dynamics` (600 states, idle 2-core CPU at 96 G MAC/s: the first fit in a process
# 10.6 s with umap-learn's own caching, 2.4 s with these cached too, 23 s with nothing cached yet).
# Its layout epoch, jitted anew inside each call (about 1 s), cannot be cached from outside.
_UNCACHED_UMAP_KERNELS = (("umap.utils", "fast_knn_indices"), ("umap.umap_", "smooth_knn_dist"),
                          ("umap.umap_", "compute_membership_strengths"))


@functools.cache
def _import_umap():
    """umap, its numba kernels cached across processes (compiled on first use, ~20 s)."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "memdyn" / "numba"))
    import importlib

    import umap

    for module, name in _UNCACHED_UMAP_KERNELS:
        kernel = getattr(importlib.import_module(module), name, None)  # (another umap-learn may lack one)
        if hasattr(kernel, "enable_caching"):
            kernel.enable_caching()
    return umap


def _umap(seed: int, n: int, precomputed: bool):
    umap = _import_umap()
    return umap.UMAP(n_components=2, n_neighbors=max(2, min(15, n - 1)), random_state=seed, n_jobs=1,
                     metric="precomputed" if precomputed else "euclidean")


def _fit_umap(seq_states: np.ndarray, queries: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """UMAP of seq_states [n, d] (euclidean), and queries [m, d] placed in it: ([n, 2], [m, 2])."""
    from sklearn.metrics import pairwise_distances

    n = len(seq_states)
    if n >= UMAP_EXACT_ROWS:
        reducer = _umap(seed, n, precomputed=False)
        return reducer.fit_transform(seq_states), reducer.transform(queries)
    reducer = _umap(seed, n, precomputed=True)
    with warnings.catch_warnings():  # (that inverse_transform is unavailable, and what a precomputed transform expects)
        warnings.filterwarnings("ignore", message=".*precomputed metric.*", category=UserWarning)
        xy = reducer.fit_transform(pairwise_distances(seq_states))
        return xy, reducer.transform(pairwise_distances(queries, seq_states))


def project(seq_states: np.ndarray, level_means: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit a 2-D `pca` or `umap` map on seq_states [n, d]; returns ([n, 2], level means [L, c, 2])."""
    from sklearn.decomposition import PCA

    import torch

    L, c, d = level_means.shape
    threads = torch.get_num_threads()
    try:
        queries = level_means.reshape(L * c, d).astype(np.float32)
        if method == "pca":
            reducer = PCA(n_components=2, svd_solver="full")
            xy, means = reducer.fit_transform(seq_states), reducer.transform(queries)
        else:
            xy, means = _fit_umap(seq_states, queries, seed)
        means = means.reshape(L, c, 2)
    finally:
        # numba's OpenMP layer (UMAP) resets the OpenMP pool torch shares to every core: restore it,
        # or later training in this process would run on another thread count (other float sums)
        torch.set_num_threads(threads)
    return xy, means


def projection_table(seqs: pd.DataFrame, seq_states: np.ndarray, levels: np.ndarray, level_means: np.ndarray,
                     seed: int, use_umap: bool) -> pd.DataFrame:
    L, c, _ = level_means.shape
    methods = ["pca"] + (["umap"] if use_umap and len(seq_states) >= 4 else [])
    if len(seq_states) < 2:
        return pd.DataFrame()
    rows = []
    for method in methods:
        xy, means = project(seq_states, level_means, method, seed)
        rows.append(pd.DataFrame({
            "method": method, "kind": "sequence", "row": seqs["row"].to_numpy(), "seq_idx": seqs["seq_idx"].to_numpy(),
            "level": seqs["matches"].to_numpy(), "step": -1, "x": xy[:, 0], "y": xy[:, 1],
        }))
        rows.append(pd.DataFrame({
            "method": method, "kind": "level_mean", "row": -1, "seq_idx": -1, "level": np.repeat(levels, c),
            "step": np.tile(np.arange(c), L), "x": means[..., 0].ravel(), "y": means[..., 1].ravel(),
        }))
    return pd.concat(rows, ignore_index=True)


def separation(states: np.ndarray, labels: np.ndarray, seed: int, test_size: float = 0.3) -> dict:
    """Silhouette score and held-out linear-probe accuracy of labelled states [n, d].

    Classes with fewer than 2 members are dropped; NaN when fewer than 2 classes remain or the
    split cannot hold every class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, silhouette_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    values, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, values[counts >= 2])
    x, y = states[keep], labels[keep]
    out = {"n": int(keep.sum()), "n_classes": int((counts >= 2).sum()), "silhouette": np.nan,
           "probe_accuracy": np.nan, "probe_balanced_accuracy": np.nan, "chance_accuracy": np.nan}
    if out["n_classes"] < 2:
        return out
    out["silhouette"] = float(silhouette_score(x, y))
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    except ValueError:  # too few samples for a stratified split
        return out
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_tr, y_tr)
    pred = probe.predict(x_te)
    out["probe_accuracy"] = float(accuracy_score(y_te, pred))
    with warnings.catch_warnings():  # a rare level may be predicted but absent from the test split
        warnings.simplefilter("ignore", UserWarning)
        out["probe_balanced_accuracy"] = float(balanced_accuracy_score(y_te, pred))
    out["chance_accuracy"] = float(np.unique(y_te, return_counts=True)[1].max() / len(y_te))
    return out


def embedding_tables(seqs: pd.DataFrame, hidden: np.ndarray, meta: dict, layer: int, seed: int = 0,
                     use_umap: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(distances, projections, separation) of one model's collected hidden states at one layer."""
    k, c = int(meta["context_len"]), int(meta["continuation_len"])
    levels_per_row = seqs["matches"].to_numpy()
    seq_states, levels, means = step_summaries(hidden, levels_per_row, k, c)
    head = {"model": meta["model"], "params": meta["params"], "layer": layer}
    distances = distance_table(means, levels)
    projections = projection_table(seqs, seq_states, levels, means, seed, use_umap)
    binary = np.isin(levels_per_row, [0, c])
    rows = [
        {"contrast": "memorized_vs_unmemorized", **separation(seq_states[binary], levels_per_row[binary] == c, seed)},
        {"contrast": "levels", **separation(seq_states, levels_per_row, seed)},
    ]
    sep = pd.DataFrame(rows)
    return tuple(t.assign(**head)[list(head) + list(t.columns)] if len(t) else t for t in (distances, projections, sep))
