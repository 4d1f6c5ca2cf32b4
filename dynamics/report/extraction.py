"""Report section "Beyond greedy": greedy memorization beside extraction under sampling (the
(n, 0.5)-discoverable shares of Hayes et al. 2024) and approximate memorization (BLEU-4 >= 0.75,
Ippolito et al. 2023), from the score table's extraction and near-verbatim columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from dynamics.report.document import Figure, Section, Table, Text
from dynamics.report.findings import at, pct, shares, trend
from dynamics.scoring.grid import pick_cell
from dynamics.scoring.transitions import DISCOVERY_DRAWS, extraction_schemes, summarize

TITLE = "Beyond greedy: extraction under sampling and near-verbatim"
MISSING = ("The score table has no extraction or near-verbatim columns (scored before they existed, or with "
           "`--schemes ''`): rerun `memdyn score` into a new directory.")


def plot_discovery(t: pd.DataFrame, schemes: list[str], models: list[str]) -> MplFigure:
    """One panel per model: the (n, 0.5)-discoverable share against n, one line per scheme, beside
    the greedy (score 1) and approximate (BLEU-4 >= threshold) shares as horizontal lines."""
    fig = MplFigure(figsize=(0.6 + 3.0 * len(models), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models), sharey=True))
    for ax, model in zip(axes, models):
        row = t[t["model"] == model].iloc[0]
        for scheme in schemes:
            ax.plot(DISCOVERY_DRAWS, [100 * row[f"disc_n{n}_{scheme}"] for n in DISCOVERY_DRAWS], "-o", ms=3, label=scheme)
        ax.axhline(100 * row["memorized_share"], color="black", ls="--", lw=1, label="greedy")
        ax.axhline(100 * row["approx_memorized_share"], color="grey", ls=":", lw=1, label="BLEU-4 >= 0.75")
        ax.set_xscale("log")
        ax.set_xlabel("draws n")
        ax.set_title(model, fontsize=9)
    axes[0].set_ylabel("(n, 0.5)-discoverable, % of samples")
    axes[-1].legend(fontsize=6)
    return fig


def _finding(main: pd.DataFrame, schemes: list[str], model: str, k: int, c: int) -> str:
    """The numbers of one model at the main cell, and the trend with size when there are several."""
    row = main[main["model"] == model].iloc[0]
    n = DISCOVERY_DRAWS[-1]
    best = max(schemes, key=lambda s: row[f"disc_n{n}_{s}"])
    disc, greedy = row[f"disc_n{n}_{best}"], row["memorized_share"]
    ratio = (f"{disc / greedy:.3g}x the greedy share" if greedy > 0 else
             "where greedy decoding reproduces none" if disc > 0 else "as greedy decoding does")
    text = (f"At context {k} / continuation {c}, the {model} model reproduces {pct(greedy)} of samples greedily and "
            f"{pct(row['approx_memorized_share'])} approximately (BLEU-4 >= 0.75, mean BLEU-4 {row['mean_bleu4']:.3f}); "
            f"sampling with {best} makes {pct(disc)} ({n}, 0.5)-discoverable, {ratio}, and {pct(row[f'disc_n1_{best}'])} "
            f"are reproduced by one draw with probability >= 0.5.")
    if main["model"].nunique() > 1:
        text += (f" Across the {main['model'].nunique()} sizes the ({n}, 0.5)-discoverable share under {best} "
                 f"{trend(main[f'disc_n{n}_{best}'])} with size (greedy: {trend(main['memorized_share'])}).")
    return text


def extraction_section(run, model: str | None = None) -> Section:
    """Family overview (model None): every size at the main cell. Per size: that size, plus the
    grid of cells."""
    section = Section(TITLE)
    schemes = extraction_schemes(run.scores)
    if not schemes or "bleu4" not in run.scores:
        section.blocks.append(Text(MISSING))
        return section
    k, c = run.cell
    t = shares(run.scores, run.params)
    main = at(t, context_len=k, continuation_len=c)
    models = list(main["model"]) if model is None else [model]
    focus = models[-1]
    section.blocks.append(Figure.of("extraction" if model is None else "extraction_size",
                                    plot_discovery(main, schemes, models), _finding(main if model is None else at(main, model=model),
                                                                                    schemes, focus, k, c)))
    n = DISCOVERY_DRAWS[-1]
    cols = ["memorized_share", "approx_memorized_share", "mean_bleu4", *(f"disc_n{d}_{s}" for s in schemes for d in (1, n))]
    if model is None:
        table = main[["model", "params", *cols]]
        caption = f"Greedy, approximate and sampling extraction at context {k} / continuation {c}, per size."
    else:
        table = at(t, model=model)[["context_len", "continuation_len", *cols]]
        caption = f"Greedy, approximate and sampling extraction of {model} over the grid of cells."
    section.blocks.append(Table(table.reset_index(drop=True), caption + " disc_n<N>_<scheme>: share (N, 0.5)-discoverable."))
    section.blocks.extend(_checkpoints(run, model or focus, schemes))
    return section


def _checkpoints(run, model: str, schemes: list[str]) -> list:
    """Greedy against sampling extraction per checkpoint of one model, when checkpoints were scored."""
    ck = run.checkpoints
    if ck is None or not len(ck) or not set(f"n50_{s}" for s in schemes) <= set(ck.columns):
        return []
    part = ck[ck["model"] == model]
    if part.empty:
        return []
    k, c = pick_cell(part)
    s = summarize(at(part, context_len=k, continuation_len=c)).sort_values("step")
    n = DISCOVERY_DRAWS[-1]
    cols = ["step", "memorized_share", "approx_memorized_share", *(f"disc_n{n}_{sc}" for sc in schemes)]
    first, last = s.iloc[0], s.iloc[-1]
    best = max(schemes, key=lambda sc: last[f"disc_n{n}_{sc}"])
    caption = (f"{model} over training at context {k} / continuation {c}: greedy memorized share "
               f"{pct(first.memorized_share)} at step {first.step} and "
               f"{pct(last.memorized_share)} at step {last.step}; ({n}, 0.5)-discoverable under {best} "
               f"{pct(first[f'disc_n{n}_{best}'])} and {pct(last[f'disc_n{n}_{best}'])}.")
    return [Table(s[cols].reset_index(drop=True), caption)]
