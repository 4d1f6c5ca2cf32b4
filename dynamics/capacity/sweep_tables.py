"""The synthetic capacity sweep's results: the table of finished jobs, capacity per model and alpha
(bits per parameter), the figures and summary.json (dynamics/capacity/synthetic.py runs the jobs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dynamics import manifest
from dynamics.files import atomic_path, read_json, write_json

TABLE_COLUMNS = ["n_layer", "d_model", "params", "n_samples", "dataset_bits", "memorized_bits",
                 "bits_per_param", "converged", "steps", "f1", "f1_oracle", "f1_median", "auroc",
                 "chance_bits", "excess_bits_per_param", "tokens_per_param", "train_seconds"]


def fit_alpha(params, capacity_bits) -> float:
    """Least-squares slope through the origin: argmin_a sum (capacity - a * params)^2."""
    p = np.asarray(params, dtype=np.float64)
    c = np.asarray(capacity_bits, dtype=np.float64)
    return float((p @ c) / (p @ p))


def summarize(table):
    """Per-model capacity (max over N) and the fitted alpha -> (per_model DataFrame, alpha)."""
    g = table.groupby(["n_layer", "d_model", "params"], as_index=False)
    per_model = g.agg(capacity_bits=("memorized_bits", "max"), all_converged=("converged", "all"),
                      n_sizes=("n_samples", "count"))
    per_model["bits_per_param"] = per_model["capacity_bits"] / per_model["params"]
    return per_model, fit_alpha(per_model["params"], per_model["capacity_bits"])


def plot_memorization(table, per_model, alpha: float, path_stem) -> None:
    """Memorized bits against dataset bits, one line per model, capacity levels dashed."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, row in enumerate(per_model.itertuples()):
        t = table[(table.n_layer == row.n_layer) & (table.d_model == row.d_model)].sort_values("dataset_bits")
        c = f"C{i % 10}"
        ax.plot(t.dataset_bits, t.memorized_bits, "o-", c=c, ms=4,
                label=f"L{row.n_layer} d{row.d_model} ({row.params:,} p): {row.bits_per_param:.2f} b/p")
        bad = t[~t.converged]
        ax.scatter(bad.dataset_bits, bad.memorized_bits, marker="x", c="k", s=30, zorder=4)
        ax.axhline(alpha * row.params, c=c, ls="--", lw=0.8)
    lim = [table.dataset_bits.min() * 0.8, table.dataset_bits.max() * 1.2]
    ax.plot(lim, lim, c="grey", lw=0.8, ls=":", label="memorized = dataset bits")
    ax.set_xscale("log")
    ax.set_yscale("log")
    kbits = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}k")
    for axis in (ax.xaxis, ax.yaxis):  # label 1, 2, 5 x 10^k: enough ticks, none colliding
        axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(kbits)
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("dataset size (bits)")
    ax.set_ylabel("memorized bits")
    ax.set_title(f"Synthetic capacity: alpha = {alpha:.2f} bits/param (dashed: alpha x params; x: not converged)",
                 fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    from dynamics.decoding.plots import save

    save(fig, path_stem)
    plt.close(fig)


def collect_table(out_dir: Path, jobs: list):
    import pandas as pd

    manifest.verify(out_dir, ["runs/*.json"], f"memdyn capacity synthetic ... --out {out_dir}", "capacity sweep", prefix="runs/")

    rows = [read_json(out_dir / "runs" / f"{job.key}.json") for job in jobs]
    table = pd.DataFrame(rows)
    cols = TABLE_COLUMNS + [c for c in table.columns if c not in TABLE_COLUMNS and c != "curve"]
    return table[cols].sort_values(["params", "n_layer", "d_model", "n_samples"]).reset_index(drop=True)


def write_outputs(out_dir: Path, table, cfg) -> dict:
    """Table (Parquet + CSV), per-model capacities, alpha, both figures, summary.json."""
    from dynamics.capacity.membership import fit_sigmoid, plot_sigmoid_fit

    per_model, alpha = summarize(table)
    with atomic_path(out_dir / "capacity.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    manifest.record_part(out_dir, "capacity.parquet", len(table))
    with atomic_path(out_dir / "capacity.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out_dir / "models.csv") as tmp:
        per_model.to_csv(tmp, index=False)
    plot_memorization(table, per_model, alpha, out_dir / "memorization")
    summary = dict(preset=cfg.name, alpha=alpha, config=dataclasses.asdict(cfg),
                   paper_alpha_fit=3.64, paper_alpha_mean_fp32=3.83, paper_alpha_mean_bf16=3.51,
                   n_jobs=len(table), n_not_converged=int((~table.converged).sum()),
                   models=per_model.to_dict(orient="records"))
    f1 = table.f1_median
    try:  # membership-inference law on the sweep's own points
        if f1.max() - f1.min() < 0.05:  # e.g. every model near capacity separates perfectly
            raise ValueError(f"F1 spans only {f1.min():.3f}..{f1.max():.3f} over "
                             f"{table.tokens_per_param.min():.2f}..{table.tokens_per_param.max():.2f} "
                             f"tokens/param: the sigmoid is not identified by this sweep")
        fit = fit_sigmoid(table.tokens_per_param, f1)
        summary["mi_sigmoid"] = dict(fit.as_dict(), f1="f1_median")
        plot_sigmoid_fit(table.tokens_per_param, table.f1_median, fit, out_dir / "membership",
                         title=f"Loss-threshold MI on the {cfg.name} sweep (median-threshold F1)")
    except (RuntimeError, ValueError) as e:
        summary["mi_sigmoid"] = {"error": str(e)}
    write_json(out_dir / "summary.json", summary)
    return summary


