"""Baselines fitted on the same training rows as the predictor: majority class, logistic regression
and gradient boosting on scalar features (predictor.data.scalar_features)."""

from __future__ import annotations

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dynamics.scoring.grid import CLASSES


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


def baseline_proba(X_train, y_train, X, seed: int) -> dict[str, np.ndarray]:
    """{baseline: class probabilities [len(X), C]} of every baseline fitted on (X_train, y_train)."""
    return {name: full_proba(clf.fit(X_train, y_train), X) for name, clf in make_baselines(seed).items()}
