"""The `memdyn` command line. Each command validates its inputs, then calls one library function.

Errors meant for users are `MemdynError`s: printed as one line `memdyn: error: ...`, exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from dynamics.errors import MemdynError

app = typer.Typer(
    help="Measure and explain verbatim memorization in causal language model families.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
family_app = typer.Typer(help="Train and inspect model families.", no_args_is_help=True)
app.add_typer(family_app, name="family")

SEED = typer.Option(0, help="Random seed; the same inputs and seed give the same files.")


@family_app.command("train")
def family_train(
    preset: str = typer.Option(..., help="micro (tests), tiny (embedded default) or small (GPU)."),
    out: Path = typer.Option(..., help="Family directory to create (or resume)."),
    corpus: str = typer.Option("stdlib", help="stdlib, a text directory, a .jsonl file, hf:NAME[:SPLIT] or a Megatron prefix."),
    text_field: str = typer.Option("text", help="JSONL / dataset field holding the text."),
    tokenizer: Optional[str] = typer.Option(None, help="Use this tokenizer instead of training a BPE (required for Megatron corpora)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    seed: int = SEED,
):
    """Train a Pythia-style family of GPT-NeoX models on one sample order; resumes if interrupted."""
    from dynamics.family.train import train_family

    family = train_family(preset, out, corpus=corpus, seed=seed, text_field=text_field, tokenizer=tokenizer, device=device)
    print(f"trained family {family.name} in {out}: {', '.join(family.size_names)}")


@family_app.command("references")
def family_references(
    family: Path = typer.Argument(..., help="Family directory (memdyn family train)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
):
    """Train, per size, a reference model that never sees a seeded set of probe documents (for
    `memdyn capacity text`); resumes if interrupted."""
    from dynamics.family.train import train_references

    fam = train_references(family, device)
    print(f"reference models of {fam.name}: {', '.join(fam.references['sizes'].values())}")


@family_app.command("info")
def family_info(family: str = typer.Argument(..., help="Family directory, hub family name or model ids.")):
    """Sizes, parameter counts, checkpoints and data size of a family."""
    from dynamics.family.info import describe

    print(describe(family))




@app.command()
def score(
    family: str = typer.Option(..., help="Family directory, pythia / pythia-deduped, or model ids/paths."),
    out: Path = typer.Option(..., help="Scores directory (created, or resumed)."),
    models: Optional[str] = typer.Option(None, help="Comma-separated model sizes (default: all)."),
    revisions: Optional[str] = typer.Option(None, help="Comma-separated step<N> revisions (default: final)."),
    contexts: str = typer.Option("32,48,64,96", help="Context lengths k."),
    continuations: str = typer.Option("16,32,48,64", help="Continuation lengths c."),
    data: Optional[str] = typer.Option(None, help="Megatron prefix of the training samples (default: the family's)."),
    samples: Optional[str] = typer.Option(None, help="START:END range of samples in training order."),
    sample: Optional[int] = typer.Option(None, help="Score N samples drawn at random (with --seed)."),
    batch_size: int = typer.Option(32, help="Samples per forward pass."),
    chunk_size: int = typer.Option(256, help="Samples per resumable chunk."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16 (GPU only)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    seed: int = SEED,
):
    """Memorization scores over the context x continuation grid. Resumable; splits across
    processes under `accelerate launch`."""
    from dynamics.family.spec import load_family
    from dynamics.scoretable import make_settings, parse_int_list, run_scoring

    fam = load_family(family, data)
    prefix = data or (fam.data.prefix if fam.data else None)
    if not prefix:
        raise MemdynError(f"family {family!r} has no training data on record: pass --data PREFIX (a Megatron .bin/.idx)")
    settings = make_settings(
        fam, prefix, parse_int_list(contexts, "contexts"), parse_int_list(continuations, "continuations"),
        samples, sample, seed, dtype, chunk_size, batch_size,
    )
    revs = [r.strip() for r in revisions.split(",")] if revisions else None
    if revs == ["all"]:
        revs = sorted({r for s in fam.select(models) for r in s.revisions}, key=lambda r: int(r[4:]))
    run_scoring(fam, out, settings, prefix, models, revs, device=device)
    print(f"scores written to {out}")


from dynamics.dynamics_cli import dynamics_command  # noqa: E402

app.command("dynamics")(dynamics_command)

from predictor.cli import app as predictor_app  # noqa: E402

app.add_typer(predictor_app, name="predictor")

from dynamics.capacity.cli import app as capacity_app  # noqa: E402

app.add_typer(capacity_app, name="capacity")


@capacity_app.command("text")
def capacity_text(
    family: str = typer.Option(..., help="Family directory (memdyn family train) with reference models."),
    out: Path = typer.Option(..., help="Output directory for the tables and figure."),
    models: Optional[str] = typer.Option(None, help="Comma-separated model sizes (default: all)."),
    reference: Optional[str] = typer.Option(None, help="Reference model for every size (default: the family's own, per size)."),
    batch_size: int = typer.Option(32, help="Samples per forward pass."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16 (GPU only)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    seed: int = SEED,
):
    """Unintended memorization in bits per size (vs a reference model), bits per parameter, and
    loss-threshold membership inference with its sigmoid fit."""
    from dynamics.capacity.text import text_capacity
    from dynamics.family.spec import load_family

    table = text_capacity(load_family(family), out, models, reference, device, dtype, batch_size, seed)
    cols = ["model", "params", "unintended_bits_per_sample", "bits_memorized", "bits_per_param", "mi_f1", "mi_auroc"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written to {out}")


from dynamics.report_cli import report_command  # noqa: E402

app.command("report")(report_command)


@app.command()
def transitions(
    scores: Path = typer.Option(..., help="Scores directory."),
    src: str = typer.Option(..., "--from", help="MODEL or MODEL@REVISION."),
    dst: str = typer.Option(..., "--to", help="MODEL or MODEL@REVISION."),
    bins: str = typer.Option("0.2,0.4,0.6,0.8", help="Upper edges of the score bins."),
    context: Optional[int] = typer.Option(None, help="Context length (default 32, else the smallest)."),
    continuation: Optional[int] = typer.Option(None, help="Continuation length (default 16, else the smallest)."),
    out: Optional[Path] = typer.Option(None, help="CSV file to write (default: inside the scores directory, named with a leading _)."),
):
    """Row-normalised transition matrix of score bins between two models or two checkpoints."""
    from dynamics.files import atomic_path, check_output_file
    from dynamics.scoretable import read_scores
    from dynamics.transitions import transition_matrix

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


@app.command()
def summarize(
    scores: Path = typer.Option(..., help="Scores directory."),
    out: Optional[Path] = typer.Option(None, help="CSV file to write (default: inside the scores directory, named with a leading _)."),
):
    """Counts and shares of memorized (score 1) and unmemorized (score 0) samples per cell."""
    from dynamics.files import atomic_path, check_output_file
    from dynamics.scoretable import read_scores
    from dynamics.transitions import summarize as summarize_table

    if out is not None:
        check_output_file(out, "--out", lambda p: _first_line(p).startswith("model,step,revision,context_len,continuation_len,"))
    table = summarize_table(read_scores(scores))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    path = out or scores / "_summary.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    print(f"saved {path}")


@app.command()
def run(
    workdir: Path = typer.Option(Path("runs"), help="Work directory for every stage's outputs."),
    preset: str = typer.Option("tiny", help="Family preset: tiny (default) or micro."),
    reports: Path = typer.Option(Path("reports"), help="Reports go to REPORTS/<family>/."),
    seed: int = SEED,
):
    """The whole pipeline on the embedded default (no downloads); every stage resumes."""
    from dynamics.pipeline import run_pipeline

    run_pipeline(workdir, preset, seed, reports)


def _first_line(path: Path) -> str:
    """The header of a CSV file memdyn may have written before ('' for anything unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return ""


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        app(standalone_mode=False)
    except MemdynError as e:
        print(f"memdyn: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("memdyn: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click's usage errors carry their own message and exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
