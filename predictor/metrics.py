"""Metrics shared by the predictor and the baselines (sklearn where it has them)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from dynamics.bootstrap import weighted_auroc
from dynamics.scoring.grid import CLASSES, MEMORIZED


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE: sum over confidence bins of |accuracy - mean confidence| * share of rows."""
    conf = proba.max(1)
    correct = proba.argmax(1) == y
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        sel = bins == b
        ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict:
    """y [n] class ids, proba [n, C]. AUROC is memorized vs not (NaN when one side is absent)."""
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    pred = proba.argmax(1)
    labels = list(range(len(CLASSES)))
    is_mem = y == MEMORIZED
    auroc = float(roc_auc_score(is_mem, proba[:, MEMORIZED])) if 0 < is_mem.sum() < len(y) else float("nan")
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "auroc": auroc,
        "ece": expected_calibration_error(proba, y),
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),  # rows true, columns predicted
    }


def token_metrics(proba: np.ndarray, true: np.ndarray) -> dict:
    """proba [n, c] predicted probability, true [n, c] bool, per continuation token (will the model
    reproduce it?). Accuracies at threshold 0.5; AUROC over all tokens pooled (NaN if one side is absent)."""
    proba, true = np.asarray(proba, np.float64), np.asarray(true, bool)
    pred = proba > 0.5
    return {
        "token_accuracy": float((pred == true).mean()),
        "sequence_accuracy": float((pred == true).all(1).mean()),
        "token_auroc": float(roc_auc_score(true.ravel(), proba.ravel())) if 0 < true.sum() < true.size else float("nan"),
    }


def resampled_auroc(y: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The memorized-vs-not AUROC of each resample (weights [B, n] of the rows y [n], proba [n, C])
    -> [B]; all NaN when one side is absent."""
    is_mem = np.asarray(y) == MEMORIZED
    if not 0 < is_mem.sum() < len(is_mem):
        return np.full(len(weights), np.nan)
    score = np.asarray(proba, dtype=np.float64)[:, MEMORIZED]
    return weighted_auroc(score[is_mem], score[~is_mem], weights[:, is_mem], weights[:, ~is_mem])


def interval(values: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of resampled values, over the resamples where it is defined."""
    values = values[np.isfinite(values)]
    return tuple(float(q) for q in np.quantile(values, [0.025, 0.975])) if len(values) else (float("nan"),) * 2
