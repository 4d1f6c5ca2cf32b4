"""Train and evaluate a memorization predictor (predictor.estimator) beside its baselines
(predictor.baselines), through one cross-validation loop; predictor.store writes and reads the
directory, predictor.predict applies it to text.

A predictor directory (save_pretrained style):
  config.json        architecture and hyperparameters, mode, classes and edges, target model / cell,
                     training settings, family name + corpus hash + tokenizer vocab hash (checked on
                     every use)
  model.safetensors  weights
  tokenizer/         copy of the family's tokenizer (predict reads text with it)
  split.json         the training documents: every evaluation uses samples touching none of them
  metrics.json       test metrics of the predictor and the baselines, natural and balanced, on the
                     held-out documents ("split": a split by document of test_size, or with folds
                     the first fold holding every class: that fold's predictor is the saved one)
  cv.json            (folds K) the same metrics of K-fold cross-validation by document: out-of-fold
                     predictions of K fresh predictors and baselines, pooled
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from dynamics.bootstrap import N_RESAMPLES, resample_counts
from dynamics.errors import MemdynError
from dynamics.family.load import load_tokenizer
from dynamics.family.spec import FamilySpec
from dynamics.files import read_json, settings_fingerprint
from dynamics.lock import locks_output
from dynamics.scoring.grid import CLASS_EDGES, CLASSES, MEMORIZED
from predictor.baselines import full_proba, make_baselines
from predictor.data import (
    MIN_TRAIN_PER_CLASS, Dataset, balance, check_classes, context_dataset, context_tokens, document_columns, fold_splits,
    hidden_dataset, owned_documents, scalar_features, split_by_document, touches,
)
from predictor.estimator import MemorizationPredictor
from predictor.metrics import classification_metrics, interval, resampled_auroc, token_metrics
from predictor.store import (
    check_predictor_out, is_metrics_json, load_predictor, predictor_family, save_predictor, vocab_hash,
)

MODES = ("context", "hidden")


@dataclass
class TrainSettings:
    seed: int = 0
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    max_per_class: int | None = None  # at most this many training rows per score level (matches)
    test_size: float = 0.2
    device: str = "cpu"
    checkpoint: str | None = None  # directory of per-epoch training checkpoints (a killed run resumes); no setting


def load_dataset(family: FamilySpec, mode: str, model: str, scores=None, dynamics=None, edges=CLASS_EDGES,
                 context=None, continuation=None) -> Dataset:
    if mode not in MODES:
        raise MemdynError(f"--input must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "hidden":
        if dynamics is None:
            raise MemdynError("--input hidden needs --dynamics DIR (the outputs of `memdyn dynamics`)")
        return hidden_dataset(family, dynamics, model, edges)
    if scores is None:
        raise MemdynError("--input context needs --scores DIR")
    return context_dataset(family, scores, model, edges, context, continuation)


def tokens_of(family: FamilySpec, data: Dataset) -> np.ndarray:
    """Context tokens [n, k] of a dataset's rows (hidden-mode inputs are features)."""
    return data.inputs if data.inputs.ndim == 2 else context_tokens(family, data.rows["seq_idx"].to_numpy(), data.context_len)


# ---------------------------------------------------------------------------- the systems compared


@dataclass
class System:
    """An estimator factory and what it reads: inputs X [n, ...] and per-row fit arrays (indexed by
    the training rows), plus constant fit arguments."""

    make: Callable[[], object]
    X: np.ndarray
    row_params: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def fit(self, y: np.ndarray, rows: np.ndarray):
        est = self.make()
        return est.fit(self.X[rows], y[rows], **{k: v[rows] for k, v in self.row_params.items()}, **self.params)

    def outputs(self, est, rows: np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(est, MemorizationPredictor):
            return est.predict_outputs(self.X[rows])
        return {"proba": full_proba(est, self.X[rows])}


def predictor_system(data: Dataset, s: TrainSettings, arch: dict | None, vocab_size: int) -> System:
    mode = "context" if data.inputs.ndim == 2 else "hidden"
    row_params = {"score": data.rows["score"].to_numpy()}
    if data.token_labels is not None:
        row_params["token_labels"] = data.token_labels
    make = lambda: MemorizationPredictor(input=mode, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=s.seed,
                                         device=s.device, checkpoint_dir=s.checkpoint, **(arch or {}))
    return System(make, data.inputs, row_params, {"context_len": data.context_len, "vocab_size": vocab_size})


def systems(family: FamilySpec, data: Dataset, s: TrainSettings, arch: dict | None, baselines: bool) -> tuple[dict, list]:
    """{name: System}: the predictor and (baselines=True) each baseline on the scalar features; and
    those features' names."""
    out = {"predictor": predictor_system(data, s, arch, len(load_tokenizer(family)))}
    names = None
    if baselines:
        X, names = scalar_features(family, data, tokens_of(family, data))
        out.update({name: System(lambda name=name: make_baselines(s.seed)[name], X) for name in make_baselines(s.seed)})
    return out, names


def cross_validated_proba(systems: dict[str, System], y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]],
                          n: int) -> tuple[dict[str, dict[str, np.ndarray]], list[dict]]:
    """Every system fitted on each split's training rows and applied to its held-out rows; returns
    the pooled held-out outputs {system: {output: [n, ...]}} and each split's fitted estimators."""
    pooled, fitted = {name: {} for name in systems}, []
    for train, held in splits:
        fitted.append({name: system.fit(y, train) for name, system in systems.items()})
        for name, system in systems.items():
            scatter(pooled[name], system.outputs(fitted[-1][name], held), held, n)
    return pooled, fitted


def scatter(into: dict[str, np.ndarray], values: dict[str, np.ndarray], rows: np.ndarray, n: int) -> None:
    """into[key][rows] = values[key], allocating [n, ...] arrays on first use."""
    for key, v in values.items():
        into.setdefault(key, np.zeros((n, *v.shape[1:]), v.dtype))[rows] = v


# ---------------------------------------------------------------------------- evaluation


def eval_sets(data: Dataset, test: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """natural: the test rows as drawn (hidden mode: the dynamics' random draw, if any);
    balanced: an equal number of each class (the smallest class's count), seeded."""
    natural = test
    if "random_draw" in data.rows and data.rows["random_draw"].to_numpy()[test].any():
        natural = test[data.rows["random_draw"].to_numpy()[test]]
    labels = data.rows["label"].to_numpy()[test]
    n = np.bincount(labels, minlength=len(CLASSES)).min()
    rng = np.random.default_rng(seed)
    balanced = np.sort(np.concatenate([rng.choice(test[labels == c], size=n, replace=False) for c in range(len(CLASSES))]))
    return {"natural": natural, "balanced": balanced}


def heldout_metrics(data: Dataset, test: np.ndarray, n_train: int, pred: dict[str, np.ndarray], seed: int,
                 features: list[str] | None = None, base: dict[str, np.ndarray] | None = None) -> dict:
    """Metrics on the test sets of predictions over all rows (only the `test` rows are read): the
    predictor's predict_arrays output and, if given, each baseline's class probabilities. Beside
    each AUROC, its 95% interval when the documents the test samples start in are resampled
    (auroc_lo / auroc_hi: a set's memorized samples often come from a few documents), and for each
    baseline the interval of its AUROC minus the predictor's on the same resamples (auroc_diff_lo /
    auroc_diff_hi)."""
    sets = eval_sets(data, test, seed)
    y, score = data.rows["label"].to_numpy(), data.rows["score"].to_numpy()
    docs = data.rows["first_doc"].to_numpy()
    weights = {name: resample_counts(np.random.default_rng(seed), N_RESAMPLES, len(idx), docs[idx]) for name, idx in sets.items()}
    boots = {name: resampled_auroc(y[idx], pred["proba"][idx], weights[name]) for name, idx in sets.items()}

    def with_interval(metrics: dict, boot: np.ndarray) -> dict:
        return {**metrics, **dict(zip(("auroc_lo", "auroc_hi"), interval(boot)))}

    def documents(idx: np.ndarray) -> dict:
        return {"documents": len(np.unique(docs[idx])), "memorized_documents": len(np.unique(docs[idx][y[idx] == MEMORIZED]))}

    result = {"model": data.model, "revision": data.revision, "context_len": data.context_len,
              "continuation_len": data.continuation_len, "n_train": int(n_train),
              "predictor": {name: {**with_interval(classification_metrics(y[idx], pred["proba"][idx]), boots[name]),
                                   "score_mae": float(np.abs(pred["score"][idx] - score[idx]).mean()), **documents(idx)}
                            for name, idx in sets.items()}}
    if data.token_labels is not None:
        k = data.context_len
        result["predictor"]["tokens"] = token_metrics(pred["token_proba"][test, k:], data.token_labels[test])
    if base is not None:
        result["baseline_features"] = features
        result["baselines"] = {}
        for b, p in base.items():
            result["baselines"][b] = {}
            for name, idx in sets.items():
                boot = resampled_auroc(y[idx], p[idx], weights[name])
                result["baselines"][b][name] = {**with_interval(classification_metrics(y[idx], p[idx]), boot),
                                                **dict(zip(("auroc_diff_lo", "auroc_diff_hi"), interval(boot - boots[name])))}
    return result


def heldout_results(data: Dataset, test: np.ndarray, n_train: int, pooled: dict, names: list | None, seed: int) -> dict:
    """heldout_metrics of pooled outputs: the predictor's, and the baselines' class probabilities."""
    base = {name: out["proba"] for name, out in pooled.items() if name != "predictor"} if names is not None else None
    return heldout_metrics(data, test, n_train, pooled["predictor"], seed, names, base)


def cross_validate_data(family: FamilySpec, data: Dataset, s: TrainSettings, folds: int, arch: dict | None = None,
                        baselines: bool = True) -> dict:
    """K-fold cross-validation by document (predictor.data.fold_splits): per fold, a fresh predictor
    and the baselines fitted on the (balanced) samples touching none of the fold's documents predict
    the fold's samples; the metrics are those of the pooled out-of-fold predictions."""
    return _cross_validation(family, data, s, folds, arch, baselines).result


@dataclass
class _CrossValidation:
    result: dict  # cv.json
    splits: list[tuple[np.ndarray, np.ndarray]]  # (training rows before balancing, test rows) per fold
    pooled: dict  # out-of-fold outputs, as cross_validated_proba's
    fitted: list[dict]  # each fold's fitted systems
    names: list | None  # the baselines' feature names


def _cross_validation(family: FamilySpec, data: Dataset, s: TrainSettings, folds: int, arch: dict | None,
                      baselines: bool) -> _CrossValidation:
    if folds < 2:
        raise MemdynError(f"--folds must be >= 2 for cross-validation, got {folds}")
    labels, n = data.rows["label"].to_numpy(), len(data.rows)
    check_classes(labels, f"samples of {data.model}", MIN_TRAIN_PER_CLASS)  # before blaming the folds
    matches = data.rows["matches"].to_numpy()
    # folds whose documents' samples all straddle into another fold test nothing
    raw = [(train, test) for train, test in fold_splits(data.rows[document_columns(data.rows)], folds, s.seed) if len(test)]
    splits = [(train[balance(matches[train], s.max_per_class, s.seed)], test) for train, test in raw]
    for i, (train, _) in enumerate(splits):  # every fold is checked before any is trained
        check_classes(labels[train], f"training rows of cross-validation fold {i + 1} of {len(splits)}",
                      MIN_TRAIN_PER_CLASS, "use fewer --folds (this fold's documents hold most of the class), "
                      "score more samples or pick other --edges")
    test = np.sort(np.concatenate([test for _, test in splits]))
    check_classes(labels[test], "cross-validated samples", 1)
    compared, names = systems(family, data, s, arch, baselines)
    pooled, fitted = cross_validated_proba(compared, labels, splits, n)
    per_fold = [{"n_train": int(len(train)), "n_test": int(len(held))} for train, held in splits]
    result = heldout_results(data, test, round(np.mean([f["n_train"] for f in per_fold])), pooled, names, s.seed)
    result["cv"] = {"folds": len(splits), "by": "document", "n_evaluated": int(len(test)),
                    "n_straddling": int(n - len(test)), "per_fold": per_fold}
    return _CrossValidation(result, raw, pooled, fitted, names)


# ---------------------------------------------------------------------------- save / load


# ---------------------------------------------------------------------------- entry points


@locks_output()
def train_predictor(family: FamilySpec, out: str | Path, *, model: str, mode: str = "context", scores=None,
                    dynamics=None, edges=CLASS_EDGES, context: int | None = None, continuation: int | None = None,
                    settings: TrainSettings | None = None, arch: dict | None = None, baselines: bool = True,
                    folds: int = 0) -> dict:
    """Train a predictor of `model`'s memorization on the training documents, evaluate it on the
    held-out ones, save it to `out`; with folds (>= 2) also cross-validate by document (cv.json; the
    saved predictor is then a fold's, see metrics.json "split"). arch: MemorizationPredictor
    architecture arguments."""
    s = settings or TrainSettings()
    check_predictor_out(Path(out))
    resume = Path(out).parent / f".{Path(out).name}.resume"  # every fit's checkpoints, removed once saved
    s = replace(s, checkpoint=str(resume)) if s.checkpoint is None else s
    data = load_dataset(family, mode, model, scores, dynamics, edges, context, continuation)
    docs = data.rows[document_columns(data.rows)]
    labels = data.rows["label"].to_numpy()
    cv = _cross_validation(family, data, s, folds, arch, baselines) if folds else None
    # with folds, the saved predictor is the first fold's whose held-out documents hold every class:
    # no extra fit (the main split's was a quarter of `memdyn run`'s predictor stage)
    fold = next((i for i, (_, held) in enumerate(cv.splits) if set(labels) <= set(labels[held])), None) if cv else None
    if fold is None:
        train, test, owned = split_by_document(docs, s.seed, s.test_size, labels)
        train = train[balance(data.rows["matches"].to_numpy()[train], s.max_per_class, s.seed)]
        check_classes(labels[train], "training split", MIN_TRAIN_PER_CLASS)
        check_classes(labels[test], "test split", 1)
        compared, names = systems(family, data, s, arch, baselines)
        pooled, fitted = cross_validated_proba(compared, labels, [(train, test)], len(labels))
        est, split = fitted[0]["predictor"], {"kind": "documents", "test_size": s.test_size}
    else:
        unbalanced, test = cv.splits[fold]
        train = unbalanced[balance(data.rows["matches"].to_numpy()[unbalanced], s.max_per_class, s.seed)]
        owned, pooled, names = owned_documents(docs.iloc[unbalanced]), cv.pooled, cv.names
        est, split = cv.fitted[fold]["predictor"], {"kind": "fold", "fold": fold + 1, "folds": len(cv.splits)}
    metrics = heldout_results(data, test, len(train), pooled, names, s.seed)
    metrics["split"] = split
    metrics["loss_history"] = est.loss_history_
    cv = cv.result if cv else None
    tokenizer = load_tokenizer(family)
    config = {
        "mode": mode, "classes": list(CLASSES), "edges": list(edges),
        "family": family.name, "family_dir": os.path.relpath(family.root, out), "corpus_hash": family.corpus.get("hash"),
        "vocab_hash": vocab_hash(tokenizer), "target_model": data.model, "revision": data.revision,
        "context_len": data.context_len, "continuation_len": data.continuation_len, "layer": data.extra.get("layer"),
        "hidden_dtype": data.extra.get("hidden_dtype"), "train": {k: v for k, v in s.__dict__.items() if k not in ("device", "checkpoint")},
        # what the labels and inputs came from: content fingerprints of the scores and dynamics settings
        "scores": settings_fingerprint(scores), "dynamics": settings_fingerprint(dynamics),
    }
    save_predictor(Path(out), est, config, tokenizer, owned, metrics, cv)
    shutil.rmtree(resume, ignore_errors=True)
    return metrics


def cross_validate(family: FamilySpec, *, model: str, mode: str = "context", scores=None, dynamics=None,
                   edges=CLASS_EDGES, context: int | None = None, continuation: int | None = None,
                   settings: TrainSettings | None = None, folds: int = 5, arch: dict | None = None,
                   baselines: bool = True) -> dict:
    """Metrics of `folds`-fold cross-validation by document of predictors of `model` (nothing saved)."""
    data = load_dataset(family, mode, model, scores, dynamics, edges, context, continuation)
    return cross_validate_data(family, data, settings or TrainSettings(), folds, arch, baselines)


def evaluate_predictor(model_dir: str | Path, *, scores=None, model: str | None = None, dynamics=None,
                       family: FamilySpec | None = None, baselines: bool = True, json_out: str | Path | None = None) -> dict:
    """Evaluate a saved predictor on `model`'s labels (default: its own target; another size is
    cross-size transfer), on samples touching none of its training documents; json_out: also write
    the metrics there (an existing file that is no earlier metrics file is refused, before any work)."""
    from dynamics.files import check_output_file, write_json

    if json_out is not None:
        check_output_file(json_out, "--json", is_metrics_json)
    est, config = load_predictor(model_dir)
    family = predictor_family(config, model_dir, family)
    model = model or config["target_model"]
    data = load_dataset(family, config["mode"], model, scores, dynamics, tuple(config["edges"]),
                        config["context_len"], config["continuation_len"])
    cfg = est.config_
    if data.inputs.shape[1:] != (cfg.max_len, *(() if config["mode"] == "context" else (cfg.n_features,))):
        raise MemdynError(f"model {model}'s inputs {tuple(data.inputs.shape[1:])} do not fit this predictor "
                          f"(trained on {config['target_model']}'s); hidden states of another width cannot transfer")
    owned = np.asarray(read_json(Path(model_dir) / "split.json")["train_documents"], dtype=np.int64)
    docs = data.rows[document_columns(data.rows)]
    test = np.flatnonzero(~touches(docs, owned))
    train = np.flatnonzero(touches(docs, owned))  # baselines: the same documents' labels of this model
    seed = config["train"]["seed"]
    train = train[balance(data.rows["matches"].to_numpy()[train], config["train"]["max_per_class"], seed)]
    labels = data.rows["label"].to_numpy()
    check_classes(labels[test], f"evaluation set of {model}", 1)
    compared, names = systems(family, data, TrainSettings(seed=seed), None, baselines)
    pooled = {"predictor": {}}
    scatter(pooled["predictor"], compared.pop("predictor").outputs(est, test), test, len(labels))
    pooled.update(cross_validated_proba(compared, labels, [(train, test)], len(labels))[0])
    result = heldout_results(data, test, len(train), pooled, names, seed)
    result["trained_on"] = config["target_model"]
    if json_out is not None:
        write_json(json_out, result)
    return result


