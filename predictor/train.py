"""Train, save, load, evaluate and apply a memorization predictor.

A predictor directory (save_pretrained style):
  config.json        architecture, mode, classes and edges, target model / cell, training settings,
                     family name + corpus hash + tokenizer vocab hash (checked on every use)
  model.safetensors  weights
  tokenizer/         copy of the family's tokenizer (predict reads text with it)
  split.json         the training documents: every evaluation uses samples touching none of them
  metrics.json       test metrics of the predictor and the baselines, natural and balanced
  cv.json            (--folds K) the same metrics of K-fold cross-validation by document: out-of-fold
                     predictions of K fresh predictors and baselines, pooled
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dynamics.decoding.collect import HIDDEN_DTYPES
from dynamics.decoding.entropy import forward_pass
from dynamics.errors import MemdynError
from dynamics.family.load import load_model, load_tokenizer, resolve_device
from dynamics.family.spec import FamilySpec, load_family
from dynamics.files import atomic_path, check_replaceable, read_json
from dynamics.scoring.grid import CLASS_EDGES, CLASSES
from dynamics.scoring.kernel import reference_scores
from predictor.baselines import baseline_proba
from predictor.data import (
    HIDDEN_CHANNELS, MIN_TRAIN_PER_CLASS, Dataset, balance, check_classes, context_dataset,
    context_tokens, document_columns, fold_splits, hidden_dataset, hidden_features, scalar_features,
    split_by_document, touches,
)
from predictor.metrics import classification_metrics, token_metrics
from predictor.model import MemPredictor, MemPredictorEnsemble, PredictorConfig, loss_fn

MODES = ("context", "hidden")
# Hidden mode's defaults under the arch a caller gives: with ~200 training rows a narrower, shallower
# encoder generalises better (4.2m, 5-fold AUROC memorized vs not of one encoder: 0.88 here, 0.82 at d 64 / 2 layers),
# and three members average away most of the spread over initialisations
HIDDEN_ARCH = {"d_model": 32, "n_layers": 1, "members": 3}


@dataclass
class TrainSettings:
    seed: int = 0
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    max_per_class: int | None = None  # at most this many training rows per score level (matches)
    test_size: float = 0.2
    device: str = "cpu"


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


# ---------------------------------------------------------------------------- forward passes


@torch.no_grad()
def predict_arrays(net: MemPredictorEnsemble, inputs: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """proba [n, C], score [n], token_proba [n, T] for inputs [n, T] (ids) or [n, T, F]."""
    net.eval()
    dev = next(net.parameters()).device
    out = {"proba": [], "score": [], "token_proba": []}
    for start in range(0, len(inputs), batch_size):
        x = torch.as_tensor(inputs[start : start + batch_size], device=dev)
        r = net(x)
        out["proba"].append(torch.softmax(r["logits"], -1).cpu().numpy())
        out["score"].append(r["score"].cpu().numpy())
        out["token_proba"].append(torch.sigmoid(r["token_logits"]).cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def new_predictor(data: Dataset, vocab_size: int, seed: int, arch: dict | None = None) -> MemPredictorEnsemble:
    """A freshly (seeded) initialised predictor sized for the data's inputs (arch over the mode's defaults)."""
    torch.manual_seed(seed)
    mode = "context" if data.inputs.ndim == 2 else "hidden"
    defaults = HIDDEN_ARCH if mode == "hidden" else {}
    cfg = PredictorConfig(input=mode, max_len=data.inputs.shape[1], **{**defaults, **(arch or {})})
    if cfg.d_model % cfg.n_heads:
        raise MemdynError(f"--d-model {cfg.d_model} must be a multiple of --heads {cfg.n_heads}")
    if cfg.members < 1:
        raise MemdynError(f"--members must be >= 1, got {cfg.members}")
    if mode == "context":
        cfg.vocab_size = max(vocab_size, int(data.inputs.max()) + 1)
    else:
        cfg.n_features, cfg.n_channels, cfg.context_len = data.inputs.shape[-1], len(HIDDEN_CHANNELS), data.context_len
    return MemPredictorEnsemble(cfg)


def fit(net: MemPredictorEnsemble, data: Dataset, train: np.ndarray, s: TrainSettings) -> list[float]:
    """Each member on the rows `train`, with its own batch order; returns the members' mean loss per epoch."""
    histories = [fit_member(member, data, train, replace(s, seed=s.seed + i)) for i, member in enumerate(net.members)]
    return np.mean(histories, axis=0).tolist()


def fit_member(net: MemPredictor, data: Dataset, train: np.ndarray, s: TrainSettings) -> list[float]:
    """Adam on the rows `train`; returns the mean loss per epoch."""
    torch.manual_seed(s.seed)
    dev = resolve_device(s.device)
    net.to(dev)
    x = torch.as_tensor(data.inputs[train])
    label = torch.as_tensor(data.rows["label"].to_numpy()[train])
    score = torch.as_tensor(data.rows["score"].to_numpy()[train], dtype=torch.float32)
    tok = torch.as_tensor(data.token_labels[train]) if data.token_labels is not None else None
    net.fit_channels(x)
    counts = torch.bincount(label, minlength=len(CLASSES)).float()
    weight = (counts.sum() / (len(CLASSES) * counts.clamp(min=1))).to(dev)  # inverse class frequency
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    gen = torch.Generator().manual_seed(s.seed)
    history = []
    for _ in range(s.epochs):
        net.train()
        order, total = torch.randperm(len(x), generator=gen), 0.0
        for start in range(0, len(x), s.batch_size):
            b = order[start : start + s.batch_size]
            out = net(x[b].to(dev))
            loss = loss_fn(out, label[b].to(dev), score[b].to(dev), weight,
                           tok[b].to(dev) if tok is not None else None, data.context_len)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        history.append(total / len(x))
    net.eval()
    return history


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


def baseline_features(family: FamilySpec, data: Dataset) -> tuple[np.ndarray, list[str]]:
    """Scalar features [n, F] of every row, and their names."""
    return scalar_features(family, data, tokens_of(family, data))


def evaluate_rows(net: MemPredictorEnsemble, family: FamilySpec, data: Dataset, train: np.ndarray, test: np.ndarray,
                  seed: int, baselines: bool = True) -> dict:
    """Predictor metrics on the test sets, and baselines fitted on `train` (this data's labels)."""
    pred = predict_arrays(net, data.inputs)
    if not baselines:
        return heldout_metrics(data, test, len(train), pred, seed)
    X, names = baseline_features(family, data)
    y = data.rows["label"].to_numpy()
    return heldout_metrics(data, test, len(train), pred, seed, names, baseline_proba(X[train], y[train], X, seed))


def cross_validate_data(family: FamilySpec, data: Dataset, s: TrainSettings, folds: int, arch: dict | None = None,
                        baselines: bool = True) -> dict:
    """K-fold cross-validation by document (predictor.data.fold_splits): per fold, a fresh predictor
    and the baselines fitted on the (balanced) samples touching none of the fold's documents predict
    the fold's samples; the metrics are those of the pooled out-of-fold predictions."""
    if folds < 2:
        raise MemdynError(f"--folds must be >= 2 for cross-validation, got {folds}")
    labels, n, vocab = data.rows["label"].to_numpy(), len(data.rows), len(load_tokenizer(family))
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
    X, names = baseline_features(family, data) if baselines else (None, None)
    pred, base, per_fold = {}, {} if baselines else None, []
    for train, held in splits:
        net = new_predictor(data, vocab, s.seed, arch)
        fit(net, data, train, s)
        scatter(pred, predict_arrays(net, data.inputs[held]), held, n)
        if baselines:
            scatter(base, baseline_proba(X[train], labels[train], X[held], s.seed), held, n)
        per_fold.append({"n_train": int(len(train)), "n_test": int(len(held))})
    result = heldout_metrics(data, test, round(np.mean([f["n_train"] for f in per_fold])), pred, s.seed, names, base)
    result["cv"] = {"folds": len(splits), "by": "document", "n_evaluated": int(len(test)),
                    "n_straddling": int(n - len(test)), "per_fold": per_fold}
    return result


def scatter(into: dict[str, np.ndarray], values: dict[str, np.ndarray], rows: np.ndarray, n: int) -> None:
    """into[key][rows] = values[key], allocating [n, ...] arrays on first use."""
    for key, v in values.items():
        into.setdefault(key, np.zeros((n, *v.shape[1:]), v.dtype))[rows] = v


# ---------------------------------------------------------------------------- save / load


def is_predictor_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def check_predictor_out(out: Path) -> None:
    """Before any work: `out` must be new, empty, or an earlier predictor (which is replaced)."""
    if out.exists() or out.is_symlink():
        check_replaceable(out, True, is_predictor_dir)


def save_predictor(out: Path, net: MemPredictorEnsemble, config: dict, tokenizer, train_docs: np.ndarray, metrics: dict,
                   cv: dict | None = None) -> None:
    with atomic_path(out, replaces=is_predictor_dir) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "split.json").write_text(json.dumps({"train_documents": train_docs.tolist()}) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if cv is not None:
            (tmp / "cv.json").write_text(json.dumps(cv, indent=2) + "\n")


def load_predictor(model_dir: str | Path) -> tuple[MemPredictorEnsemble, dict]:
    d = Path(model_dir)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise MemdynError(f"{d} is not a memdyn predictor directory (needs config.json and model.safetensors)")
    config = read_json(d / "config.json")
    if config["mode"] == "hidden" and not config["predictor"].get("n_channels"):
        raise MemdynError(f"{d} is a hidden-mode predictor from before the surprisal channel; train it again")
    net = MemPredictorEnsemble(PredictorConfig(**config["predictor"]))
    weights = load_file(str(d / "model.safetensors"))
    if not any(k.startswith("members.") for k in weights):  # saved before ensembles: one predictor
        weights = {f"members.0.{k}": v for k, v in weights.items()}
    net.load_state_dict(weights)
    net.eval()
    return net, config


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


def predictor_family(config: dict, family_dir: str | Path | None = None) -> FamilySpec:
    """The family a predictor reads (default: the one it was trained on), checked against it."""
    if family_dir is None and not Path(config["family_dir"]).exists():
        raise MemdynError(f"the family this predictor was trained on is gone ({config['family_dir']}); pass --family DIR")
    family = load_family(family_dir or config["family_dir"])
    check_family(config, family)
    return family


# ---------------------------------------------------------------------------- entry points


def train_predictor(family_dir: str | Path, out: str | Path, model: str, mode: str = "context", scores=None,
                    dynamics=None, edges=CLASS_EDGES, context=None, continuation=None,
                    settings: TrainSettings | None = None, arch: dict | None = None, baselines: bool = True,
                    folds: int = 0) -> dict:
    """Train on the target model's labels, evaluate on the held-out documents, save to `out`; with
    folds (>= 2) also cross-validate by document (cv.json; the saved predictor is the main split's)."""
    s = settings or TrainSettings()
    check_predictor_out(Path(out))
    family = load_family(family_dir)
    data = load_dataset(family, mode, model, scores, dynamics, edges, context, continuation)
    docs = data.rows[document_columns(data.rows)]
    train, test, owned = split_by_document(docs, s.seed, s.test_size)
    train = train[balance(data.rows["matches"].to_numpy()[train], s.max_per_class, s.seed)]
    labels = data.rows["label"].to_numpy()
    check_classes(labels[train], "training split", MIN_TRAIN_PER_CLASS)
    check_classes(labels[test], "test split", 1)
    tokenizer = load_tokenizer(family)
    net = new_predictor(data, len(tokenizer), s.seed, arch)
    history = fit(net, data, train, s)
    metrics = evaluate_rows(net, family, data, train, test, s.seed, baselines)
    metrics["loss_history"] = history
    cv = cross_validate_data(family, data, s, folds, arch, baselines) if folds else None
    config = {
        "predictor": net.cfg.to_dict(), "mode": mode, "classes": list(CLASSES), "edges": list(edges),
        "family": family.name, "family_dir": str(Path(family_dir).resolve()), "corpus_hash": family.corpus.get("hash"),
        "vocab_hash": vocab_hash(tokenizer), "target_model": data.model, "revision": data.revision,
        "context_len": data.context_len, "continuation_len": data.continuation_len, "layer": data.extra.get("layer"),
        "hidden_dtype": data.extra.get("hidden_dtype"), "train": {k: v for k, v in s.__dict__.items() if k != "device"},
    }
    save_predictor(Path(out), net, config, tokenizer, owned, metrics, cv)
    return metrics


def cross_validate(family_dir: str | Path, model: str, mode: str = "context", scores=None, dynamics=None,
                   edges=CLASS_EDGES, context=None, continuation=None, settings: TrainSettings | None = None,
                   folds: int = 5, arch: dict | None = None, baselines: bool = True) -> dict:
    """Metrics of `folds`-fold cross-validation by document of predictors of `model` (nothing saved)."""
    family = load_family(family_dir)
    data = load_dataset(family, mode, model, scores, dynamics, edges, context, continuation)
    return cross_validate_data(family, data, settings or TrainSettings(), folds, arch, baselines)


def evaluate_predictor(model_dir: str | Path, scores=None, model: str | None = None, dynamics=None,
                       family_dir: str | Path | None = None, baselines: bool = True) -> dict:
    """Evaluate a saved predictor on `model`'s labels (default: its own target; another size is
    cross-size transfer), on samples touching none of its training documents."""
    net, config = load_predictor(model_dir)
    family = predictor_family(config, family_dir)
    model = model or config["target_model"]
    data = load_dataset(family, config["mode"], model, scores, dynamics, tuple(config["edges"]),
                        config["context_len"], config["continuation_len"])
    if data.inputs.shape[1:] != (net.cfg.max_len, *(() if config["mode"] == "context" else (net.cfg.n_features,))):
        raise MemdynError(f"model {model}'s inputs {tuple(data.inputs.shape[1:])} do not fit this predictor "
                          f"(trained on {config['target_model']}'s); hidden states of another width cannot transfer")
    owned = np.asarray(read_json(Path(model_dir) / "split.json")["train_documents"], dtype=np.int64)
    docs = data.rows[document_columns(data.rows)]
    test = np.flatnonzero(~touches(docs, owned))
    train = np.flatnonzero(touches(docs, owned))  # baselines: the same documents' labels of this model
    train = train[balance(data.rows["matches"].to_numpy()[train], config["train"]["max_per_class"], config["train"]["seed"])]
    check_classes(data.rows["label"].to_numpy()[test], f"evaluation set of {model}", 1)
    result = evaluate_rows(net, family, data, train, test, config["train"]["seed"], baselines)
    result["trained_on"] = config["target_model"]
    return result


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


def predict_text(model_dir: str | Path, text: str, family_dir: str | Path | None = None, device: str = "cpu") -> dict:
    """Class, its probability and the predicted score of one context given as text. A hidden-mode
    predictor reads the first context_len tokens, decodes the continuation greedily with its target
    model and also gives, per continuation token, the probability that the model reproduces it."""
    net, config = load_predictor(model_dir)
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
        family = predictor_family(config, family_dir)
        target = load_model(family, config["target_model"], config["revision"], device=device)
        x, generated = hidden_inputs(target, np.asarray(ids[:k]), config["continuation_len"], config["layer"],
                                     config.get("hidden_dtype") or "float32")  # not recorded by older predictors
        extra["continuation"] = [tok.decode([t]) for t in generated]
    else:
        if len(ids) > net.cfg.max_len:
            raise MemdynError(f"the text is {len(ids)} tokens long; this predictor reads contexts of at most {net.cfg.max_len} tokens")
        if max(ids) >= net.cfg.vocab_size:
            raise MemdynError(f"token id {max(ids)} is outside this predictor's vocabulary ({net.cfg.vocab_size})")
        x = np.asarray(ids)  # [t], t <= max_len: the mask-free forward pools over t positions
    r = predict_arrays(net, x[None])
    proba = r["proba"][0]
    c = int(proba.argmax())
    if config["mode"] == "hidden":
        extra["token_proba"] = r["token_proba"][0, config["context_len"]:].tolist()
    return {"class": CLASSES[c], "probability": float(proba[c]), "score": float(r["score"][0]),
            "proba": dict(zip(CLASSES, map(float, proba))), **extra}
