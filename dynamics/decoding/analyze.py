"""The analysis half of `memdyn dynamics`: boundary curves and jumps, embedding trajectories,
distinguishing words and their figures, from a collected dynamics directory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from dynamics import manifest
from dynamics.decoding.collect import run_collection
from dynamics.decoding.store import read_hidden, read_model, read_settings
from dynamics.errors import MemdynError
from dynamics.family.spec import FamilySpec
from dynamics.files import atomic_path, read_json, write_json
from dynamics.lock import locks_output

def write_table(table: pd.DataFrame, stem: Path) -> None:
    """STEM.parquet and STEM.csv, atomically."""
    for ext in ("parquet", "csv"):
        with atomic_path(stem.with_suffix(f".{ext}")) as tmp:
            table.to_parquet(tmp, index=False) if ext == "parquet" else table.to_csv(tmp, index=False)
    out = stem.parent.parent  # tables live in OUT/tables/
    manifest.record_part(out, str(stem.with_suffix(".parquet").relative_to(out)), len(table))


ANALYSIS_TABLES = ("curves", "jumps", "distances", "projections", "separation", "words")


def check_analysis_args(m: int, n_resamples: int) -> None:
    if m < 1:
        raise MemdynError(f"--jump-window must be >= 1, got {m}")
    if n_resamples < 1:
        raise MemdynError(f"--bootstrap must be >= 1, got {n_resamples}")


def analyze(family: FamilySpec, out: str | Path, *, seed: int = 0, m: int = 4, n_resamples: int = 1000,
            use_umap: bool = True, plots: bool = True, top_words: int = 30, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Boundary curves and jumps, embedding trajectories, distinguishing words and figures of every
    collected model; tables go to OUT/tables/, figures to OUT/figures/."""
    from dynamics.decoding.boundary import boundary_tables
    from dynamics.decoding.embeddings import embedding_tables
    from dynamics.family.load import load_tokenizer
    from dynamics.decoding.words import words_table

    out = Path(out)
    settings = read_settings(out)
    check_analysis_args(m, n_resamples)
    tokenizer = load_tokenizer(family)
    parts: dict[str, list] = {name: [] for name in ANALYSIS_TABLES}
    for model in tqdm(list(settings["models"]), desc="analyze", unit="model", disable=not progress):
        meta, seqs, positions = read_model(out, model)
        curves, jumps = boundary_tables(seqs, positions, meta, seed, m, n_resamples)
        parts["curves"].append(curves)
        parts["jumps"].append(jumps)
        for layer in meta["layers"]:
            for name, t in zip(("distances", "projections", "separation"),
                               embedding_tables(seqs, read_hidden(out, model, layer), meta, layer, seed, use_umap)):
                parts[name].append(t)
        tokens = positions.sort_values(["row", "position"])["token"].to_numpy().reshape(len(seqs), -1)
        parts["words"].append(words_table(seqs, tokens, tokenizer, meta, top_words))
    tables = {name: pd.concat(ts, ignore_index=True) if ts else pd.DataFrame() for name, ts in parts.items()}
    for name, table in tables.items():
        write_table(table, out / "tables" / name)
    if plots:
        from dynamics.decoding.plots import write_figures

        write_figures(tables, out / "figures")
    return tables


@locks_output()
def run_dynamics(family: FamilySpec, scores: str | Path, out: str | Path, *, seed: int = 0, use_umap: bool = True,
                 plots: bool = True, m: int = 4, n_resamples: int = 1000, progress: bool = True, **collect) -> dict[str, pd.DataFrame]:
    """`memdyn dynamics`: collect (resumable), then analyze, unless the same analysis of the same
    collection is already on disk (a resumed `memdyn run` would otherwise redo it every time)."""
    check_analysis_args(m, n_resamples)
    run_collection(family, scores, out, seed=seed, progress=progress, jump_window=m, **collect)
    done = Path(out) / "tables" / "analysis.json"
    # (resampled: intervals made before they resampled documents are redone)
    record = {"collection": read_settings(out), "resampled": "documents", "seed": seed, "m": m, "n_resamples": n_resamples, "use_umap": use_umap,
              "plots": plots}
    if done.is_file() and read_json(done) == record:
        manifest.verify(out, ["tables/*.parquet"], f"memdyn dynamics ... --out {out}", "dynamics", prefix="tables/")
        return {name: pd.read_parquet(done.with_name(f"{name}.parquet")) for name in ANALYSIS_TABLES}
    done.unlink(missing_ok=True)  # tables being rewritten are not a finished analysis
    tables = analyze(family, out, seed=seed, m=m, n_resamples=n_resamples, use_umap=use_umap, plots=plots, progress=progress)
    write_json(done, record)
    return tables
