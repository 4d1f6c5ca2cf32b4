"""`memdyn predictor ...`: train, evaluate and apply memorization predictors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dynamics.cli.options import DEVICE, SEED, group
from dynamics.errors import MemdynError

app = group("Predict memorization from a context (or a model's hidden states); compare with baselines.")


def _fmt(x) -> str:
    return "nan" if x != x else f"{x:.3f}"


def print_summary(metrics: dict) -> None:
    """One line per (system, evaluation set): accuracy, macro-F1, AUROC, ECE."""
    print(f"model {metrics['model']} (k={metrics['context_len']}, c={metrics['continuation_len']}), "
          f"trained on {metrics.get('trained_on', metrics['model'])}, {metrics['n_train']} training rows"
          + (" per fold" if "cv" in metrics else ""))
    if "cv" in metrics:
        cv = metrics["cv"]
        print(f"{cv['folds']}-fold cross-validation by document: out-of-fold predictions of {cv['n_evaluated']} samples "
              f"pooled; {cv['n_straddling']} samples spanning two folds are evaluated in none")
    print(f"{'system':<10} {'set':<9} {'n':>5} {'acc':>6} {'macroF1':>8} {'AUROC':>6} {'ECE':>6}")
    systems = {"predictor": metrics["predictor"], **metrics.get("baselines", {})}
    for name, sets in systems.items():
        for s in ("natural", "balanced"):
            m = sets[s]
            print(f"{name:<10} {s:<9} {m['n']:>5} {_fmt(m['accuracy']):>6} {_fmt(m['macro_f1']):>8} "
                  f"{_fmt(m['auroc']):>6} {_fmt(m['ece']):>6}")
    if "tokens" in metrics["predictor"]:
        t = metrics["predictor"]["tokens"]
        print(f"tokens: accuracy {_fmt(t['token_accuracy'])}, full-sequence accuracy {_fmt(t['sequence_accuracy'])}, "
              f"AUROC {_fmt(t['token_auroc'])}")


@app.command("train")
def train(
    family: Path = typer.Option(..., help="Family directory (its tokenizer and training data)."),
    scores: Path = typer.Option(..., help="Scores directory of the family (labels)."),
    model: str = typer.Option(..., help="Target model size whose memorization is predicted."),
    out: Path = typer.Option(..., help="Predictor directory to write."),
    input: str = typer.Option("context", "--input", help="context (token ids) or hidden (needs --dynamics)."),
    dynamics: Optional[Path] = typer.Option(None, help="Dynamics directory (memdyn dynamics), for --input hidden."),
    seed: int = SEED,
    epochs: int = typer.Option(20, min=1, help="Training epochs."),
    max_per_class: Optional[int] = typer.Option(None, min=1, help="At most N training samples per score level."),
    context: Optional[int] = typer.Option(None, min=1, help="Context length of the scored cell (default: the main cell's, the scored length nearest 32)."),
    continuation: Optional[int] = typer.Option(None, min=1, help="Continuation length of the cell (default: the main cell's, the scored length nearest 16)."),
    edges: str = typer.Option("0.2,1.0", help="LO,HI: unmemorized score <= LO, memorized score >= HI, partial between."),
    d_model: Optional[int] = typer.Option(None, min=1, help="Predictor width (default 64; hidden mode 32)."),
    encoder_layers: Optional[int] = typer.Option(None, min=1, help="Encoder layers (default 2; hidden mode 1)."),
    heads: int = typer.Option(4, min=1, help="Attention heads."),
    members: Optional[int] = typer.Option(None, min=1, help="Predictors from different initialisations, averaged (default 1; hidden mode 3)."),
    positional: str = typer.Option("learned", help="learned or sinusoidal positional encodings."),
    batch_size: int = typer.Option(32, min=1, help="Batch size."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    test_size: float = typer.Option(0.2, help="Share of training documents held out for testing."),
    folds: int = typer.Option(0, min=0, help="K >= 2: also cross-validate by document over K folds (cv.json); 0: no."),
    device: str = DEVICE,
) -> None:
    """Train a predictor of MODEL's memorization; prints test metrics beside the baselines."""
    from dynamics.cli.parse import class_edges
    from dynamics.family.spec import load_family
    from dynamics.files import read_json
    from predictor.estimator import DEFAULTS
    from predictor.train import TrainSettings, train_predictor

    if epochs < 1 or batch_size < 1 or (max_per_class is not None and max_per_class < 1):
        raise MemdynError("--epochs, --batch-size and --max-per-class must be >= 1")
    if not lr > 0:
        raise MemdynError(f"--lr must be > 0, got {lr}")
    if not 0 < test_size < 1:
        raise MemdynError(f"--test-size must be strictly between 0 and 1 (a share of the documents), got {test_size}")
    if folds == 1 or folds < 0:
        raise MemdynError(f"--folds must be >= 2 (or 0: no cross-validation), got {folds}")
    if positional not in ("learned", "sinusoidal"):
        raise MemdynError(f"--positional must be learned or sinusoidal, got {positional!r}")
    if input in DEFAULTS and (d_model or DEFAULTS[input]["d_model"]) % heads:
        raise MemdynError(f"--d-model {d_model or DEFAULTS[input]['d_model']} must be a multiple of --heads {heads}")
    settings = TrainSettings(seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, max_per_class=max_per_class,
                             test_size=test_size, device=device)
    arch = {"d_model": d_model, "n_layers": encoder_layers, "n_heads": heads, "positional": positional, "members": members}
    arch = {k: v for k, v in arch.items() if v is not None}  # unset: the mode's default (predictor.estimator.DEFAULTS)
    metrics = train_predictor(load_family(family), out, model=model, mode=input, scores=scores, dynamics=dynamics,
                              edges=class_edges(edges), context=context, continuation=continuation, settings=settings,
                              arch=arch, folds=folds)
    print_summary(metrics)
    if folds:
        print_summary(read_json(out / "cv.json"))
    print(f"saved {out}")


@app.command("eval")
def evaluate(
    model_dir: Path = typer.Option(..., help="Predictor directory (predictor train --out)."),
    scores: Path = typer.Option(..., help="Scores directory holding the labels."),
    model: Optional[str] = typer.Option(None, help="Size whose labels to use (default: the one trained on; another size = cross-size transfer)."),
    dynamics: Optional[Path] = typer.Option(None, help="Dynamics directory, for hidden-mode predictors."),
    family: Optional[Path] = typer.Option(None, help="Family directory (default: the one recorded in the predictor)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
) -> None:
    """Evaluate a predictor on samples from documents it never saw in training."""
    from dynamics.family.spec import load_family
    from predictor.train import evaluate_predictor

    metrics = evaluate_predictor(model_dir, scores=scores, model=model, dynamics=dynamics,
                                 family=load_family(family) if family else None, json_out=json_out)
    print_summary(metrics)


@app.command("predict")
def predict(
    model_dir: Path = typer.Option(..., help="Predictor directory."),
    text: Optional[str] = typer.Option(None, help="The context, as text (hidden mode: its first context_len tokens)."),
    file: Optional[Path] = typer.Option(None, help="Read the context from this file."),
    family: Optional[Path] = typer.Option(None, help="Hidden mode: family of the target model (default: the one recorded)."),
    device: str = typer.Option("auto", help="Hidden mode: device of the target model (auto, cpu, cuda or cuda:N)."),
) -> None:
    """Print the predicted class of a context, its probability and the predicted score; in hidden
    mode also each greedy continuation token and the probability that the model reproduces it."""
    from dynamics.family.spec import load_family
    from predictor.predict import predict_text

    if (text is None) == (file is None):
        raise MemdynError("give either --text or --file")
    if file is not None:
        if not file.is_file():
            raise MemdynError(f"--file {file}: no such file")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MemdynError(f"--file {file} is not UTF-8 text; give a text file") from None
        if "\x00" in text:
            raise MemdynError(f"--file {file} is a binary file (it holds NUL bytes); give a text file")
    r = predict_text(model_dir, text, family=load_family(family) if family else None, device=device)
    print(f"{r['class']}\t{r['probability']:.3f}\tscore={r['score']:.3f}\t" + json.dumps({k: round(v, 4) for k, v in r["proba"].items()}))
    for i, (token, p) in enumerate(zip(r.get("continuation", []), r.get("token_proba", []))):
        print(f"{i}\t{token!r}\treproduced={p:.3f}")
