"""Figures of the analyses (matplotlib.figure.Figure, no global backend): dose-response,
canaries by repetition count and insertion point, forgetting curves, taxonomy shares."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def _legend(ax, title: str = "size") -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty panel has nothing to label
        ax.legend(fontsize=7, title=title, title_fontsize=7)


def _err(part: pd.DataFrame, y: str, lo: str, hi: str) -> np.ndarray:
    return np.clip(np.stack([part[y] - part[lo], part[hi] - part[y]]), 0, None)


def plot_dose_response(bins: pd.DataFrame, fits: pd.DataFrame, sizes: list[str], title: str = "") -> Figure:
    """Memorized share (%) per occurrence-count bin, one line per size (95% CI bars), with the
    logistic fit on log2 count drawn through it."""
    fig = Figure(figsize=(5.0, 3.4), layout="constrained")
    ax = fig.subplots()
    for size in sizes:
        part = bins[bins["model"] == size].sort_values("bin_lo")
        if part.empty:
            continue
        line = ax.errorbar(part["count_mean"], 100 * part["share"], yerr=100 * _err(part, "share", "ci_lo", "ci_hi"),
                           fmt="o", ms=3, capsize=2, label=size)
        fit = fits[fits["model"] == size]
        if len(fit) and np.isfinite(fit["slope"].iloc[0]):
            x = np.geomspace(max(part["count_mean"].min(), 1), part["count_mean"].max(), 50)
            z = fit["intercept"].iloc[0] + fit["slope"].iloc[0] * np.log2(x)
            ax.plot(x, 100 / (1 + np.exp(-z)), "-", lw=1, color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("occurrences of the sample's context + continuation in the training stream")
    ax.set_ylabel("memorized (score 1), %")
    ax.set_title(title, fontsize=9)
    _legend(ax)
    return fig


def plot_slopes(fits: pd.DataFrame, sizes: list[str]) -> Figure:
    """The dose-response slope (log-odds per doubling) at every checkpoint, one line per size."""
    fig = Figure(figsize=(5.0, 3.0), layout="constrained")
    ax = fig.subplots()
    for size in sizes:
        part = fits[(fits["model"] == size) & np.isfinite(fits["slope"])].sort_values("step")
        if len(part):
            ax.errorbar(part["step"], part["slope"], yerr=_err(part, "slope", "slope_lo", "slope_hi"), fmt="-o", ms=3,
                        capsize=2, label=size)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("training step")
    ax.set_ylabel("log-odds of memorization per doubling")
    _legend(ax)
    return fig


def plot_canaries(t: pd.DataFrame, column: str, sizes: list[str], log: bool = True) -> Figure:
    """Two panels against `column` (count or insert): memorized share and mean exposure, per size."""
    fig = Figure(figsize=(7.6, 3.0), layout="constrained")
    axes = fig.subplots(1, 2)
    order = sorted(t[column].unique(), key=lambda v: ("early", "middle", "late").index(v) if isinstance(v, str) else v)
    pos = {v: i for i, v in enumerate(order)}
    for size in sizes:
        part = t[t["model"] == size].copy()
        if part.empty:
            continue
        x = part[column] if log and column == "count" else part[column].map(pos)
        axes[0].errorbar(x, 100 * part["share"], yerr=100 * _err(part, "share", "share_lo", "share_hi"), fmt="-o", ms=3,
                         capsize=2, label=size)
        axes[1].errorbar(x, part["exposure"], yerr=_err(part, "exposure", "exposure_lo", "exposure_hi"), fmt="-o", ms=3,
                         capsize=2, label=size)
    for ax, label in zip(axes, ("memorized canaries, %", "exposure, bits")):
        if log and column == "count":
            ax.set_xscale("log", base=2)
        else:
            ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("repetitions" if column == "count" else "insertion point")
        ax.set_ylabel(label)
    _legend(axes[0])
    return fig


def plot_forgetting(f: pd.DataFrame, sizes: list[str]) -> Figure:
    """Mean score and exposure of the early canaries at every checkpoint after their last copy."""
    fig = Figure(figsize=(7.6, 3.0), layout="constrained")
    axes = fig.subplots(1, 2)
    for size in sizes:
        part = f[f["model"] == size].sort_values("step")
        if len(part):
            axes[0].plot(part["step"], part["mean_score"], "-o", ms=3, label=size)
            axes[1].errorbar(part["step"], part["exposure"], yerr=_err(part, "exposure", "exposure_lo", "exposure_hi"),
                             fmt="-o", ms=3, capsize=2, label=size)
    for ax, label in zip(axes, ("mean verbatim score", "exposure, bits")):
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
    _legend(axes[0])
    return fig


def plot_taxonomy(shares: pd.DataFrame, sizes: list[str]) -> Figure:
    """Memorized share per category against model size (final checkpoints), 95% CI bars."""
    fig = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax = fig.subplots()
    pos = {s: i for i, s in enumerate(sizes)}
    for cat, part in shares.groupby("category", sort=True):
        part = part.assign(x=part["model"].map(pos)).sort_values("x")
        ax.errorbar(part["x"], 100 * part["share"], yerr=100 * _err(part, "share", "ci_lo", "ci_hi"), fmt="-o", ms=3,
                    capsize=2, label=f"{cat}")
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set_xlabel("model size")
    ax.set_ylabel("memorized (score 1), %")
    ax.legend(fontsize=7)
    return fig


def plot_taxonomy_steps(shares: pd.DataFrame, model: str) -> Figure:
    """One model's memorized share per category at every checkpoint, 95% CI bars."""
    fig = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax = fig.subplots()
    for cat, part in shares[shares["model"] == model].groupby("category", sort=True):
        part = part.sort_values("step")
        ax.errorbar(part["step"], 100 * part["share"], yerr=100 * _err(part, "share", "ci_lo", "ci_hi"), fmt="-o", ms=3,
                    capsize=2, label=cat)
    ax.set_xlabel("training step")
    ax.set_ylabel("memorized (score 1), %")
    ax.set_title(model, fontsize=9)
    _legend(ax, "category")
    return fig
