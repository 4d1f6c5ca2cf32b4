"""`memdyn score`, `memdyn summarize`, `memdyn transitions`: memorization scores and their tables."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynamics.cli.options import BATCH_SIZE, DEVICE, DTYPE, SEED
from dynamics.errors import MemdynError

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
    batch_size: int = BATCH_SIZE,
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
        seed=seed, dtype=dtype, chunk_size=chunk_size, batch_size=batch_size, schemes=parse_schemes(schemes),
        approx_bleu=approx_bleu, device=device,
    )
    print(f"scores written to {out}")



def summarize(
    scores: Path = typer.Option(..., help="Scores directory."),
    out: Optional[Path] = typer.Option(None, help="CSV file to write (default: inside the scores directory, named with a leading _)."),
):
    """Counts and shares of memorized (score 1) and unmemorized (score 0) samples per cell."""
    from dynamics.files import atomic_path, check_output_file
    from dynamics.scoring.table import read_scores
    from dynamics.scoring.transitions import summarize as summarize_table

    if out is not None:
        check_output_file(out, "--out", lambda p: _first_line(p).startswith("model,step,revision,context_len,continuation_len,"))
    table = summarize_table(read_scores(scores))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    path = out or scores / "_summary.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    print(f"saved {path}")



def transitions(
    scores: Path = typer.Option(..., help="Scores directory."),
    src: str = typer.Option(..., "--from", help="MODEL or MODEL@REVISION."),
    dst: str = typer.Option(..., "--to", help="MODEL or MODEL@REVISION."),
    bins: str = typer.Option("0.2,0.4,0.6,0.8", help="Upper edges of the score bins."),
    context: Optional[int] = typer.Option(None, min=1, help="Context length (default 32, else the smallest)."),
    continuation: Optional[int] = typer.Option(None, min=1, help="Continuation length (default 16, else the smallest)."),
    out: Optional[Path] = typer.Option(None, help="CSV file to write (default: inside the scores directory, named with a leading _)."),
):
    """Row-normalised transition matrix of score bins between two models or two checkpoints."""
    from dynamics.files import atomic_path, check_output_file
    from dynamics.scoring.table import read_scores
    from dynamics.scoring.transitions import transition_matrix

    if out is not None:
        check_output_file(out, "--out", lambda p: _first_line(p).endswith(",n"))
    try:
        edges = sorted(float(b) for b in bins.split(","))
    except ValueError:
        raise MemdynError(f"--bins must be comma-separated numbers in (0, 1), got {bins!r}") from None
    if not edges or edges[0] <= 0 or edges[-1] >= 1:
        raise MemdynError(f"--bins must be numbers strictly between 0 and 1, got {bins!r}")
    matrix = transition_matrix(read_scores(scores), src, dst, edges, context, continuation)
    print(matrix.round(3).to_string())
    path = out or scores / f"_transitions_{src}_to_{dst}.csv".replace("@", "_")
    with atomic_path(path) as tmp:
        matrix.to_csv(tmp)
    print(f"saved {path}")



def _first_line(path: Path) -> str:
    """The header of a CSV file memdyn may have written before ('' for anything unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return ""

