"""`memdyn capacity ...`: the synthetic capacity sweep and the membership-inference law."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynamics.cli.options import BATCH_SIZE, DEVICE, DTYPE, SEED, group
from dynamics.errors import MemdynError

app = group("Bit-level capacity: synthetic sweeps (bits per parameter), text memorization and membership inference.")


@app.command()
def synthetic(
    out: Path = typer.Option(..., "--out", help="Output directory (resumable: finished jobs are kept)."),
    preset: str = typer.Option("cpu", help="cpu (2 cores, < 20 min) or paper (Morris et al. grid, GPU)."),
    dtype: str = typer.Option("fp32", help="Training precision: fp32 or bf16 (fp16 only on GPU)."),
    seed: int = SEED,
    threads: int = typer.Option(0, min=0, help="torch CPU threads (0 = torch's default)."),
) -> None:
    """Train GPT-2 models on uniformly random tokens to saturation; fit bits per parameter."""
    from dynamics.capacity.synthetic import PRESETS, run_sweep

    if preset not in PRESETS:
        raise MemdynError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    summary = run_sweep(PRESETS[preset], out, seed=seed, dtype=dtype, threads=threads or None)
    if summary is None:  # not the main process
        return
    for m in summary["models"]:
        flag = "" if m["all_converged"] else "  (some sizes NOT converged)"
        typer.echo(f"L{m['n_layer']} d{m['d_model']:>4} {m['params']:>9,} params: "
                   f"{m['capacity_bits']:>12,.0f} bits = {m['bits_per_param']:.2f} bits/param{flag}")
    typer.echo(f"alpha = {summary['alpha']:.3f} bits/param (paper: 3.64 fit; 3.83 fp32 / 3.51 bf16 means)")
    if summary["n_not_converged"]:
        typer.echo(f"WARNING: {summary['n_not_converged']} of {summary['n_jobs']} runs hit max_steps "
                   f"without converging (converged=False in the table)")
    typer.echo(f"table: {out / 'capacity.parquet'} (+ .csv); figure: {out / 'memorization.png'} (+ .svg)")


@app.command("mi-law")
def mi_law(
    out: Path = typer.Option(..., "--out", help="Directory for mi_law.json and mi_law.{png,svg}."),
    table: Path = typer.Option(None, help="A synthetic sweep's capacity.parquet to fit instead of "
                                          "the paper's validation rows."),
) -> None:
    """Fit F1 = 0.5 (1 + c1 sigmoid(c2 log10(tokens/param) + c3)) and plot points and curve."""
    from dynamics.capacity.membership import write_mi_law

    fit = write_mi_law(out, table)
    typer.echo(f"c1={fit.c1:.4f} c2={fit.c2:.4f} c3={fit.c3:.4f} (x = {fit.x}), rmse {fit.rmse:.4f} "
               f"over {fit.n_points} points; F1=0.55 at {fit.tokens_per_param_at(0.55):.2f} tokens/param")


@app.command("text")
def capacity_text(
    family: str = typer.Option(..., help="Family directory (memdyn family train) with reference models."),
    out: Path = typer.Option(..., help="Output directory for the tables and figure."),
    models: Optional[str] = typer.Option(None, help="Comma-separated model sizes (default: all)."),
    reference: Optional[str] = typer.Option(None, help="Reference model for every size (default: the family's own, per size)."),
    batch_size: int = BATCH_SIZE,
    dtype: str = DTYPE,
    device: str = DEVICE,
    seed: int = SEED,
):
    """Unintended memorization in bits per size (vs a reference model), bits per parameter, and
    loss-threshold membership inference with its sigmoid fit."""
    from dynamics.capacity.text import text_capacity
    from dynamics.family.spec import load_family

    from dynamics.cli.parse import name_list

    table = text_capacity(load_family(family), out, models=name_list(models), reference=reference, device=device,
                          dtype=dtype, batch_size=batch_size, seed=seed)
    cols = ["model", "params", "unintended_bits_per_sample", "bits_memorized", "bits_per_param", "mi_f1", "mi_auroc"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written to {out}")

