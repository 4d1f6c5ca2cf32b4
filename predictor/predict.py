"""Apply a saved predictor to one context given as text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dynamics.decoding.entropy import forward_pass
from dynamics.decoding.store import HIDDEN_DTYPES
from dynamics.errors import MemdynError
from dynamics.family.load import load_model
from dynamics.family.spec import FamilySpec
from dynamics.scoring.grid import CLASSES
from dynamics.scoring.kernel import reference_scores
from predictor.data import hidden_features
from predictor.store import load_predictor, load_predictor_tokenizer, predictor_family


def hidden_inputs(model, context: np.ndarray, continuation: int, layer: int,
                  hidden_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [k + c, d + 2], greedy continuation [c]) of one context, as `memdyn dynamics` collects
    them: greedy decoding (the scorer's reference), then one pass over context + continuation for the
    layer's hidden states (rounded to the dtype the dynamics stored), the entropies and surprisals."""
    generated, _ = reference_scores(model, context[None], len(context), continuation)
    generated = generated[0]  # [c]
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
        family = predictor_family(config, model_dir, family)
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
