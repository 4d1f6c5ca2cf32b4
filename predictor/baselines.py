"""Baselines on the same split as the predictor: majority class, logistic regression and gradient
boosting on scalar features (predictor.data.scalar_features)."""

from __future__ import annotations

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from predictor.data import CLASSES
from predictor.metrics import classification_metrics


def make_baselines(seed: int) -> dict:
    return {
        "majority": DummyClassifier(strategy="most_frequent"),
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)),
        # min_samples_leaf scaled down: the default 20 would leave tiny training sets one leaf
        "gboost": HistGradientBoostingClassifier(max_iter=100, min_samples_leaf=5, random_state=seed),
    }


def full_proba(clf, X: np.ndarray) -> np.ndarray:
    """predict_proba with a column for every class, also those absent from the training rows."""
    p = clf.predict_proba(X)
    out = np.zeros((len(X), len(CLASSES)))
    out[:, clf.classes_] = p
    return out


def run_baselines(X_train, y_train, eval_sets: dict[str, tuple[np.ndarray, np.ndarray]], seed: int) -> dict:
    """{baseline: {eval set: metrics}} for every baseline fitted on (X_train, y_train)."""
    results = {}
    for name, clf in make_baselines(seed).items():
        clf.fit(X_train, y_train)
        results[name] = {s: classification_metrics(y, full_proba(clf, X)) for s, (X, y) in eval_sets.items()}
    return results
