"""Report section on membership inference (WORKDIR/membership, dynamics/capacity/mia.py): AUROC with
its bootstrap interval and TPR at low FPR per attack and size, ROC curves, AUROC over checkpoints.
Every caption states its finding in numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from dynamics.report.document import Figure, Section, Table, Text
from dynamics.workdir import Workdir

MISSING = ("The membership stage has not run on this work directory: `memdyn membership --family {root}/family "
           "--members train --nonmembers heldout --out {root}/membership` (or `memdyn run`) runs it.")


def _read(run: Workdir, name: str) -> pd.DataFrame | None:
    path = run.membership_dir / f"{name}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def _final(t: pd.DataFrame) -> pd.DataFrame:
    return t[t["step"] == t.groupby("model")["step"].transform("max")]


def metrics_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (size, attack) at the final checkpoint, AUROC with its interval as text."""
    t = _final(metrics)
    three = lambda values: ["-" if np.isnan(v) else f"{v:.3f}" for v in values]  # noqa: E731 (aligned decimals, as the interval's)
    return pd.DataFrame({
        "model": t.model, "attack": t.attack, "auroc": three(t.auroc),
        "auroc 95% CI": [f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(t.auroc_lo, t.auroc_hi)],
        **({"CI, documents resampled": ["-" if np.isnan(lo) else f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(t.auroc_doc_lo, t.auroc_doc_hi)]}
           if "auroc_doc_lo" in t else {}),
        "TPR@1%FPR": three(t["tpr_at_0.01_fpr"]), "TPR@0.1%FPR": three(t["tpr_at_0.001_fpr"]),
        "n": t.n_members,
    }).reset_index(drop=True)


def caption(metrics: pd.DataFrame, model: str) -> str:
    t = _final(metrics)
    own = t[t.model == model].sort_values("auroc", ascending=False)
    if own.empty:
        return f"No membership results for {model}."
    best, loss = own.iloc[0], own[own.attack == "loss"]
    documents = "auroc_doc_lo" in best and not np.isnan(best.auroc_doc_lo)
    text = (f"At {best.revision}, {model}'s strongest attack is {best.attack}: AUROC {best.auroc:.3f} (95% CI "
            f"{best.auroc_lo:.3f}-{best.auroc_hi:.3f}), TPR {best['tpr_at_0.01_fpr']:.1%} at 1% FPR, over "
            + (f"{best.n_members} members from {best.member_documents:.0f} documents and {best.n_nonmembers} non-members "
               f"from {best.nonmember_documents:.0f}; samples of one document are not independent, and resampling the "
               f"documents instead of the samples the interval is {best.auroc_doc_lo:.3f}-{best.auroc_doc_hi:.3f}"
               if documents else f"{best.n_members} members and {best.n_nonmembers} non-members"))
    if len(loss) and best.attack != "loss":
        text += f"; the loss attack reaches AUROC {loss.auroc.iloc[0]:.3f}"
    untrained = metrics[(metrics.model == model) & (metrics.step == 0) & (metrics.attack == best.attack)]
    if len(untrained) and best.step > 0:  # a blind baseline: what the attack gets from the text alone
        text += (f". The same attack on the untrained model (step0) reaches {untrained.auroc.iloc[0]:.3f}: its distance "
                 "from 0.5 is how members and non-members differ as text, not membership")
    n = int(best.n_nonmembers)
    return text + (f". With {n} non-members the finest FPR is {1 / n:.2%}, so TPR at 0.1% FPR is that of zero false "
                   "positives." if n < 1000 else ".")


def plot_roc(roc: pd.DataFrame, metrics: pd.DataFrame, model: str) -> MplFigure:
    own, m = _final(roc[roc.model == model]), _final(metrics[metrics.model == model])
    auroc = dict(zip(m.attack, m.auroc))
    fig = MplFigure(figsize=(5, 4))
    ax = fig.subplots()
    for attack, g in own.groupby("attack", sort=False):
        ax.plot(g.fpr, g.tpr, lw=1.2, label=f"{attack} ({auroc.get(attack, np.nan):.3f})")
    floor = 1.0 / max(1, int(m.n_nonmembers.max()))
    ax.plot([floor, 1], [floor, 1], c="grey", lw=0.8, ls=":")
    ax.set(xscale="log", yscale="log", xlim=(floor / 2, 1), ylim=(floor / 2, 1.05), xlabel="false positive rate",
           ylabel="true positive rate", title=f"{model} at {own.revision.iloc[0]}: ROC (log-log)")
    ax.legend(fontsize=7, title="attack (AUROC)", title_fontsize=7)
    fig.tight_layout()
    return fig


def plot_auroc_steps(metrics: pd.DataFrame, model: str) -> MplFigure:
    own = metrics[metrics.model == model]
    fig = MplFigure(figsize=(5, 3.6))
    ax = fig.subplots()
    for attack, g in own.groupby("attack", sort=False):
        g = g.sort_values("step")
        x = np.maximum(g.step, 1)  # step0 drawn at 1 on the log axis
        ax.plot(x, g.auroc, marker="o", ms=3, lw=1.2, label=attack)
        ax.fill_between(x, g.auroc_lo, g.auroc_hi, alpha=0.12)
    ax.axhline(0.5, c="grey", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="training step", ylabel="AUROC", title=f"{model}: AUROC over checkpoints")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def steps_caption(metrics: pd.DataFrame, model: str) -> str:
    own = metrics[(metrics.model == model) & (metrics.attack == "loss")].sort_values("step")
    if len(own) < 2:
        return "One checkpoint scored."
    first, last = own.iloc[0], own.iloc[-1]
    return (f"The loss attack on {model} goes from AUROC {first.auroc:.3f} at {first.revision} to {last.auroc:.3f} at "
            f"{last.revision} (bands: 95% bootstrap intervals).")


def membership_section(run: Workdir, model: str | None = None) -> Section:
    section = Section("Membership inference")
    metrics, roc = _read(run, "metrics"), _read(run, "roc")
    if metrics is None or roc is None or metrics.empty:
        section.blocks.append(Text(MISSING.format(root=run.root)))
        return section
    shown = model or metrics.model.iloc[-1]
    section.blocks.append(Figure.of("membership_roc", plot_roc(roc, metrics, shown), caption(metrics, shown)))
    if metrics[metrics.model == shown].step.nunique() > 1:
        section.blocks.append(Figure.of("membership_steps", plot_auroc_steps(metrics, shown), steps_caption(metrics, shown)))
    own = metrics if model is None else metrics[metrics.model == model]
    section.blocks.append(Table(metrics_table(own), (
        "Attacks at the final checkpoint: loss, zlib ratio, min-k% (k = 10, 20), min-k%++ (k = 20) and the reference "
        "ratio (dynamics/capacity/attacks.py); AUROC with a 95% stratified bootstrap interval (and one that resamples "
        "the documents the samples start in), TPR at the ROC point "
        "with FPR <= 1% and <= 0.1% (no interpolation). Members: training samples; non-members: held-out samples.")))
    strata = _read(run, "metrics_by_duplication")
    if strata is not None and len(strata[strata.model == shown]):
        own = _final(strata if model is None else strata[strata.model == model])  # (the strata hold the last checkpoints)
        table = metrics_table(own).drop(columns="n").assign(stratum=own.stratum.to_numpy(), members=own.n_members.to_numpy())
        section.blocks.append(Table(table, duplication_caption(strata, shown)))
    return section


def duplication_caption(strata: pd.DataFrame, model: str) -> str:
    """What the strongest attack does on members seen once against members touching a duplicated document."""
    own = strata[strata.model == model]
    best = own.sort_values("auroc", ascending=False).attack.iloc[0]
    who = {"seen once": "members seen once (their documents occur once in the training stream)",
           "duplicated": "members touching a duplicated document"}
    rows = list(own[own.attack == best].itertuples())
    matched = "matched" in own and bool(own.matched.all())
    parts = [f"{r.auroc:.3f} (95% CI {r.auroc_lo:.3f}-{r.auroc_hi:.3f}) on the {r.n_members} {who[r.stratum]}"
             + (f" against {r.n_nonmembers} non-members of the same kind" if matched else "") for r in rows]
    against = ("; held-out documents are duplicated by the training stream's rule in a stream of their own, so each kind "
               "of member has non-members of its kind" if matched else ", each against all non-members")
    return f"By duplication, at {own.revision.iloc[0]}: {model}'s {best} attack reaches AUROC {' and '.join(parts)}{against}."
