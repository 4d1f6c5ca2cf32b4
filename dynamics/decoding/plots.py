"""Figures of the decoding dynamics, drawn from the tables (boundary.py, embeddings.py).

Every function takes a table and returns a matplotlib Figure; `save` writes it as PNG and SVG.
Figures are built with `matplotlib.figure.Figure` (no pyplot), so nothing depends on or changes
the global backend: rendering uses Agg whatever the session uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dynamics.scoring.grid import CLASSES
from dynamics.files import save_figure

CLASS_COLORS = {"unmemorized": "tab:blue", "partial": "tab:orange", "memorized": "tab:red", "random": "tab:gray"}
LABELS = {"entropy_nats": "entropy (nats)", **{f"orig_n{n}": f"{n}-gram count (true tokens)" for n in range(1, 6)},
          **{f"gen_n{n}": f"{n}-gram count (generated tokens)" for n in range(1, 6)}}


def save(fig: Figure, stem: str | Path) -> list[Path]:
    """Write fig to STEM.png and STEM.svg (atomically); returns the paths."""
    paths = []
    for ext in ("png", "svg"):
        path = Path(f"{stem}.{ext}")
        save_figure(fig, path, ext, dpi=120)
        paths.append(path)
    return paths


def _models(table: pd.DataFrame) -> list[str]:
    """Models in size order."""
    return table.sort_values(["params", "model"])["model"].drop_duplicates().tolist()


def _group_order(groups) -> list[str]:
    groups = list(dict.fromkeys(groups))
    rank = {g: i for i, g in enumerate([*CLASSES, "random"])}
    return sorted(groups, key=lambda g: (0, int(g), "") if g.isdigit() else (1, rank.get(g, 99), g))


def _colors(groups: list[str]) -> dict:
    from matplotlib import colormaps

    levels = [g for g in groups if g.isdigit()]
    cmap = colormaps["viridis"]
    top = max([int(g) for g in levels], default=1) or 1
    return {g: cmap(int(g) / top) if g.isdigit() else CLASS_COLORS.get(g, "black") for g in groups}


def _panels(n: int, width: float = 4.0, height: float = 3.2, max_cols: int = 4) -> tuple[Figure, list]:
    """n panels in rows of at most max_cols; unused cells are hidden."""
    cols, rows = min(n, max_cols), -(-n // max_cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_curves(curves: pd.DataFrame, metric: str = "entropy_nats", align: str = "boundary", grouping: str = "level",
                log: bool | None = None) -> Figure:
    """Mean metric per position and group, with CI bands; one panel per model size."""
    t = curves[(curves["metric"] == metric) & (curves["align"] == align) & (curves["grouping"].isin([grouping, "random"]))]
    models = _models(t)
    fig, axes = _panels(max(1, len(models)))
    log = metric != "entropy_nats" if log is None else log
    colors = _colors(_group_order(t["group"]))  # one colour per level across panels
    for ax, model in zip(axes, models):
        part = t[t["model"] == model]
        groups = _group_order(part["group"])
        for g in groups:
            line = part[part["group"] == g].sort_values("position")
            ax.plot(line["position"], line["mean"], color=colors[g], label=g, lw=1.2, ls="--" if g == "random" else "-")
            ax.fill_between(line["position"], line["ci_lo"], line["ci_hi"], color=colors[g], alpha=0.15, lw=0)
        ax.axvline(0, color="black", lw=0.8, ls=":")
        ax.set_title(model)
        ax.set_xlabel("position (0 = first continuation token)" if align == "boundary" else "position (0 = first mismatch)")
        if log:
            ax.set_yscale("log")
    if models:
        axes[0].set_ylabel(LABELS.get(metric, metric))
        # one legend for every group of every panel: a group can be missing from the last panel
        from matplotlib.lines import Line2D

        order = _group_order(t["group"])
        handles = [Line2D([], [], color=colors[g], ls="--" if g == "random" else "-", label=g) for g in order]
        axes[-1].legend(handles=handles, title="matches" if grouping == "level" else grouping, fontsize=7,
                        ncols=2 if len(order) > 8 else 1)
    return fig


def plot_jumps(jumps: pd.DataFrame, metric: str = "entropy_nats", align: str = "boundary", grouping: str = "class") -> Figure:
    """Boundary-jump bars with CIs: x = model size, one bar per group."""
    t = jumps[(jumps["metric"] == metric) & (jumps["align"] == align) & (jumps["grouping"] == grouping)]
    models = _models(t)
    groups = _group_order(t["group"])
    colors = _colors(groups)
    fig = Figure(figsize=(min(16.0, max(4.0, 1.0 + 0.4 * len(models) * len(groups))), 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        part = t[t["group"] == g].set_index("model").reindex(models)
        x = np.arange(len(models)) + (i - (len(groups) - 1) / 2) * width
        err = np.abs(np.vstack([part["jump"] - part["ci_lo"], part["ci_hi"] - part["jump"]]))
        ax.bar(x, part["jump"], width, yerr=np.nan_to_num(err), color=colors[g], label=g, capsize=2)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_xlabel("model")
    ax.set_ylabel(f"jump in {LABELS.get(metric, metric)}")
    ax.legend(fontsize=7, title="matches" if grouping == "level" else None)
    return fig


def plot_distances(distances: pd.DataFrame, metric: str = "cosine", step: int = 0, layer: int | None = None) -> Figure:
    """Distance matrices between score levels' mean states at one decoding step; one panel per model."""
    t = distances[distances["step"] == step]
    models = _models(t)
    fig, axes = _panels(max(1, len(models)), 3.6, 3.2)
    for ax, model in zip(axes, models):
        part = t[t["model"] == model]
        part = part[part["layer"] == (part["layer"].max() if layer is None else layer)]
        m = part.pivot(index="level_a", columns="level_b", values=metric)
        im = ax.imshow(m.to_numpy(), cmap="magma")
        ax.set_xticks(range(len(m.columns)), m.columns, fontsize=6)
        ax.set_yticks(range(len(m.index)), m.index, fontsize=6)
        ax.set_title(f"{model} ({metric}, step {step})")
        ax.set_xlabel("matches")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_projection(projections: pd.DataFrame, method: str = "pca", layer: int | None = None) -> Figure:
    """Per-sequence states (dots) and level-mean trajectories over decoding steps (lines), 2-D."""
    t = projections[projections["method"] == method]
    models = _models(t)
    fig, axes = _panels(max(1, len(models)), 4.0, 3.6)
    colors = _colors([str(v) for v in sorted(t["level"].unique())])
    for ax, model in zip(axes, models):
        part = t[t["model"] == model]
        part = part[part["layer"] == (part["layer"].max() if layer is None else layer)]
        levels = sorted(part["level"].unique())
        seqs = part[part["kind"] == "sequence"]
        ax.scatter(seqs["x"], seqs["y"], c=[colors[str(v)] for v in seqs["level"]], s=6, alpha=0.4, lw=0)
        for v in levels:
            traj = part[(part["kind"] == "level_mean") & (part["level"] == v)].sort_values("step")
            ax.plot(traj["x"], traj["y"], "-o", color=colors[str(v)], ms=2, lw=1, label=str(v))
        ax.set_title(f"{model} ({method.upper()})")
    if models:
        axes[-1].legend(title="matches", fontsize=6, ncols=2 if len(levels) > 8 else 1)
    return fig


def plot_separation(separation: pd.DataFrame, layer: int | None = None) -> Figure:
    """Silhouette and linear-probe accuracy against model size, per contrast."""
    t = separation.copy()
    if layer is not None:
        t = t[t["layer"] == layer]
    else:  # each model's last collected layer
        t = t[t["layer"] == t.groupby("model")["layer"].transform("max")]
    models = _models(t)
    fig, axes = _panels(2, 4.0, 3.2)
    for contrast, part in t.groupby("contrast"):
        part = part.set_index("model").reindex(models)
        axes[0].plot(models, part["silhouette"], "-o", label=contrast)
        axes[1].plot(models, part["probe_accuracy"], "-o", label=contrast)
        axes[1].plot(models, part["chance_accuracy"], ":", color=axes[1].lines[-1].get_color(), lw=0.8)
    axes[0].set_ylabel("silhouette score")
    axes[1].set_ylabel("probe accuracy (dotted: chance)")
    for ax in axes:
        ax.set_xlabel("model")
    axes[0].legend(fontsize=7)
    return fig


def write_figures(tables: dict[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Every figure of the dynamics tables (keys: curves, jumps, distances, projections, separation)."""
    out_dir = Path(out_dir)
    paths = []
    curves, jumps = tables.get("curves"), tables.get("jumps")
    if curves is not None and len(curves):
        for metric in ("entropy_nats", "orig_n1", "gen_n1"):
            for grouping in ("level", "class"):
                paths += save(plot_curves(curves, metric, "boundary", grouping), out_dir / f"curve_{metric}_{grouping}")
        if (curves["align"] == "mismatch").any():
            paths += save(plot_curves(curves, "entropy_nats", "mismatch", "level"), out_dir / "curve_entropy_nats_mismatch")
    if jumps is not None and len(jumps):
        for metric in ("entropy_nats", "orig_n1"):
            paths += save(plot_jumps(jumps, metric, "boundary", "class"), out_dir / f"jump_{metric}")
    distances = tables.get("distances")
    if distances is not None and len(distances):
        for metric in ("cosine", "l2"):
            paths += save(plot_distances(distances, metric, 0), out_dir / f"distance_{metric}_step0")
    projections = tables.get("projections")
    if projections is not None and len(projections):
        for method in projections["method"].unique():
            paths += save(plot_projection(projections, method), out_dir / f"projection_{method}")
    separation = tables.get("separation")
    if separation is not None and len(separation):
        paths += save(plot_separation(separation), out_dir / "separation")
    return paths
