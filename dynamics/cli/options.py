"""Options shared by several commands: one definition each, so every command spells and defaults them alike."""

from __future__ import annotations

import typer

from dynamics.scoring import BATCH_SIZE as SCORING_BATCH

SEED = typer.Option(0, min=0, help="Random seed (>= 0); the same inputs and seed give the same files.")
DEVICE = typer.Option("auto", help="auto, cpu, cuda or cuda:N.")
LR = typer.Option(None, help="One peak learning rate for every size and the reference, instead of the preset's "
                             "per-size rates (which fall with size, as Pythia's).")
DTYPE = typer.Option("fp32", help="fp32, bf16 or fp16 (GPU only).")
BATCH_SIZE = typer.Option(32, min=1, help="Samples per forward pass.")
SCORE_BATCH_SIZE = typer.Option(SCORING_BATCH, min=1, help="Samples per forward pass and decoding batch.")


def group(help: str) -> typer.Typer:
    """A command group built like every other one."""
    return typer.Typer(help=help, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
