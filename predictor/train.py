"""Train, save, load, evaluate and apply a memorization predictor.

A predictor directory (save_pretrained style):
  config.json        architecture, mode, classes and edges, target model / cell, training settings,
                     family name + corpus hash + tokenizer vocab hash (checked on every use)
  model.safetensors  weights
  tokenizer/         copy of the family's tokenizer (predict reads text with it)
  split.json         the training documents: every evaluation uses samples touching none of them
  metrics.json       test metrics of the predictor and the baselines, natural and balanced
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dynamics.errors import MemdynError
from dynamics.family.load import load_tokenizer
from dynamics.family.spec import FamilySpec, load_family
from dynamics.files import atomic_path, read_json
from predictor.baselines import run_baselines
from predictor.data import (
    CLASSES, DEFAULT_EDGES, MIN_TRAIN_PER_CLASS, Dataset, balance, check_classes, context_dataset,
    context_tokens, hidden_dataset, scalar_features, split_by_document, touches,
)
from predictor.metrics import classification_metrics, token_metrics
from predictor.model import MemPredictor, PredictorConfig, loss_fn

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


def vocab_hash(tokenizer) -> str:
    """sha256 of the tokenizer's (token, id) pairs: identifies a vocabulary across copies."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


def load_dataset(family: FamilySpec, mode: str, model: str, scores=None, dynamics=None, edges=DEFAULT_EDGES,
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
def predict_arrays(net: MemPredictor, inputs: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
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


def fit(net: MemPredictor, data: Dataset, train: np.ndarray, s: TrainSettings) -> list[float]:
    """Adam on the rows `train`; returns the mean loss per epoch."""
    torch.manual_seed(s.seed)
    dev = torch.device(s.device)
    net.to(dev)
    x = torch.as_tensor(data.inputs[train])
    label = torch.as_tensor(data.rows["label"].to_numpy()[train])
    score = torch.as_tensor(data.rows["score"].to_numpy()[train], dtype=torch.float32)
    tok = torch.as_tensor(data.token_labels[train]) if data.token_labels is not None else None
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


def evaluate_rows(net: MemPredictor, family: FamilySpec, data: Dataset, train: np.ndarray, test: np.ndarray,
                  seed: int, baselines: bool = True) -> dict:
    """Predictor metrics on the test sets, and baselines fitted on `train` (this data's labels)."""
    sets = eval_sets(data, test, seed)
    pred = predict_arrays(net, data.inputs)
    y = data.rows["label"].to_numpy()
    result = {"model": data.model, "revision": data.revision, "context_len": data.context_len,
              "continuation_len": data.continuation_len, "n_train": int(len(train)),
              "predictor": {name: classification_metrics(y[idx], pred["proba"][idx]) for name, idx in sets.items()}}
    for name, idx in sets.items():
        result["predictor"][name]["score_mae"] = float(np.abs(pred["score"][idx] - data.rows["score"].to_numpy()[idx]).mean())
    if data.token_labels is not None:
        k = data.context_len
        result["predictor"]["tokens"] = token_metrics(pred["token_proba"][test, k:] > 0.5, data.token_labels[test])
    if baselines:
        X, names = scalar_features(family, data, tokens_of(family, data))
        result["baseline_features"] = names
        result["baselines"] = run_baselines(X[train], y[train], {n: (X[i], y[i]) for n, i in sets.items()}, seed)
    return result


# ---------------------------------------------------------------------------- save / load


def save_predictor(out: Path, net: MemPredictor, config: dict, tokenizer, train_docs: np.ndarray, metrics: dict) -> None:
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "split.json").write_text(json.dumps({"train_documents": train_docs.tolist()}) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def load_predictor(model_dir: str | Path) -> tuple[MemPredictor, dict]:
    d = Path(model_dir)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise MemdynError(f"{d} is not a memdyn predictor directory (needs config.json and model.safetensors)")
    config = read_json(d / "config.json")
    net = MemPredictor(PredictorConfig(**config["predictor"]))
    net.load_state_dict(load_file(str(d / "model.safetensors")))
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


# ---------------------------------------------------------------------------- entry points


def train_predictor(family_dir: str | Path, out: str | Path, model: str, mode: str = "context", scores=None,
                    dynamics=None, edges=DEFAULT_EDGES, context=None, continuation=None,
                    settings: TrainSettings | None = None, arch: dict | None = None, baselines: bool = True) -> dict:
    """Train on the target model's labels, evaluate on the held-out documents, save to `out`."""
    s = settings or TrainSettings()
    torch.manual_seed(s.seed)
    family = load_family(family_dir)
    data = load_dataset(family, mode, model, scores, dynamics, edges, context, continuation)
    docs = data.rows[["first_doc", "last_doc"]]
    train, test, owned = split_by_document(docs, s.seed, s.test_size)
    train = train[balance(data.rows["matches"].to_numpy()[train], s.max_per_class, s.seed)]
    labels = data.rows["label"].to_numpy()
    check_classes(labels[train], "training split", MIN_TRAIN_PER_CLASS)
    check_classes(labels[test], "test split", 1)
    tokenizer = load_tokenizer(family)
    T = data.inputs.shape[1]
    cfg = PredictorConfig(input=mode, max_len=T, **(arch or {}))
    if mode == "context":
        cfg.vocab_size = max(len(tokenizer), int(data.inputs.max()) + 1)
    else:
        cfg.n_features = data.inputs.shape[-1]
    net = MemPredictor(cfg)
    history = fit(net, data, train, s)
    metrics = evaluate_rows(net, family, data, train, test, s.seed, baselines)
    metrics["loss_history"] = history
    config = {
        "predictor": cfg.to_dict(), "mode": mode, "classes": list(CLASSES), "edges": list(edges),
        "family": family.name, "family_dir": str(Path(family_dir).resolve()), "corpus_hash": family.corpus.get("hash"),
        "vocab_hash": vocab_hash(tokenizer), "target_model": data.model, "revision": data.revision,
        "context_len": data.context_len, "continuation_len": data.continuation_len, "layer": data.extra.get("layer"),
        "train": {k: v for k, v in s.__dict__.items() if k != "device"},
    }
    save_predictor(Path(out), net, config, tokenizer, owned, metrics)
    return metrics


def evaluate_predictor(model_dir: str | Path, scores=None, model: str | None = None, dynamics=None,
                       family_dir: str | Path | None = None, baselines: bool = True) -> dict:
    """Evaluate a saved predictor on `model`'s labels (default: its own target; another size is
    cross-size transfer), on samples touching none of its training documents."""
    net, config = load_predictor(model_dir)
    family = load_family(family_dir or config["family_dir"])
    check_family(config, family)
    model = model or config["target_model"]
    data = load_dataset(family, config["mode"], model, scores, dynamics, tuple(config["edges"]),
                        config["context_len"], config["continuation_len"])
    if data.inputs.shape[1:] != (net.cfg.max_len, *(() if config["mode"] == "context" else (net.cfg.n_features,))):
        raise MemdynError(f"model {model}'s inputs {tuple(data.inputs.shape[1:])} do not fit this predictor "
                          f"(trained on {config['target_model']}'s); hidden states of another width cannot transfer")
    owned = np.asarray(read_json(Path(model_dir) / "split.json")["train_documents"], dtype=np.int64)
    docs = data.rows[["first_doc", "last_doc"]]
    test = np.flatnonzero(~touches(docs, owned))
    train = np.flatnonzero(touches(docs, owned))  # baselines: the same documents' labels of this model
    train = train[balance(data.rows["matches"].to_numpy()[train], config["train"]["max_per_class"], config["train"]["seed"])]
    check_classes(data.rows["label"].to_numpy()[test], f"evaluation set of {model}", 1)
    result = evaluate_rows(net, family, data, train, test, config["train"]["seed"], baselines)
    result["trained_on"] = config["target_model"]
    return result


def predict_text(model_dir: str | Path, text: str) -> dict:
    """Class, its probability and the predicted score of one context given as text."""
    net, config = load_predictor(model_dir)
    if config["mode"] != "context":
        raise MemdynError("predict reads text, so it needs a --input context predictor (hidden mode needs the model's states)")
    tok = load_predictor_tokenizer(model_dir, config)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise MemdynError("the text is empty after tokenization")
    if len(ids) > net.cfg.max_len:
        raise MemdynError(f"the text is {len(ids)} tokens long; this predictor reads contexts of at most {net.cfg.max_len} tokens")
    if max(ids) >= net.cfg.vocab_size:
        raise MemdynError(f"token id {max(ids)} is outside this predictor's vocabulary ({net.cfg.vocab_size})")
    x = torch.tensor([ids])  # [1, t], t <= max_len: the mask-free forward pools over t positions
    with torch.no_grad():
        r = net(x)
    proba = torch.softmax(r["logits"], -1)[0].numpy()
    c = int(proba.argmax())
    return {"class": CLASSES[c], "probability": float(proba[c]), "score": float(r["score"][0]),
            "proba": dict(zip(CLASSES, map(float, proba))), "n_tokens": len(ids)}
