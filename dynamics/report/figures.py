"""Report figures not in dynamics.decoding.plots (which draws the boundary and embedding figures):
memorized share lines, annotated matrices, score distributions, capacity bars.
Built on matplotlib.figure.Figure, like dynamics.decoding.plots, so no global backend is touched."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dynamics.family.train import size_name


def plot_share_lines(t: pd.DataFrame, x: str, line: str, xlabel: str, logx: bool = False, title: str = "") -> Figure:
    """memorized_share (y, percent) against column x, one line per value of column `line`."""
    fig = Figure(figsize=(4.6, 3.2), layout="constrained")
    ax = fig.subplots()
    for value, part in t.groupby(line, sort=False):
        part = part.sort_values(x)
        ax.plot(part[x], 100 * part["memorized_share"], "-o", ms=3, label=str(value))
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(sorted(t[x].unique()), [size_name(int(v)) for v in sorted(t[x].unique())], fontsize=7)
        ax.minorticks_off()  # minor labels of a short log axis overlap
    ax.set_xlabel(xlabel)
    ax.set_ylabel("memorized (score 1), % of samples")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, title=line.replace("_", " "), title_fontsize=7)
    return fig


def plot_matrix(m: pd.DataFrame, title: str, xlabel: str, ylabel: str, fmt: str = "{:.2f}", cmap: str = "Blues") -> Figure:
    """An annotated heatmap of a numeric DataFrame (rows = index, columns = columns)."""
    values = m.to_numpy(dtype=float)
    fig = Figure(figsize=(1.0 + 0.8 * m.shape[1], 1.0 + 0.6 * m.shape[0]), layout="constrained")
    ax = fig.subplots()
    ax.imshow(np.nan_to_num(values), cmap=cmap, vmin=0, vmax=max(np.nanmax(values), 1e-9) if np.isfinite(values).any() else 1)
    hi = np.nanmax(values) if np.isfinite(values).any() else 0
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "-" if np.isnan(v) else fmt.format(v), ha="center", va="center", fontsize=7,
                color="white" if hi and v > 0.6 * hi else "black")
    ax.set_xticks(range(m.shape[1]), [str(c) for c in m.columns], fontsize=7)
    ax.set_yticks(range(m.shape[0]), [str(r) for r in m.index], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return fig


def plot_distribution(levels: pd.DataFrame, title: str) -> Figure:
    """Share of samples at each score value (bars)."""
    fig = Figure(figsize=(4.6, 3.0), layout="constrained")
    ax = fig.subplots()
    levels = levels.sort_values("score")
    ax.bar([f"{s:.2g}" for s in levels["score"]], 100 * levels["share"], color="tab:blue")
    ax.set_xlabel("score (matches / continuation length)")
    ax.set_ylabel("% of samples")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title, fontsize=9)
    return fig


def plot_bars(t: pd.DataFrame, x: str, columns: list[tuple[str, str]], title: str = "") -> Figure:
    """One panel per (column, label): bars of t[column] over t[x]."""
    fig = Figure(figsize=(3.6 * len(columns), 3.0), layout="constrained")
    for ax, (col, label) in zip(np.atleast_1d(fig.subplots(1, len(columns))), columns):
        ax.bar(t[x].astype(str), t[col], color="tab:purple")
        ax.set_xlabel(x)
        ax.set_ylabel(label)
    fig.suptitle(title, fontsize=9)
    return fig
