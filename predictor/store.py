"""The predictor directory (save_pretrained style): writing, reading and checking it against the
family it reads (see predictor.train for the files it holds)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from dynamics import manifest
from dynamics.errors import MemdynError
from dynamics.family.load import load_tokenizer
from dynamics.family.spec import FamilySpec, load_family
from dynamics.files import atomic_path, check_replaceable, read_json, settings_fingerprint
from predictor.estimator import MemorizationPredictor


def vocab_hash(tokenizer) -> str:
    """sha256 of the tokenizer's (token, id) pairs: identifies a vocabulary across copies."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


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


def verify_predictor(model_dir: str | Path, rebuild: str | None = None) -> None:
    """Refuse a predictor directory whose files do not match its manifest; `rebuild`: the
    command the message names (default `memdyn predictor train ... --out DIR`)."""
    manifest.verify(model_dir, ["*", "tokenizer/*"], rebuild or f"memdyn predictor train ... --out {model_dir}", "predictor")


def load_predictor(model_dir: str | Path) -> tuple[MemorizationPredictor, dict]:
    """The fitted estimator of a predictor directory and its config (its files checked against
    its manifest first)."""
    if is_predictor_dir(Path(model_dir)):
        verify_predictor(model_dir)
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


def predictor_family(config: dict, model_dir: str | Path, family: FamilySpec | None = None) -> FamilySpec:
    """The family a predictor reads (default: the one it was trained on, recorded relative to the
    predictor directory so a work directory moves as a whole), checked against it."""
    if family is None:
        root = Path(model_dir) / config["family_dir"]  # an absolute family_dir stays as it is
        if not root.exists():
            raise MemdynError(f"the family this predictor was trained on is gone ({root}); pass --family DIR")
        family = load_family(root)
    check_family(config, family)
    return family


def trained_on(model_dir: str | Path, *, scores, dynamics) -> bool:
    """Was the predictor in `model_dir` trained on these scores and dynamics directories (the
    settings fingerprints its config records)?"""
    config = read_json(Path(model_dir) / "config.json")
    return all(config.get(name) in (None, settings_fingerprint(directory))
               for name, directory in (("scores", scores), ("dynamics", dynamics)))




def is_metrics_json(path: Path) -> bool:
    """An earlier `predictor eval --json` output (which a rerun may replace)."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(metrics, dict) and {"model", "predictor", "n_train"} <= metrics.keys()
