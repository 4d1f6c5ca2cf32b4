"""A family's world: its training data with duplicated documents and canaries, the reference data,
and the loaders analyses use (dynamics/corpus/world.py has the construction rules).

Files of a family directory written here (besides data/ of packing.py):
  canaries.parquet     one row per canary: canary_id, kind ("tokens" | "words"), text, tokens
                       (list), count (copies), insert ("early" | "middle" | "late"), steps,
                       sample_idx, offsets (lists, one entry per copy in training order: the step
                       that sees it, the training sample holding its start, its token offset
                       there), length (tokens, or words for word canaries), space_size_log2
                       (log2 of the number of canaries of that form: length * log2(alphabet))
  canary_words.json    the word canaries' alphabet (distinct words of the world's text)
  data/reference.{bin,idx}  one pass of samples from documents the world does not use (no canary)
  data/reference.json  members (training samples whose unintended memorization is measured),
                       reference_docs (names), reference_samples
family.json records "canaries": "canaries.parquet" and "world": {"duplication", "canaries"}.

Families written before the world existed load as before; `require_world` (and the loaders) raise a
one-line error naming the command that rebuilds the family.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dynamics.corpus import megatron
from dynamics.corpus.packing import _pack_split, pack_documents
from dynamics.corpus.sources import Document
from dynamics.corpus.tokenizer import EOD_ID
from dynamics.corpus.world import check_capacity, check_collisions, corpus_words, make_canaries
from dynamics.errors import MemdynError
from dynamics.family.presets import Preset
from dynamics.files import atomic_path, write_json

CANARIES = "canaries.parquet"
WORDS = "canary_words.json"


def check_world_settings(p: Preset) -> None:
    """Bad world settings, refused before anything is written."""
    p.duplication.check()
    p.canaries.check(p.seq_length + 1)
    for name in ("heldout_samples", "membership_samples"):
        value = getattr(p, name)
        if value is not None and (not isinstance(value, int) or value < 2):
            raise MemdynError(f"preset {p.name!r}: {name} must be None or an integer >= 2, got {value!r}")
    if p.canaries.cells():
        stub = [{"canary_id": i, "kind": k, "tokens": [0] * p.canaries.length, "count": c, "insert": w}
                for i, (k, (c, w)) in enumerate((k, cell) for k in p.canaries.kinds for cell in p.canaries.cells())]
        check_capacity(stub, p.steps * p.batch_size, p.batch_size, p.seq_length + 1)


def canary_free_samples(p: Preset) -> int:
    """Training samples of the preset's world that hold no canary copy (each copy takes a sample of its own)."""
    copies = len(p.canaries.kinds) * sum(count for count, _ in p.canaries.cells())
    return p.steps * p.batch_size - copies


def _encode(tok, docs: list[Document]) -> list[np.ndarray]:
    ids = tok([d.text for d in docs], add_special_tokens=False)["input_ids"] if docs else []
    return [np.asarray(t, dtype=np.int64) for t in ids]


def _take_documents(tok, docs: list[Document], tokens_needed: int, chunk: int = 256):
    """Documents (and their tokens) taken in order until they hold tokens_needed tokens."""
    chosen, encoded, total = [], [], 0
    for start in range(0, len(docs), chunk):
        if total >= tokens_needed:
            break
        part = docs[start : start + chunk]
        for doc, t in zip(part, _encode(tok, part)):
            if total >= tokens_needed:
                break
            chosen.append(doc)
            encoded.append(t)
            total += len(t) + 1
    return chosen, encoded


def build_text_world(out: Path, p: Preset, docs: list[Document], n_world: int, tok, dtype, seed: int):
    """Pack the world from docs[:n_world] (duplicates, canaries), the reference data from the world's
    unused documents and docs[n_world:], and held-out documents beyond the world's own from the
    documents after the reference's. Every check runs before a data file is written."""
    world_docs = docs[:n_world]
    encoded = _encode(tok, world_docs)
    canaries = []
    if p.canaries.cells():
        words = corpus_words(d.text for d in world_docs)
        canaries = make_canaries(p.canaries, tok, words, seed)
        check_capacity(canaries, p.steps * p.batch_size, p.batch_size, p.seq_length + 1)
    length = p.seq_length + 1
    ref_docs, ref_tokens = [], []
    if p.reference_samples:
        # documents after the world's candidates; the world's unused ones are added after packing
        ref_docs, ref_tokens = _take_documents(tok, docs[n_world:], p.reference_samples * length)
    held_docs, held_tokens = [], []
    if p.heldout_samples:  # more held-out documents, after the reference's: no model sees them
        held_docs, held_tokens = _take_documents(tok, docs[n_world + len(ref_docs):], p.heldout_samples * length)
    if canaries:
        check_collisions(canaries, [np.concatenate(t) for t in (encoded, ref_tokens, held_tokens) if t])
    data_dir = out / "data"
    packed = pack_documents(encoded, world_docs, data_dir, p.seq_length, seed, p.heldout_fraction, dtype,
                            duplication=p.duplication, target_samples=p.steps * p.batch_size,
                            canaries=canaries, batch_size=p.batch_size,
                            heldout_pool=(held_docs, held_tokens), heldout_samples=p.heldout_samples)
    if canaries:
        with atomic_path(out / CANARIES) as tmp:
            pd.DataFrame(canaries).to_parquet(tmp, index=False)
        write_json(out / WORDS, words)
    if p.reference_samples:
        unused = [world_docs[i] for i in packed.unused]
        _write_reference(data_dir, unused + ref_docs, [encoded[i] for i in packed.unused] + ref_tokens,
                         p, packed.n_train, dtype, seed)
    return packed, bool(canaries)


def _write_reference(data_dir: Path, docs: list[Document], tokens: list[np.ndarray], p: Preset, n_train: int,
                     dtype, seed: int) -> None:
    """One pass of reference samples from documents the world never shows its models."""
    length = p.seq_length + 1
    tokens = [np.append(t, EOD_ID) for t in tokens]
    rng = np.random.default_rng([seed, 11])
    occ = np.arange(len(tokens))
    samples, _, _ = _pack_split(tokens, np.zeros(len(tokens), np.int64), occ, length, None, rng)
    # the stdlib holds near-copies (encodings/cp*.py): no reference sample may equal a training sample
    train = {row.tobytes() for row in np.asarray(megatron.IndexedDataset(data_dir / "train").batch(0, n_train), np.int64)}
    samples = samples[[row.astype(np.int64).tobytes() not in train for row in samples]][: p.reference_samples]
    if len(samples) < p.reference_samples:  # a small corpus: train_references holds out probe documents instead
        print(f"      the corpus leaves {len(samples)} samples of unused documents, {p.reference_samples} wanted "
              "for the reference model: it will be trained without a set of probe documents instead")
        return
    members = np.sort(np.random.default_rng([seed, 13]).choice(n_train, size=min(p.members, n_train), replace=False))
    megatron.write(data_dir / "reference", samples, dtype)
    write_json(data_dir / "reference.json", {
        "design": "one model trained for one pass on documents the world does not use; every training sample is a non-member of it",
        "members": members.tolist(), "reference_docs": [d.name for d in docs], "reference_samples": int(len(samples)),
    })


# ---------------------------------------------------------------------------- loading


def rebuild_hint(family) -> str:
    preset = getattr(family, "preset", None) or "tiny"
    return (f"rebuild it with `memdyn family train --preset {preset} --out NEW_DIR` "
            "(or `memdyn run --workdir NEW_DIR`)")


def require_world(family) -> Path:
    """The family's root, if it was built with the world's duplicate counts and canary manifest;
    otherwise a one-line MemdynError naming the command that rebuilds it."""
    root = getattr(family, "root", None)
    if family.kind != "local" or root is None:
        raise MemdynError(f"family {family.name!r} is not a memdyn-trained family: it has no duplicate counts or canaries")
    manifest = json.loads((Path(root) / "family.json").read_text())
    docs = Path(root) / "data" / "documents.parquet"
    has_copies = docs.is_file() and "copies" in pd.read_parquet(docs, columns=None).columns
    if "world" not in manifest or not has_copies:
        raise MemdynError(f"family {family.name!r} at {root} was built before memdyn recorded duplicate counts "
                          f"and canaries: {rebuild_hint(family)}")
    return Path(root)


def load_documents(family) -> pd.DataFrame:
    """data/documents.parquet of a world family (doc_id, name, domain, split, n_tokens, copies)."""
    return pd.read_parquet(require_world(family) / "data" / "documents.parquet")


def load_samples(family) -> pd.DataFrame:
    """The training samples' table of a world family, indexed by sample_idx (columns: see
    dynamics/corpus/packing.py)."""
    from dynamics.family.data import training_data

    require_world(family)
    return training_data(family).samples


def load_canaries(family) -> pd.DataFrame:
    """canaries.parquet (one row per canary, see the module docstring); a world without canaries
    (a preset with no canary counts) is an error too."""
    root = require_world(family)
    if not (root / CANARIES).is_file():
        raise MemdynError(f"family {family.name!r} at {root} holds no canaries (its preset inserts none): "
                          f"{rebuild_hint(family)} with a preset that inserts canaries")
    return pd.read_parquet(root / CANARIES)


def load_canary_words(family) -> list[str]:
    """The word canaries' alphabet, for drawing random candidates of the same form."""
    load_canaries(family)
    return json.loads((Path(family.root) / WORDS).read_text())
