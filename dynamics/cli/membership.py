"""`memdyn membership`: membership-inference attacks (loss, zlib, min-k%, min-k%++, reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynamics.cli.options import BATCH_SIZE, DEVICE, DTYPE, SEED


def membership(
    family: str = typer.Option(..., help="Family directory, pythia / pythia-deduped, or model ids/paths."),
    members: str = typer.Option(..., help="Member samples: `train` (the family's training data) or a Megatron prefix."),
    nonmembers: str = typer.Option(..., help="Non-member samples: `heldout` (the family's held-out data) or a Megatron prefix."),
    out: Path = typer.Option(..., help="Membership directory (created, or resumed)."),
    models: Optional[str] = typer.Option(None, help="Comma-separated model sizes (default: all)."),
    revisions: Optional[str] = typer.Option(None, help="Comma-separated step<N> revisions, or all (default: final)."),
    reference: Optional[str] = typer.Option(None, help="Reference model (id or path) for the reference attack "
                                            "(default: the family's own reference models, if it has them)."),
    samples: Optional[int] = typer.Option(None, help="At most N members and N non-members (default: the smaller pool)."),
    length: Optional[int] = typer.Option(None, help="Score the first L tokens of each sample (default: the shorter samples' length)."),
    batch_size: int = BATCH_SIZE,
    chunk_size: int = typer.Option(256, help="Samples per resumable chunk."),
    dtype: str = DTYPE,
    device: str = DEVICE,
    seed: int = SEED,
):
    """Membership inference per size and checkpoint: AUROC (95% bootstrap interval), TPR at 1% and
    0.1% FPR and ROC curves of each attack. Resumable; splits across processes under
    `accelerate launch`."""
    from dynamics.capacity.mia import run_membership
    from dynamics.cli.parse import name_list
    from dynamics.family.spec import load_family

    revs = name_list(revisions)
    metrics = run_membership(load_family(family), out, members=members, nonmembers=nonmembers, models=name_list(models),
                             revisions="all" if revs == ["all"] else revs, reference=reference, samples=samples,
                             length=length, seed=seed, dtype=dtype, device=device, batch_size=batch_size,
                             chunk_size=chunk_size)
    if metrics is not None:
        cols = ["model", "revision", "attack", "auroc", "auroc_lo", "auroc_hi", "tpr_at_0.01_fpr", "tpr_at_0.001_fpr"]
        print(metrics[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"written to {out}")
