"""`memdyn family ...`: train and inspect model families."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dynamics.cli.options import DEVICE, LR, SEED, group

app = group("Train and inspect model families.")


@app.command("train")
def train(
    preset: str = typer.Option(..., help="micro (tests), tiny (embedded default) or small (GPU)."),
    out: Path = typer.Option(..., help="Family directory to create (or resume)."),
    corpus: str = typer.Option("stdlib", help="stdlib, a text directory, a .jsonl file, hf:NAME[:SPLIT] or a Megatron prefix."),
    text_field: str = typer.Option("text", help="JSONL / dataset field holding the text."),
    tokenizer: Optional[str] = typer.Option(None, help="Use this tokenizer instead of training a BPE (required for Megatron corpora)."),
    device: str = DEVICE,
    dtype: str = typer.Option("fp32", help="fp32, or bf16: mixed precision (float32 weights, bf16 autocast)."),
    lr: Optional[float] = LR,
    seed: int = SEED,
):
    """Train a Pythia-style family of GPT-NeoX models on one sample order; resumes if interrupted."""
    from dynamics.family.train import train_family

    family = train_family(preset, out, corpus=corpus, seed=seed, text_field=text_field, tokenizer=tokenizer, device=device,
                          dtype=dtype, lr=lr)
    print(f"trained family {family.name} in {out}: {', '.join(family.size_names)}")


@app.command("references")
def references(
    family: Path = typer.Argument(..., help="Family directory (memdyn family train)."),
    device: str = DEVICE,
):
    """Train the reference models of unintended memorization (for `memdyn capacity text`): in the
    embedded world one model trained on documents the world never uses, otherwise one per size
    trained without a seeded set of probe documents; resumes if interrupted."""
    from dynamics.family.spec import load_family
    from dynamics.family.train import train_references

    fam = train_references(load_family(family), device=device)
    print(f"reference models of {fam.name}: {', '.join(fam.references['sizes'].values())}")


@app.command("info")
def info(family: str = typer.Argument(..., help="Family directory, hub family name or model ids.")):
    """Sizes, parameter counts, checkpoints and data size of a family."""
    from dynamics.family.info import describe

    print(describe(family))
