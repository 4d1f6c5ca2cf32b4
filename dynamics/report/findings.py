"""Numbers behind the report and the sentences that state them (every caption is computed here).

Each function takes tables (from workdir.Workdir) and returns (table or value, caption). Shares are
of samples with score 1 ("memorized", k-extractable), as in REFERENCE.md section 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dynamics.scoring.grid import BIN_EDGES, bin_labels
from dynamics.scoring.transitions import summarize, transition_matrix


def pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.3g}%"


def compare(a: float, b: float, other: str) -> str:
    """'12x the 16k model's 4%' style comparison of shares; says so when the base is zero."""
    if b > 0:
        return f"{a / b:.3g}x the {other} model's {pct(b)}"
    return f"where the {other} model reproduces none (0%)" if a > 0 else f"as does the {other} model"


def trend(values) -> str:
    """rises / falls / is flat / is not monotonic, for a sequence in axis order."""
    d = np.diff(np.asarray(values, dtype=float))
    if len(d) == 0 or np.all(d == 0):
        return "is flat"
    if np.all(d >= 0):
        return "rises"
    if np.all(d <= 0):
        return "falls"
    return "is not monotonic"


def shares(scores: pd.DataFrame, params: dict) -> pd.DataFrame:
    """Memorized share per (model, context, continuation), with params, smallest model first."""
    t = summarize(scores).drop(columns=["step", "revision"])
    t["params"] = t["model"].map(params)
    return t.sort_values(["params", "model", "context_len", "continuation_len"], ignore_index=True)


def at(t: pd.DataFrame, **eq) -> pd.DataFrame:
    for col, value in eq.items():
        t = t[t[col] == value]
    return t


def share_by_size(t: pd.DataFrame, k: int, c: int) -> str:
    main = at(t, context_len=k, continuation_len=c)
    small, large = main.iloc[0], main.iloc[-1]
    return (f"The {large.model} model reproduces {pct(large.memorized_share)} of samples exactly at context {k} / "
            f"continuation {c} ({large.memorized} of {large.n}), {compare(large.memorized_share, small.memorized_share, small.model)}; "
            f"across the {len(main)} sizes the share "
            f"{trend(main.memorized_share)} with size.")


def share_by_axis(t: pd.DataFrame, axis: str, fixed: str, value: int) -> str:
    """Caption for memorized share against context (axis=context_len) or continuation length."""
    part = at(t, **{fixed: value})
    name, other = axis.split("_")[0], fixed.split("_")[0]
    lines = [g.sort_values(axis) for _, g in part.groupby("model", sort=False)]  # smallest model first
    ends = "; ".join(f"{g.model.iloc[0]} {pct(g.memorized_share.iloc[0])} -> {pct(g.memorized_share.iloc[-1])}" for g in lines)
    verdicts = [trend(g.memorized_share) for g in lines]
    rises, falls = verdicts.count("rises"), verdicts.count("falls")
    return (f"At {other} {value}, the memorized share from {name} {lines[0][axis].iloc[0]} to {lines[0][axis].iloc[-1]}: "
            f"{ends}. It rises at every step of {name} length for {rises} of {len(verdicts)} sizes, falls at every "
            f"step for {falls} and moves both ways for {len(verdicts) - rises - falls}.")


def transitions(table: pd.DataFrame, src: str, dst: str, k: int, c: int) -> tuple[pd.DataFrame, str]:
    """Row-normalised bin crosstab src -> dst and what its diagonal says."""
    m = transition_matrix(table, src, dst, context=k, continuation=c)
    labels = bin_labels(BIN_EDGES)
    diag = [m.loc[label, label] for label in labels]
    filled = [label for label in labels if m.loc[label, "n"] > 0]
    top, bottom = filled[-1], filled[0]  # the highest and lowest bins that hold samples
    bounds = dict(zip(labels, zip((0.0, *BIN_EDGES), (*BIN_EDGES, 1.0))))
    # a middle bin's label "<=0.8" reads as "any score up to 0.8" in a sentence: name its range
    said = {label: label if label in (labels[0], labels[-1]) else f"in ({bounds[label][0]:g}, {bounds[label][1]:g}]"
            for label in labels}
    text = (f"Of the {int(m.loc[top, 'n'])} samples scoring {said[top]} under {src}, {pct(m.loc[top, top])} still score "
            f"{said[top]} under {dst}; of the {int(m.loc[bottom, 'n'])} scoring {said[bottom]}, {pct(m.loc[bottom, bottom])} stay there "
            f"(diagonal: {' '.join('-' if np.isnan(v) else f'{v:.2f}' for v in diag)}; context {k} / continuation {c}).")
    return m, text


def quarter_revision(checkpoints: pd.DataFrame, model: str) -> tuple[str, str]:
    """(revision nearest a quarter of training, final revision) of a model's checkpoint scores."""
    steps = checkpoints.loc[checkpoints["model"] == model, ["step", "revision"]].drop_duplicates().sort_values("step")
    final = steps.iloc[-1]
    quarter = steps.iloc[(steps["step"] - final.step / 4).abs().argmin()]
    return quarter.revision, final.revision


def jump_rows(jumps: pd.DataFrame, metric: str = "entropy_nats") -> pd.DataFrame:
    """Boundary jumps per model and class (unmemorized / partial / memorized)."""
    return at(jumps, metric=metric, align="boundary", grouping="class")


def boundary(jumps: pd.DataFrame, metric: str = "entropy_nats", model: str | None = None) -> str:
    """Caption: the boundary jump of each class, for one model or the largest, plus the count across sizes."""
    j = jump_rows(jumps, metric)
    if j.empty:
        return "No boundary jumps were computed (too few sequences per class)."
    unit = "nats" if metric == "entropy_nats" else "(count)"
    what = "Entropy" if metric == "entropy_nats" else "The unigram count of the true token"
    model = model or j.sort_values("params")["model"].iloc[-1]
    own = j[j["model"] == model].set_index("group")
    parts = [f"{g} {own.loc[g, 'jump']:+.3g} {unit} (95% CI {own.loc[g, 'ci_lo']:+.3g} to {own.loc[g, 'ci_hi']:+.3g}, "
             f"n={int(own.loc[g, 'n'])})" for g in ("unmemorized", "partial", "memorized") if g in own.index]
    unmem = j[j["group"] == "unmemorized"]
    text = f"{what} at the boundary in the {model} model changes by: {'; '.join(parts)}."
    if len(unmem) > 1 and model is not None:  # the published direction: entropy up, n-gram counts down
        up = metric == "entropy_nats"
        n = int(((unmem["jump"] > 0) if up else (unmem["jump"] < 0)).sum())
        text += f" The unmemorized jump is {'positive' if up else 'negative (a drop)'} in {n} of {len(unmem)} sizes."
    return text


def separation(sep: pd.DataFrame, model: str) -> str:
    rows = sep[(sep["model"] == model) & (sep["layer"] == sep.loc[sep["model"] == model, "layer"].max())]
    parts = [f"{r.contrast.replace('_', ' ')}: silhouette {r.silhouette:.3g}, linear probe accuracy {r.probe_accuracy:.3g} "
             f"vs chance {r.chance_accuracy:.3g} (n={r.n})" for r in rows.itertuples() if np.isfinite(r.probe_accuracy)]
    skipped = [r.contrast.replace("_", " ") for r in rows.itertuples() if not np.isfinite(r.probe_accuracy)]
    text = "; ".join(parts) if parts else "no contrast had two classes to separate"
    if skipped:
        text += f" ({', '.join(skipped)}: only one class collected)"
    return f"Hidden states of the {model} model (last layer), {text}."


def distances(dist: pd.DataFrame, model: str) -> str:
    t = dist[(dist["model"] == model) & (dist["step"] == 0)]
    t = t[t["layer"] == t["layer"].max()]
    lo, hi = t["level_a"].min(), t["level_a"].max()
    d = t[(t["level_a"] == lo) & (t["level_b"] == hi)]["cosine"]
    off = t[t["level_a"] != t["level_b"]]["cosine"]
    if d.empty or off.empty:
        return f"Only one score level was collected for {model}: no distances to compare."
    return (f"At the first decoding step the cosine distance between the mean states of {lo} and {hi} matches is "
            f"{d.iloc[0]:.3g} in the {model} model; the mean over all pairs of levels is {off.mean():.3g}.")


def distribution(levels: pd.DataFrame, model: str, k: int, c: int) -> str:
    n = int(levels["count"].sum())
    mem = levels.loc[levels["score"] >= 1, "share"].sum()
    unmem = levels.loc[levels["score"] <= 0, "share"].sum()
    mean = float((levels["score"] * levels["share"]).sum())
    return (f"At context {k} / continuation {c}, {pct(mem)} of the {n} samples score 1 under {model} and "
            f"{pct(unmem)} score 0; the mean score is {mean:.3f}.")


def grid(t: pd.DataFrame, model: str) -> tuple[pd.DataFrame, str]:
    part = t[t["model"] == model]
    m = part.pivot(index="context_len", columns="continuation_len", values="memorized_share")
    best, worst = part.loc[part["memorized_share"].idxmax()], part.loc[part["memorized_share"].idxmin()]
    return m, (f"The {model} model's memorized share ranges from {pct(worst.memorized_share)} (context "
               f"{worst.context_len} / continuation {worst.continuation_len}) to {pct(best.memorized_share)} "
               f"(context {best.context_len} / continuation {best.continuation_len}).")


METRIC_COLUMNS = ("evaluation", "test set", "n", "accuracy", "macro_f1", "auroc", "auroc CI, documents resampled",
                  "best baseline", "baseline macro_f1")


def evaluation(m: dict) -> str:
    return f"{m['cv']['folds']}-fold cross-validated by document" if "cv" in m else "one held-out split by document"


def predictor_table(metrics: dict[str, dict], sizes: list[str]) -> pd.DataFrame:
    """One row per (size, mode): predictor and best-baseline macro F1 / AUROC on the natural test set
    (pooled out-of-fold predictions when cross-validated)."""
    rows = []
    for name, m in metrics.items():
        size, _, mode = name.rpartition("-")
        if "skipped" in m:
            rows.append({"size": size, "mode": mode, **dict.fromkeys(METRIC_COLUMNS, ""), "note": m["skipped"]})
            continue
        evalset = "natural" if "natural" in m["predictor"] else next(iter(m["predictor"]))
        p = m["predictor"][evalset]
        base = {b: r[evalset] for b, r in m.get("baselines", {}).items() if evalset in r}
        best = max(base, key=lambda b: base[b]["macro_f1"]) if base else None
        rows.append({"size": size, "mode": mode, "evaluation": evaluation(m), "test set": evalset, "n": p["n"],
                     "accuracy": p["accuracy"], "macro_f1": p["macro_f1"], "auroc": p["auroc"],
                     # (predictors trained before memdyn gave the interval have none)
                     "auroc CI, documents resampled": f"{p['auroc_lo']:.3f}-{p['auroc_hi']:.3f}" if "auroc_lo" in p else "-",
                     "best baseline": best,
                     "baseline macro_f1": base[best]["macro_f1"] if best else np.nan, "note": ""})
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    return in_size_order(t, sizes, "size", "mode").reset_index(drop=True)


def in_size_order(rows: pd.DataFrame, sizes: list[str], column: str = "model", *then: str) -> pd.DataFrame:
    """Rows with their sizes (`column`) in the order of `sizes`, smallest first, then by `then`."""
    rank = rows[column].map({s: i for i, s in enumerate(sizes)})
    return rows.assign(_rank=rank).sort_values(["_rank", *then], kind="stable").drop(columns="_rank")


def predictor(t: pd.DataFrame) -> str:
    trained = t[t["note"] == ""] if "note" in t else t
    if trained.empty:
        return f"No predictor could be trained ({len(t)} skipped: too few samples of a class)."
    best = trained.loc[trained["macro_f1"].idxmax()]
    return (f"Best predictor: {best['size']} from {best['mode']}, macro F1 {best['macro_f1']:.3g} vs "
            f"{best['baseline macro_f1']:.3g} for the best baseline ({best['best baseline']}) on {best['n']} samples "
            f"({best['evaluation']}); {len(trained)} of {len(t)} predictors trained ({len(t) - len(trained)} skipped).")


def capacity(cap: pd.DataFrame) -> str:
    cap = cap.sort_values("params")
    small, large = cap.iloc[0], cap.iloc[-1]
    text = (f"The {large.model} model memorizes {large.bits_memorized:.4g} bits (unintended, total), against "
            f"{small.bits_memorized:.4g} for the {small.model} model; "
            f"bits memorized {trend(cap.bits_memorized)} with size")
    if "bits_per_param" in cap:
        text += (f"; bits per parameter {small.bits_per_param:.3g} ({small.model}) to {large.bits_per_param:.3g} "
                 f"({large.model}), {trend(cap.bits_per_param)} with size")
    return text + "."


def with_bits_per_param(cap: pd.DataFrame) -> pd.DataFrame:
    cap = cap.copy()
    if "bits_per_param" not in cap:
        cap["bits_per_param"] = cap["bits_memorized"] / cap["params"]
    return cap.sort_values("params")
