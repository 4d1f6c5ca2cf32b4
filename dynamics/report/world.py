"""Report sections on the embedded world's analyses (WORKDIR/analyses, dynamics/analyses/stage.py):
dose-response of memorization on duplication, canaries (score, exposure, forgetting), and the
recitation / reconstruction / recollection taxonomy. Every caption states its finding in numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dynamics.analyses import plots
from dynamics.report.document import Figure, Section, Table, Text
from dynamics.report.findings import in_size_order, pct
from dynamics.workdir import Workdir

MISSING = "The analyses stage has not run on this work directory ({what}): `memdyn run --workdir {root}` runs it."


def missing(run: Workdir, part: str, what: str) -> Text:
    """Why a section has no tables: the stage skipped it for this family, or it has not run."""
    from dynamics.analyses.stage import skipped

    why = skipped(run.root).get(part)
    return Text(f"Not available for this family: {why}") if why else Text(MISSING.format(what=what, root=run.root))


def table(run: Workdir, name: str) -> pd.DataFrame | None:
    path = run.analyses_dir / f"{name}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def _final(t: pd.DataFrame) -> pd.DataFrame:
    return t[t["step"] == t.groupby("model")["step"].transform("max")]


def _ci(lo: float, hi: float, fmt: str = "{:+.2f}") -> str:
    return f"95% CI {fmt.format(lo)} to {fmt.format(hi)}" if np.isfinite(lo) and np.isfinite(hi) else "no CI: one class"


CAPTION_MIN_BIN = 20  # the caption's most duplicated bin holds at least so many samples (tiny's top bin can hold one)


def dose_caption(bins: pd.DataFrame, fits: pd.DataFrame, model: str) -> str:
    b = bins[bins["model"] == model].sort_values("bin_lo")
    f = fits[fits["model"] == model]
    if b.empty or f.empty:
        return f"No dose-response for {model}."
    full = b[b["n"] >= CAPTION_MIN_BIN]
    lo, hi = b.iloc[0], (full if len(full) else b).iloc[-1]
    r = f.iloc[0]
    up = int(((fits["slope_lo"] > 0)).sum())
    if not np.isfinite(r.slope):
        return (f"The {model} model memorizes {int(r.memorized)} of its {int(r.n)} samples at the final checkpoint, "
                f"too few of one class for a dose-response fit (at least 5 of each needed; occurrence counts "
                f"{lo.bin} to {hi.bin}, rank correlation of score and count {r.spearman:.2f}).")
    return (f"The {model} model memorizes {pct(lo.share)} of the samples whose span occurs {lo.bin} time(s) in the training "
            f"stream (n={lo.n}) and {pct(hi.share)} of those occurring {hi.bin} times (n={hi.n}); the log-linear "
            f"(logistic) fit gives {r.slope:+.2f} log-odds per doubling of the occurrence count ({_ci(r.slope_lo, r.slope_hi)}). "
            f"The slope's interval lies above 0 for {up} of {len(fits)} sizes (final checkpoints).")


def duplication_section(run: Workdir, model: str | None = None) -> Section:
    section = Section("Duplication: memorization against occurrence count")
    bins, fits = table(run, "dose_bins"), table(run, "dose_fits")
    if bins is None or fits is None:
        section.blocks.append(missing(run, "duplication", "no analyses/dose_bins.parquet"))
        return section
    span_bins, span_fits = bins[bins["measure"] == "span_count"], fits[fits["measure"] == "span_count"]
    fb, ff = _final(span_bins), _final(span_fits)
    sizes = [model] if model else run.sizes
    shown = model or run.sizes[-1]
    section.blocks.append(Figure.of("dose_response", plots.plot_dose_response(fb, ff, sizes, "final checkpoints"),
                                    dose_caption(fb, ff, shown)))
    own = span_fits[span_fits["model"].isin(sizes)]
    if model is None or own["step"].nunique() > 1:
        first = own[np.isfinite(own["slope"])].sort_values("step")
        mine = first[first["model"] == shown]
        text = (f"Dose-response slope of the {shown} model over training: {mine.slope.iloc[0]:+.2f} at step "
                f"{mine.step.iloc[0]} (the first checkpoint with a slope: at least 5 memorized samples, not all at one count) and {mine.slope.iloc[-1]:+.2f} at "
                f"step {mine.step.iloc[-1]} ({_ci(mine.slope_lo.iloc[-1], mine.slope_hi.iloc[-1])})."
                if len(mine) else f"No checkpoint of the {shown} model has a slope: too few memorized samples, or all at one count.")
        section.blocks.append(Figure.of("dose_slopes", plots.plot_slopes(own, sizes), text))
    docs = _final(fits[fits["measure"] == "max_doc_copies"])
    # the span's count first, then the documents', each with the sizes smallest first
    rows = pd.concat([in_size_order(t[t["model"].isin(sizes)], sizes) for t in (ff, docs)])
    rows = rows[["model", "step", "measure", "n", "memorized", "slope", "slope_lo", "slope_hi", "spearman"]]
    section.blocks.append(Table(rows.round(3).reset_index(drop=True),
                                "Logistic fit of memorized (score 1) on log2 of the span's occurrences (span_count) and of "
                                "the largest duplicate count of the sample's documents (max_doc_copies); slope in log-odds "
                                "per doubling with a bootstrap 95% CI over the documents the samples start in; spearman: rank correlation of score "
                                "and count."))
    return section


def canary_caption(by_count: pd.DataFrame, model: str) -> str:
    t = by_count[(by_count["model"] == model) & (by_count["kind"] == "all")].sort_values("count")
    if t.empty:
        return f"No canaries scored for {model}."
    lo, hi = t.iloc[0], t.iloc[-1]
    rising = sum(int(g.sort_values("count")["exposure"].iloc[-1] > g.sort_values("count")["exposure"].iloc[0])
                 for _, g in by_count[by_count["kind"] == "all"].groupby("model"))
    return (f"In the {model} model, canaries seen {hi['count']} times are {pct(hi.share)} memorized (n={hi.n}) with mean "
            f"exposure {hi.exposure:.1f} bits ({_ci(hi.exposure_lo, hi.exposure_hi, '{:.1f}')}), against {pct(lo.share)} "
            f"and {lo.exposure:.1f} bits ({_ci(lo.exposure_lo, lo.exposure_hi, '{:.1f}')}) for canaries seen "
            f"{lo['count']} time(s); exposure rises from the fewest to the most repetitions in {rising} of "
            f"{by_count['model'].nunique()} sizes.")


def insert_caption(by_insert: pd.DataFrame, model: str) -> str:
    t = by_insert[(by_insert["model"] == model) & (by_insert["kind"] == "all")].set_index("insert")
    parts = [f"{i} {t.loc[i, 'exposure']:.1f} bits ({pct(t.loc[i, 'share'])} memorized, n={t.loc[i, 'n']})"
             for i in ("early", "middle", "late") if i in t.index]
    return f"Mean exposure at the end of training of the {model} model by insertion point: {'; '.join(parts)}."


def forgetting_caption(f: pd.DataFrame, model: str) -> str:
    t = f[f["model"] == model].sort_values("step")
    if t.empty:
        return f"No checkpoint of {model} follows the early canaries' last copy."
    a, b = t.iloc[0], t.iloc[-1]
    return (f"Early canaries in the {model} model, once every copy is trained: exposure {a.exposure:.1f} bits and mean "
            f"score {a.mean_score:.2f} at step {a.step}, {b.exposure:.1f} bits and {b.mean_score:.2f} at step {b.step} "
            f"({'forgotten in part' if b.exposure < a.exposure else 'not forgotten'}: {b.exposure - a.exposure:+.1f} bits).")


def canary_section(run: Workdir, model: str | None = None) -> Section:
    section = Section("Canaries: verbatim score and exposure")
    by_count, by_insert, forget = (table(run, n) for n in ("canary_by_count", "canary_by_insert", "canary_forgetting"))
    if by_count is None:
        section.blocks.append(missing(run, "canaries", "no analyses/canary_by_count.parquet"))
        return section
    sizes = [model] if model else run.sizes
    shown = model or run.sizes[-1]
    allk = by_count[by_count["kind"] == "all"]
    section.blocks.append(Figure.of("canary_count", plots.plot_canaries(allk, "count", sizes), canary_caption(by_count, shown)))
    section.blocks.append(Figure.of("canary_insert", plots.plot_canaries(by_insert[by_insert["kind"] == "all"], "insert", sizes, log=False),
                                    insert_caption(by_insert, shown)))
    if forget is not None and len(forget):
        section.blocks.append(Figure.of("canary_forgetting", plots.plot_forgetting(forget, sizes), forgetting_caption(forget, shown)))
    cols = ["model", "kind", "count", "n", "memorized", "share", "mean_score", "exposure", "exposure_lo", "exposure_hi",
            "exposure_empirical"]
    rows = in_size_order(by_count[by_count["model"].isin(sizes)], sizes, "model", "count")
    rows = rows.sort_values("kind", kind="stable")[cols].round(3).reset_index(drop=True)  # all, tokens, words
    section.blocks.append(Table(rows, "Per size, kind and repetition count at the final checkpoint: memorized canaries "
                                "(score 1 on the last min(16, L/2) tokens) and mean exposure (Carlini et al. 2019; "
                                "skew-normal tail of random candidates, and the empirical rank among them) with bootstrap "
                                "95% CIs over canaries."))
    return section


def taxonomy_caption(shares: pd.DataFrame, sizes: list[str], model: str) -> str:
    own = shares[shares["model"] == model].set_index("category")
    parts = [f"{cat} {pct(own.loc[cat, 'share'])} (n={own.loc[cat, 'n']})" for cat in own.index]
    text = f"Memorized share by category in the {model} model: {'; '.join(parts)}."
    rec = shares[shares["category"] == "recollection"].set_index("model")
    if len(sizes) > 1 and sizes[0] in rec.index and sizes[-1] in rec.index:
        text += (f" Recollection rises from {pct(rec.loc[sizes[0], 'share'])} ({sizes[0]}) to "
                 f"{pct(rec.loc[sizes[-1], 'share'])} ({sizes[-1]}).")
    return text


def steps_caption(shares: pd.DataFrame, model: str) -> str:
    """How each category's memorized share moves from the first checkpoint with any memorized sample to the last."""
    own = shares[shares["model"] == model]
    hit = own.groupby("step")["memorized"].sum()
    if not (hit > 0).any():
        return f"The {model} model memorizes no sample at any checkpoint."
    first, last = int(hit[hit > 0].index.min()), int(own["step"].max())
    parts = []
    for cat, g in own.groupby("category", sort=True):
        g = g.set_index("step")
        if first in g.index:
            parts.append(f"{cat} {pct(g.loc[first, 'share'])} -> {pct(g.loc[last, 'share'])}")
    return f"Memorized share per category in the {model} model from step {first} to step {last}: {'; '.join(parts)}."


def taxonomy_section(run: Workdir, model: str | None = None) -> Section:
    section = Section("Recitation, reconstruction, recollection")
    shares, trans = table(run, "taxonomy_shares"), table(run, "taxonomy_transitions")
    if shares is None:
        section.blocks.append(missing(run, "duplication", "no analyses/taxonomy_shares.parquet"))
        return section
    final = _final(shares)
    shown = model or run.sizes[-1]
    if model is None:
        section.blocks.append(Figure.of("taxonomy", plots.plot_taxonomy(final, run.sizes), taxonomy_caption(final, run.sizes, shown)))
        tr = trans[trans["kind"] == "sizes"]
    else:
        section.blocks.append(Text(taxonomy_caption(final, run.sizes, shown)))
        tr = trans[(trans["kind"] == "checkpoints") & trans["from"].str.startswith(f"{model}@")]
    section.blocks.append(Figure.of("taxonomy_steps", plots.plot_taxonomy_steps(shares, shown), steps_caption(shares, shown)))
    section.blocks.append(Table(tr.drop(columns="kind").round(3).reset_index(drop=True),
                                "Transitions per category (Prashanth et al. 2024 rules, dynamics/analyses/taxonomy.py): "
                                "kept = share of the samples memorized at `from` still memorized at `to`; gained = share of "
                                "the others that become memorized."))
    return section
