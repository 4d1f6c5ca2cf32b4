"""`memdyn dynamics`: entropy, n-gram frequency and hidden states around the boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynamics.cli.options import BATCH_SIZE, DEVICE, DTYPE, SEED


def dynamics(
    family: str = typer.Option(..., help="Family directory, pythia / pythia-deduped, or model ids/paths."),
    scores: Path = typer.Option(..., help="Scores directory of this family (memdyn score)."),
    out: Path = typer.Option(..., help="Dynamics directory (created, or resumed)."),
    per_group: int = typer.Option(1000, min=1, help="Sequences per score level, and in the random sample, per model."),
    layers: str = typer.Option("last", help="Hidden states to keep: last, all, or indexes like 0,3 (0 = embeddings)."),
    context: Optional[int] = typer.Option(None, min=1, help="Context length k (default: the main cell's, the scored length nearest 32)."),
    continuation: Optional[int] = typer.Option(None, min=1, help="Continuation length c (default: the main cell's, the scored length nearest 16)."),
    data: Optional[str] = typer.Option(None, help="Megatron prefix of the training samples (default: the family's)."),
    ngram_index: Optional[Path] = typer.Option(None, help="N-gram index directory (default: <data>.ngrams/, built if missing)."),
    batch_size: int = BATCH_SIZE,
    hidden_dtype: str = typer.Option("float16", help="Storage type of hidden states: float16 or float32."),
    jump_window: int = typer.Option(4, min=1, help="Context positions m averaged before the boundary in jump statistics."),
    bootstrap: int = typer.Option(1000, min=1, help="Bootstrap resamples for confidence intervals."),
    umap: bool = typer.Option(True, "--umap/--no-umap", help="Also compute UMAP projections (slow first run: numba)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG and SVG figures."),
    dtype: str = DTYPE,
    device: str = DEVICE,
    seed: int = SEED,
):
    """Entropy, n-gram frequency and hidden states around the context/continuation boundary, per
    score level and model size: tables under OUT/tables, figures under OUT/figures."""
    from dynamics.cli.parse import hidden_layers
    from dynamics.decoding.analyze import run_dynamics
    from dynamics.family.spec import load_family

    run_dynamics(
        load_family(family, data), scores, out, seed=seed, use_umap=umap, plots=plots, m=jump_window,
        n_resamples=bootstrap, per_group=per_group, layers=hidden_layers(layers), context=context, continuation=continuation,
        batch_size=batch_size, device=device, dtype=dtype, hidden_dtype=hidden_dtype, ngram_index=ngram_index, data=data,
    )
    print(f"dynamics written to {out}")
