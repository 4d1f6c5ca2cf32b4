"""`memdyn canaries`: verbatim score and exposure of the family's canaries at every checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynamics.cli.options import BATCH_SIZE, DEVICE, DTYPE, SEED


def canaries(
    family: Path = typer.Option(..., help="Family directory with a canary manifest (memdyn family train)."),
    out: Path = typer.Option(..., help="Canary scores directory (created, or resumed)."),
    candidates: int = typer.Option(256, help="Random candidates per canary kind for the exposure estimate (>= 32)."),
    models: Optional[str] = typer.Option(None, help="Comma-separated sizes (default: all)."),
    batch_size: int = BATCH_SIZE,
    device: str = DEVICE,
    dtype: str = DTYPE,
    seed: int = SEED,
):
    """Per canary, size and checkpoint: greedy score (context = all but the last min(16, L/2)
    tokens) and exposure (Carlini et al. 2019) against random candidates of the same form."""
    from dynamics.analyses.canaries import run_canaries
    from dynamics.cli.parse import name_list
    from dynamics.family.spec import load_family

    run_canaries(load_family(str(family)), out, seed=seed, n_candidates=candidates, batch_size=batch_size,
                 models=name_list(models), device=device, dtype=dtype)
    print(f"canary scores written to {out}")
