"""Quality of the memorization predictor against its baselines, per model size and input mode.

    python benchmarks/predictor_quality.py --family DIR --scores DIR [--dynamics DIR]
        [--context K --continuation C] [--epochs 20] [--seed 0] [--edges 0.2,1.0] [--max-per-class N]

For every size in the scores: trains a context-mode predictor (and a hidden-mode one when
--dynamics is given) on a split by training document, and prints one row per (model, mode) on the
natural test distribution: predictor accuracy / macro-F1 / AUROC (memorized vs not) beside the
majority class and logistic regression / gradient boosting on scalar features (context loss, zlib
ratio, n-gram counts, duplicate count, mean entropy in hidden mode). Sizes whose split lacks a
class are listed with the reason. Predictors go to a temporary directory (or --out).
Runs single-threaded. On the micro fixtures: --context 16 --continuation 4 gives all classes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from dynamics.errors import MemdynError  # noqa: E402
from dynamics.scoretable import read_scores  # noqa: E402
from predictor.data import parse_edges  # noqa: E402
from predictor.train import TrainSettings, train_predictor  # noqa: E402


def row(model: str, mode: str, m: dict, which: str) -> dict:
    p, b = m["predictor"][which], m["baselines"]
    out = {"model": model, "mode": mode, "set": which, "n_test": p["n"], "acc": p["accuracy"], "macro_f1": p["macro_f1"],
           "auroc": p["auroc"], "ece": p["ece"], "majority_acc": b["majority"][which]["accuracy"],
           "logreg_acc": b["logistic"][which]["accuracy"], "logreg_f1": b["logistic"][which]["macro_f1"],
           "logreg_auroc": b["logistic"][which]["auroc"], "gboost_acc": b["gboost"][which]["accuracy"],
           "gboost_auroc": b["gboost"][which]["auroc"]}
    if "tokens" in m["predictor"]:
        out["token_acc"] = m["predictor"]["tokens"]["token_accuracy"]
        out["seq_acc"] = m["predictor"]["tokens"]["sequence_accuracy"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--dynamics")
    ap.add_argument("--context", type=int)
    ap.add_argument("--continuation", type=int)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--edges", default="0.2,1.0")
    ap.add_argument("--max-per-class", type=int)
    ap.add_argument("--out", help="keep the predictors here (default: a temporary directory)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    edges = parse_edges(args.edges)
    sizes = sorted(read_scores(args.scores)["model"].unique())
    settings = TrainSettings(seed=args.seed, epochs=args.epochs, max_per_class=args.max_per_class)
    modes = ["context"] + (["hidden"] if args.dynamics else [])
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for model in sizes:
            for mode in modes:
                try:
                    m = train_predictor(args.family, root / f"{model}-{mode}", model, mode, args.scores, args.dynamics,
                                        edges, args.context, args.continuation, settings)
                except MemdynError as e:
                    skipped.append(f"{model} {mode}: {e}")
                    continue
                rows += [row(model, mode, m, "natural"), row(model, mode, m, "balanced")]
    if rows:
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(pd.DataFrame(rows).round(3).to_string(index=False))
    for s in skipped:
        print("skipped", s)


if __name__ == "__main__":
    main()
