"""Train, save, load, evaluate and apply a memorization predictor (predictor.estimator) beside
its baselines (predictor.baselines), through one cross-validation loop.

A predictor directory (save_pretrained style):
  config.json        architecture and hyperparameters, mode, classes and edges, target model / cell,
                     training settings, family name + corpus hash + tokenizer vocab hash (checked on
                     every use)
  model.safetensors  weights
  tokenizer/         copy of the family's tokenizer (predict reads text with it)
  split.json         the training documents: every evaluation uses samples touching none of them
  metrics.json       test metrics of the predictor and the baselines, natural and balanced
  cv.json            (folds K) the same metrics of K-fold cross-validation by document: out-of-fold
                     predictions of K fresh predictors and baselines, pooled
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dynamics.decoding.store import HIDDEN_DTYPES
from dynamics.decoding.entropy import forward_pass
from dynamics.errors import MemdynError
from dynamics.family.load import load_model, load_tokenizer
from dynamics.family.spec import FamilySpec, load_family
from dynamics import manifest
from dynamics.files import atomic_path, check_replaceable, read_json
from dynamics.lock import locks_output
from dynamics.scoring.grid import CLASS_EDGES, CLASSES
from dynamics.scoring.kernel import reference_scores
from predictor.baselines import full_proba, make_baselines
from predictor.data import (
    MIN_TRAIN_PER_CLASS, Dataset, balance, check_classes, context_dataset, context_tokens, document_columns, fold_splits,
    hidden_dataset, hidden_features, scalar_features, split_by_document, touches,
)
from predictor.estimator import MemorizationPredictor
from predictor.metrics import classification_metrics, token_metrics

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


def vocab_hash(tokenizer) -> str:
    """sha256 of the tokenizer's (token, id) pairs: identifies a vocabulary across copies."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


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
                          n: int) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Every system fitted on each split's training rows and applied to its held-out rows; returns
    the pooled held-out outputs {system: {output: [n, ...]}} and the last split's fitted estimators."""
    pooled, fitted = {name: {} for name in systems}, {}
    for train, held in splits:
        for name, system in systems.items():
            fitted[name] = system.fit(y, train)
            scatter(pooled[name], system.outputs(fitted[name], held), held, n)
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
    predictor's predict_arrays output and, if given, each baseline's class probabilities."""
    sets = eval_sets(data, test, seed)
    y, score = data.rows["label"].to_numpy(), data.rows["score"].to_numpy()
    result = {"model": data.model, "revision": data.revision, "context_len": data.context_len,
              "continuation_len": data.continuation_len, "n_train": int(n_train),
              "predictor": {name: {**classification_metrics(y[idx], pred["proba"][idx]),
                                   "score_mae": float(np.abs(pred["score"][idx] - score[idx]).mean())}
                            for name, idx in sets.items()}}
    if data.token_labels is not None:
        k = data.context_len
        result["predictor"]["tokens"] = token_metrics(pred["token_proba"][test, k:], data.token_labels[test])
    if base is not None:
        result["baseline_features"] = features
        result["baselines"] = {b: {name: classification_metrics(y[idx], p[idx]) for name, idx in sets.items()}
                               for b, p in base.items()}
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
    if folds < 2:
        raise MemdynError(f"--folds must be >= 2 for cross-validation, got {folds}")
    labels, n = data.rows["label"].to_numpy(), len(data.rows)
    check_classes(labels, f"samples of {data.model}", MIN_TRAIN_PER_CLASS)  # before blaming the folds
    matches = data.rows["matches"].to_numpy()
    splits = fold_splits(data.rows[document_columns(data.rows)], folds, s.seed)
    # folds whose documents' samples all straddle into another fold test nothing
    splits = [(train[balance(matches[train], s.max_per_class, s.seed)], test) for train, test in splits if len(test)]
    for i, (train, _) in enumerate(splits):  # every fold is checked before any is trained
        check_classes(labels[train], f"training rows of cross-validation fold {i + 1} of {len(splits)}",
                      MIN_TRAIN_PER_CLASS, "use fewer --folds (this fold's documents hold most of the class), "
                      "score more samples or pick other --edges")
    test = np.sort(np.concatenate([test for _, test in splits]))
    check_classes(labels[test], "cross-validated samples", 1)
    compared, names = systems(family, data, s, arch, baselines)
    pooled, _ = cross_validated_proba(compared, labels, splits, n)
    per_fold = [{"n_train": int(len(train)), "n_test": int(len(held))} for train, held in splits]
    result = heldout_results(data, test, round(np.mean([f["n_train"] for f in per_fold])), pooled, names, s.seed)
    result["cv"] = {"folds": len(splits), "by": "document", "n_evaluated": int(len(test)),
                    "n_straddling": int(n - len(test)), "per_fold": per_fold}
    return result


# ---------------------------------------------------------------------------- save / load


def is_predictor_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def check_predictor_out(out: Path) -> None:
    """Before any work: `out` must be new, empty, or an earlier predictor (which is replaced)."""
    if out.exists() or out.is_symlink():
        check_replaceable(out, True, is_predictor_dir)


def save_predictor(out: Path, est: MemorizationPredictor, config: dict, tokenizer, train_docs: np.ndarray,
                   metrics: dict, cv: dict | None = None) -> None:
    with atomic_path(out, replaces=is_predictor_dir) as tmp:
        est.save_pretrained(tmp, metadata=config)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "split.json").write_text(json.dumps({"train_documents": train_docs.tolist()}) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if cv is not None:
            (tmp / "cv.json").write_text(json.dumps(cv, indent=2) + "\n")
        manifest.record_tree(tmp, "")  # inside the new directory, so it is replaced with it


def load_predictor(model_dir: str | Path) -> tuple[MemorizationPredictor, dict]:
    """The fitted estimator of a predictor directory and its config (its files checked against
    its manifest first)."""
    if is_predictor_dir(Path(model_dir)):
        manifest.verify(model_dir, ["*", "tokenizer/*"], f"memdyn predictor train ... --out {model_dir}", "predictor")
    est = MemorizationPredictor.from_pretrained(model_dir)
    return est, est.metadata_


def load_predictor_tokenizer(model_dir: str | Path, config: dict):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Path(model_dir) / "tokenizer"))
    if vocab_hash(tok) != config["vocab_hash"]:
        raise MemdynError(f"{model_dir}/tokenizer is not the tokenizer this predictor was trained with (vocabulary hash differs)")
    return tok


def check_family(config: dict, family: FamilySpec) -> None:
    """A predictor reads token ids: the family must have the same corpus and vocabulary."""
    if family.corpus.get("hash") != config["corpus_hash"] or vocab_hash(load_tokenizer(family)) != config["vocab_hash"]:
        raise MemdynError(
            f"the predictor was trained on family {config['family']!r} (corpus {str(config['corpus_hash'])[:12]}, "
            f"vocab {config['vocab_hash'][:12]}); family {family.name!r} has another corpus or tokenizer"
        )


def predictor_family(config: dict, family: FamilySpec | None = None) -> FamilySpec:
    """The family a predictor reads (default: the one it was trained on), checked against it."""
    if family is None:
        if not Path(config["family_dir"]).exists():
            raise MemdynError(f"the family this predictor was trained on is gone ({config['family_dir']}); pass --family DIR")
        family = load_family(config["family_dir"])
    check_family(config, family)
    return family


# ---------------------------------------------------------------------------- entry points


def _fingerprint(directory, settings_file: str) -> str | None:
    """sha256 of an input directory's settings file (None when no such input was given)."""
    if directory is None or not (Path(directory) / settings_file).is_file():
        return None
    return hashlib.sha256((Path(directory) / settings_file).read_bytes()).hexdigest()


@locks_output()
def train_predictor(family: FamilySpec, out: str | Path, *, model: str, mode: str = "context", scores=None,
                    dynamics=None, edges=CLASS_EDGES, context: int | None = None, continuation: int | None = None,
                    settings: TrainSettings | None = None, arch: dict | None = None, baselines: bool = True,
                    folds: int = 0) -> dict:
    """Train a predictor of `model`'s memorization on the training documents, evaluate it on the
    held-out ones, save it to `out`; with folds (>= 2) also cross-validate by document (cv.json; the
    saved predictor is the main split's). arch: MemorizationPredictor architecture arguments."""
    s = settings or TrainSettings()
    check_predictor_out(Path(out))
    resume = Path(out).parent / f".{Path(out).name}.resume"  # every fit's checkpoints, removed once saved
    s = replace(s, checkpoint=str(resume)) if s.checkpoint is None else s
    data = load_dataset(family, mode, model, scores, dynamics, edges, context, continuation)
    docs = data.rows[document_columns(data.rows)]
    train, test, owned = split_by_document(docs, s.seed, s.test_size, data.rows["label"].to_numpy())
    train = train[balance(data.rows["matches"].to_numpy()[train], s.max_per_class, s.seed)]
    labels = data.rows["label"].to_numpy()
    check_classes(labels[train], "training split", MIN_TRAIN_PER_CLASS)
    check_classes(labels[test], "test split", 1)
    compared, names = systems(family, data, s, arch, baselines)
    pooled, fitted = cross_validated_proba(compared, labels, [(train, test)], len(labels))
    est = fitted["predictor"]
    metrics = heldout_results(data, test, len(train), pooled, names, s.seed)
    metrics["loss_history"] = est.loss_history_
    cv = cross_validate_data(family, data, s, folds, arch, baselines) if folds else None
    tokenizer = load_tokenizer(family)
    config = {
        "mode": mode, "classes": list(CLASSES), "edges": list(edges),
        "family": family.name, "family_dir": str(family.root), "corpus_hash": family.corpus.get("hash"),
        "vocab_hash": vocab_hash(tokenizer), "target_model": data.model, "revision": data.revision,
        "context_len": data.context_len, "continuation_len": data.continuation_len, "layer": data.extra.get("layer"),
        "hidden_dtype": data.extra.get("hidden_dtype"), "train": {k: v for k, v in s.__dict__.items() if k not in ("device", "checkpoint")},
        # what the labels and inputs came from: content fingerprints of the scores and dynamics settings
        "scores": _fingerprint(scores, "_settings.json"), "dynamics": _fingerprint(dynamics, "_settings.json"),
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
    family = predictor_family(config, family)
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


def is_metrics_json(path: Path) -> bool:
    """An earlier `predictor eval --json` output (which a rerun may replace)."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(metrics, dict) and {"model", "predictor", "n_train"} <= metrics.keys()


def hidden_inputs(model, context: np.ndarray, continuation: int, layer: int,
                  hidden_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [k + c, d + 2], greedy continuation [c]) of one context, as `memdyn dynamics` collects
    them: greedy decoding (the scorer's reference), then one pass over context + continuation for the
    layer's hidden states (rounded to the dtype the dynamics stored), the entropies and surprisals."""
    generated, _ = reference_scores(model, context, len(context), continuation)
    fed = np.concatenate([context, generated])[None]  # [1, k + c]
    r = forward_pass(model, torch.as_tensor(fed, device=next(model.parameters()).device), [layer])
    hidden = r.hidden[layer][0].astype(HIDDEN_DTYPES[hidden_dtype]).astype(np.float32)
    return hidden_features(hidden, r.entropy[0], r.surprisal[0]), generated


def predict_text(model_dir: str | Path, text: str, *, family: FamilySpec | None = None, device: str = "cpu") -> dict:
    """Class, its probability and the predicted score of one context given as text. A hidden-mode
    predictor reads the first context_len tokens, decodes the continuation greedily with its target
    model and also gives, per continuation token, the probability that the model reproduces it."""
    est, config = load_predictor(model_dir)
    cfg = est.config_
    tok = load_predictor_tokenizer(model_dir, config)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise MemdynError("the text is empty after tokenization")
    extra = {"n_tokens": len(ids)}
    if config["mode"] == "hidden":
        k = config["context_len"]
        if len(ids) < k:
            raise MemdynError(f"the text is {len(ids)} tokens long; this hidden-mode predictor reads a context of "
                              f"{k} tokens, so give at least {k}")
        family = predictor_family(config, family)
        target = load_model(family, config["target_model"], config["revision"], device=device)
        x, generated = hidden_inputs(target, np.asarray(ids[:k]), config["continuation_len"], config["layer"],
                                     config["hidden_dtype"])
        extra["continuation"] = [tok.decode([t]) for t in generated]
    else:
        if len(ids) > cfg.max_len:
            raise MemdynError(f"the text is {len(ids)} tokens long; this predictor reads contexts of at most {cfg.max_len} tokens")
        if max(ids) >= cfg.vocab_size:
            raise MemdynError(f"token id {max(ids)} is outside this predictor's vocabulary ({cfg.vocab_size})")
        x = np.asarray(ids)  # [t], t <= max_len: the mask-free forward pools over t positions
    r = est.predict_outputs(x[None])
    proba = r["proba"][0]
    c = int(proba.argmax())
    if config["mode"] == "hidden":
        extra["token_proba"] = r["token_proba"][0, config["context_len"]:].tolist()
    return {"class": CLASSES[c], "probability": float(proba[c]), "score": float(r["score"][0]),
            "proba": dict(zip(CLASSES, map(float, proba))), **extra}
