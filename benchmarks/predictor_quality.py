"""Quality of the memorization predictor against its baselines, per model size and input mode.

    python benchmarks/predictor_quality.py --family DIR --scores DIR [--dynamics DIR]
        [--context K --continuation C] [--folds 5] [--epochs 20] [--seed 0] [--edges 0.2,1.0] [--max-per-class N]
        [--models 1.6m,4.2m]

For every size in the scores: K-fold cross-validation by training document (predictor.train.
cross_validate) of a context-mode predictor (and a hidden-mode one when --dynamics is given), and
one row per (model, mode) of the pooled out-of-fold predictions on the natural distribution:
predictor accuracy / macro-F1 / AUROC (memorized vs not, with `auroc_ci` its 95% interval when the
documents the evaluated samples start in are resampled; `mem_docs` the documents the memorized ones
start in) / ECE / score MAE (in hidden mode also the
per-token head's token and sequence accuracy and its token-level AUROC, reproduced vs not) beside
the majority class and logistic regression / gradient boosting on scalar features (context loss,
zlib ratio, n-gram counts, duplicate count; in hidden mode mean entropy and the greedy
continuation's largest surprisal), fitted on the same folds (`logreg_minus_ci`, `gboost_minus_ci`: the interval of the baseline's AUROC
minus the predictor's on the same resamples of documents), and the best single one of those
features alone (`best_feature`, untrained, its AUROC with the sign chosen on the evaluated rows); `n` samples pooled, `n_out` spanning
two folds and evaluated in none, `memorized`/`not` the AUROC's classes among the n, and `bal_f1`
the predictor's macro-F1 on a class-balanced subset. Sizes whose folds lack a class are listed with the reason; --models limits
the sizes.
Runs single-threaded. On the micro fixtures: --context 16 --continuation 4 gives all classes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from dynamics.errors import MemdynError  # noqa: E402
from dynamics.family.spec import load_family  # noqa: E402
from dynamics.scoring.table import read_scores  # noqa: E402
from dynamics.scoring.grid import MEMORIZED  # noqa: E402
from dynamics.cli.parse import class_edges  # noqa: E402
from predictor.train import TrainSettings, cross_validate, load_dataset, tokens_of  # noqa: E402


def best_single_feature(family, model: str, mode: str, args, edges) -> dict:
    """The baselines' scalar feature that alone ranks memorized vs not best (AUROC on the natural
    rows: all scored samples in context mode, the dynamics' random draw in hidden mode). Untrained,
    but its sign is chosen on the same rows, so this is an upper bound for a one-feature rule."""
    from sklearn.metrics import roc_auc_score

    from predictor.data import scalar_features

    data = load_dataset(family, mode, model, args.scores, args.dynamics, edges, args.context, args.continuation)
    X, names = scalar_features(family, data, tokens_of(family, data))
    rows = np.arange(len(data.rows))
    if "random_draw" in data.rows and data.rows["random_draw"].any():
        rows = rows[data.rows["random_draw"].to_numpy()]
    y = data.rows["label"].to_numpy()[rows] == MEMORIZED
    if y.all() or not y.any():
        return {"best_feature": "", "best_feature_auroc": np.nan}
    aucs = {n: roc_auc_score(y, X[rows, i]) for i, n in enumerate(names)}
    best = max(aucs, key=lambda n: max(aucs[n], 1 - aucs[n]))
    return {"best_feature": best + ("" if aucs[best] >= 0.5 else " (-)"), "best_feature_auroc": max(aucs[best], 1 - aucs[best])}


def span(metrics: dict, key: str) -> str:
    """A 95% interval from metrics[key_lo], metrics[key_hi], as 'lo..hi'."""
    return f"{metrics[key + '_lo']:+.3f}..{metrics[key + '_hi']:+.3f}"


def row(model: str, mode: str, m: dict) -> dict:
    p, b = m["predictor"]["natural"], {name: r["natural"] for name, r in m["baselines"].items()}
    memorized = int(np.asarray(p["confusion"])[MEMORIZED].sum())
    out = {"model": model, "mode": mode, "n": p["n"], "n_out": m["cv"]["n_straddling"], "memorized": memorized,
           "not": p["n"] - memorized, "mem_docs": p["memorized_documents"], "acc": p["accuracy"],
           "macro_f1": p["macro_f1"], "auroc": p["auroc"], "auroc_ci": span(p, "auroc"),
           "ece": p["ece"], "score_mae": p["score_mae"], "bal_f1": m["predictor"]["balanced"]["macro_f1"],
           "majority_acc": b["majority"]["accuracy"], "majority_f1": b["majority"]["macro_f1"],
           "logreg_acc": b["logistic"]["accuracy"], "logreg_f1": b["logistic"]["macro_f1"],
           "logreg_auroc": b["logistic"]["auroc"], "logreg_minus_ci": span(b["logistic"], "auroc_diff"),
           "gboost_acc": b["gboost"]["accuracy"], "gboost_f1": b["gboost"]["macro_f1"], "gboost_auroc": b["gboost"]["auroc"],
           "gboost_minus_ci": span(b["gboost"], "auroc_diff")}
    if "tokens" in m["predictor"]:
        out["token_acc"] = m["predictor"]["tokens"]["token_accuracy"]
        out["seq_acc"] = m["predictor"]["tokens"]["sequence_accuracy"]
        out["token_auroc"] = m["predictor"]["tokens"]["token_auroc"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--dynamics")
    ap.add_argument("--context", type=int)
    ap.add_argument("--continuation", type=int)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--edges", default="0.2,1.0")
    ap.add_argument("--max-per-class", type=int)
    ap.add_argument("--models", help="comma-separated sizes (default: every scored size)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    edges = class_edges(args.edges)
    scored = set(read_scores(args.scores)["model"])
    family = load_family(args.family)
    sizes = [s for s in family.size_names if s in scored]  # smallest first
    if args.models:
        unknown = set(args.models.split(",")) - set(sizes)
        if unknown:
            raise SystemExit(f"--models {', '.join(sorted(unknown))}: not scored (scored: {', '.join(sizes)})")
        sizes = [s for s in sizes if s in args.models.split(",")]
    settings = TrainSettings(seed=args.seed, epochs=args.epochs, max_per_class=args.max_per_class)
    modes = ["context"] + (["hidden"] if args.dynamics else [])
    rows, skipped, used = [], [], set()
    for model in sizes:
        for mode in modes:
            try:
                m = cross_validate(family, model=model, mode=mode, scores=args.scores, dynamics=args.dynamics, edges=edges,
                                   context=args.context, continuation=args.continuation, settings=settings, folds=args.folds)
            except MemdynError as e:
                skipped.append(f"{model} {mode}: {e}")
                continue
            rows.append({**row(model, mode, m), **best_single_feature(family, model, mode, args, edges)})
            used.add(m["cv"]["folds"])  # fewer than --folds where there are fewer documents
    if rows:
        print(f"{'/'.join(map(str, sorted(used)))}-fold cross-validation by training document, pooled out-of-fold predictions, natural set")
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(pd.DataFrame(rows).round(3).to_string(index=False))
    for s in skipped:
        print("skipped", s)


if __name__ == "__main__":
    main()
