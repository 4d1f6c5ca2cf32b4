"""`memdyn run`: the whole pipeline on the embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynamics.cli.options import LR, SEED


def run(
    workdir: Path = typer.Option(Path("runs"), help="Work directory for every stage's outputs."),
    preset: str = typer.Option("tiny", help="Family preset: tiny (default) or micro."),
    reports: Path = typer.Option(Path("reports"), help="Reports go to REPORTS/<family>/."),
    seed: int = SEED,
    dtype: str = typer.Option("fp32", help="fp32, or bf16: mixed-precision training and bf16 inference (a CPU with AMX, or a GPU)."),
    lr: Optional[float] = LR,
):
    """The whole pipeline on the embedded default (no downloads); every stage resumes."""
    from dynamics.pipeline import run_pipeline

    run_pipeline(workdir, preset, seed, reports, dtype, lr)

