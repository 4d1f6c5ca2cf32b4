"""`memdyn score`, `memdyn summarize`, `memdyn transitions`: memorization scores and their tables."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynamics.cli.options import DEVICE, DTYPE, SEED, SCORE_BATCH_SIZE


def score(
    family: str = typer.Option(..., help="Family directory, pythia / pythia-deduped, or model ids/paths."),
    out: Path = typer.Option(..., help="Scores directory (created, or resumed)."),
    models: Optional[str] = typer.Option(None, help="Comma-separated model sizes (default: all)."),
    revisions: Optional[str] = typer.Option(None, help="Comma-separated step<N> revisions (default: final)."),
    contexts: str = typer.Option("32,48,64,96", help="Context lengths k."),
    continuations: str = typer.Option("16,32,48,64", help="Continuation lengths c."),
    data: Optional[str] = typer.Option(None, help="Megatron prefix of the training samples (default: the family's)."),
    samples: Optional[str] = typer.Option(None, help="START:END range of samples in training order."),
    sample: Optional[int] = typer.Option(None, min=1, help="Score N samples drawn at random (with --seed)."),
    exclude_canaries: bool = typer.Option(False, "--exclude-canaries", help="Only samples that hold no canary copy "
                                          "(a memdyn family's training data; its canaries are measured by `memdyn canaries`)."),
    batch_size: int = SCORE_BATCH_SIZE,
    chunk_size: int = typer.Option(256, min=1, help="Samples per resumable chunk."),
    schemes: str = typer.Option("t1,k40,p0.9,t0.7k40", help="Sampling schemes of the extraction columns (p_z), comma-separated: "
                                "t<temperature>, k<top-k>, p<top-p> or combinations in that order ('' for none)."),
    approx_bleu: float = typer.Option(0.75, help="BLEU-4 from which a greedy generation counts as approximately memorized."),
    dtype: str = DTYPE,
    device: str = DEVICE,
    seed: int = SEED,
):
    """Memorization scores over the context x continuation grid. Resumable; splits across
    processes under `accelerate launch`."""
    from dynamics.cli.parse import int_list, name_list, sample_range
    from dynamics.family.spec import load_family
    from dynamics.scoring.extraction import parse_schemes
    from dynamics.scoring.table import score as score_family

    revs = name_list(revisions)
    score_family(
        load_family(family, data), out, contexts=int_list(contexts, "--contexts"),
        continuations=int_list(continuations, "--continuations"), models=name_list(models),
        revisions="all" if revs == ["all"] else revs, data=data, samples=sample_range(samples), sample=sample,
        exclude_canaries=exclude_canaries, seed=seed, dtype=dtype, chunk_size=chunk_size, batch_size=batch_size, schemes=parse_schemes(schemes),
        approx_bleu=approx_bleu, device=device,
    )
    print(f"scores written to {out}")


def summarize(
    scores: Path = typer.Option(..., help="Scores directory."),
    out: Optional[Path] = typer.Option(None, help="CSV file to write (default: inside the scores directory, named with a leading _)."),
):
    """Counts and shares of memorized (score 1) and unmemorized (score 0) samples per cell."""
    from dynamics.scoring.transitions import write_summary

    table, path = write_summary(scores, out)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"saved {path}")


def transitions(
    scores: Path = typer.Option(..., help="Scores directory."),
    src: str = typer.Option(..., "--from", help="MODEL or MODEL@REVISION."),
    dst: str = typer.Option(..., "--to", help="MODEL or MODEL@REVISION."),
    bins: str = typer.Option("0.2,0.4,0.6,0.8", help="Upper edges of the score bins."),
    context: Optional[int] = typer.Option(None, min=1, help="Context length (default: the main cell's, nearest 32)."),
    continuation: Optional[int] = typer.Option(None, min=1, help="Continuation length (default: the main cell's, nearest 16)."),
    out: Optional[Path] = typer.Option(None, help="CSV file to write (default: inside the scores directory, named with a leading _)."),
):
    """Row-normalised transition matrix of score bins between two models or two checkpoints."""
    from dynamics.cli.parse import float_list
    from dynamics.scoring.transitions import write_transitions

    matrix, path = write_transitions(scores, src, dst, edges=float_list(bins, "--bins"), context=context,
                                     continuation=continuation, out=out)
    print(matrix.round(3).to_string())
    print(f"saved {path}")
