"""Datasets for the predictor: labels from the score table, inputs from the training data (context
mode) or from the dynamics outputs (hidden mode), and leak-free splits by training document.

Classes (sequence level, from the score of one (context k, continuation c) cell):
  0 unmemorized  score <= edges[0]            (default 0.2: the paper's lowest transition bin)
  1 partial      edges[0] < score < edges[1]
  2 memorized    score >= edges[1]            (default 1.0: k-extractable, every token reproduced)

Split: a training sample is a window of the packed token stream and may span documents
first_doc..last_doc (data/samples.parquet); in a world with duplicated documents, shuffled into
the stream, the documents of its doc_ids list instead. A seeded set of documents is held out; the
test side is the samples lying wholly in held-out documents, the train side the samples touching
none, and samples across the border are left out, so no document is seen on both sides (holding
out whole documents, not first-document groups, keeps heavily duplicated documents testable).
Families without samples.parquet (hub families) treat each sample as its own document.

Cross-validation (fold_splits): the documents go to K seeded folds; fold f tests the samples whose
documents all lie in f and trains on the samples touching none of them. A sample spanning two
folds is tested in no fold.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dynamics.decoding.collect import check_scores_family
from dynamics.decoding.store import read_hidden, read_model, read_settings
from dynamics.corpus.megatron import IndexedDataset
from dynamics import seeds
from dynamics.errors import MemdynError
from dynamics.family.spec import FamilySpec
from dynamics.scoring.table import read_generations, read_scores
from dynamics.scoring.grid import CLASS_EDGES, CLASSES, last_revisions, pick_cell, score_classes

MIN_TRAIN_PER_CLASS = 2  # fewer cannot teach a class; the test side needs at least 1 of each
SPLIT_TRIES = 20  # candidate held-out document sets; the first leaving both sides non-empty wins


# ---------------------------------------------------------------------------- documents and splits


def sample_documents(family: FamilySpec, seq_idx: np.ndarray) -> pd.DataFrame:
    """first_doc, last_doc (and doc_ids where recorded) per seq_idx (index) from data/samples.parquet."""
    from dynamics.family.data import training_data

    seq_idx = np.asarray(seq_idx)
    t = training_data(family).samples if family.data and family.data.prefix else None
    if t is None:
        return pd.DataFrame({"first_doc": seq_idx, "last_doc": seq_idx}, index=pd.Index(seq_idx, name="seq_idx"))
    missing = np.setdiff1d(seq_idx, t.index.to_numpy())
    if len(missing):
        raise MemdynError(f"the samples table of {family.data.prefix} does not map training samples "
                          f"{missing[:5].tolist()} to documents; wrong family?")
    return t.loc[seq_idx, document_columns(t)].rename_axis("seq_idx")


def document_columns(rows: pd.DataFrame) -> list[str]:
    """The columns naming a sample's documents: first_doc, last_doc, and doc_ids where recorded."""
    return ["first_doc", "last_doc"] + (["doc_ids"] if "doc_ids" in rows else [])


def touches(docs: pd.DataFrame, owned: np.ndarray) -> np.ndarray:
    """Per sample: does its document range first_doc..last_doc (its doc_ids, where recorded)
    contain a document in `owned` (sorted)?"""
    if "doc_ids" in docs:
        return np.array([np.isin(ids, owned).any() for ids in docs["doc_ids"]], dtype=bool)
    lo = np.searchsorted(owned, docs["first_doc"].to_numpy(), side="left")
    hi = np.searchsorted(owned, docs["last_doc"].to_numpy(), side="right")
    return hi > lo


def touched_documents(docs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(sorted ids of every document the samples of `docs` touch, number of samples touching each)."""
    ranges = ([np.asarray(ids, dtype=np.int64) for ids in docs["doc_ids"]] if "doc_ids" in docs
              else [np.arange(a, b + 1) for a, b in zip(docs["first_doc"], docs["last_doc"])])
    return np.unique(np.concatenate(ranges), return_counts=True) if ranges else (np.zeros(0, np.int64),) * 2


def owned_documents(docs: pd.DataFrame) -> np.ndarray:
    """Sorted ids of every document the samples of `docs` touch."""
    return touched_documents(docs)[0]


def split_by_document(docs: pd.DataFrame, seed: int, test_size: float = 0.2,
                      labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train positions, test positions, train documents) of the rows of docs, leak-free: documents
    are held out in seeded random order until their samples reach `test_size` of all; the test side
    is the samples whose documents are all held out, the train side the samples touching none.
    With labels, the first of SPLIT_TRIES candidate splits whose both sides hold every class
    present is preferred (memorized samples cluster in a few duplicated documents), else the first
    with both sides non-empty."""
    ids, size = touched_documents(docs)
    if len(ids) < 2:
        raise MemdynError(f"all {len(docs)} samples come from one training document; a split by document needs two or more")
    first = None
    for attempt in range(SPLIT_TRIES):
        order = seeds.rng(seed, "split by document", attempt).permutation(len(ids))
        n_held = int(np.searchsorted(np.cumsum(size[order]), test_size * size.sum())) + 1
        held = np.sort(ids[order[:min(n_held, len(ids) - 1)]])
        train = np.flatnonzero(~touches(docs, held))
        test = np.flatnonzero(~touches(docs, np.setdiff1d(ids, held)))
        if not len(test) or not len(train):
            continue
        found = train, test, owned_documents(docs.iloc[train])
        if labels is None or all(set(np.unique(labels)) <= set(np.unique(labels[side])) for side in found[:2]):
            return found
        first = first or found
    if first is not None:
        return first
    raise MemdynError(f"no split by document of these {len(docs)} samples leaves a test set; the documents overlap too much")


def document_folds(docs: pd.DataFrame, folds: int, seed: int) -> list[np.ndarray]:
    """Sorted document ids of each fold: documents in seeded random order, each to the fold with the
    fewest samples so far (so one large document does not leave a fold nearly empty). More folds
    than documents give one fold per document."""
    ids, size = touched_documents(docs)
    if len(ids) < 2:
        raise MemdynError(f"all {len(docs)} samples come from one training document; "
                          "cross-validation by document needs two or more")
    folds = min(folds, len(ids))
    load, fold = np.zeros(folds), np.empty(len(ids), np.int64)
    for i in np.random.default_rng(seed).permutation(len(ids)):
        fold[i] = load.argmin()
        load[fold[i]] += size[i]
    return [ids[fold == f] for f in range(folds)]


def fold_splits(docs: pd.DataFrame, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train positions, test positions) per fold of document_folds; see the module docstring."""
    groups = document_folds(docs, folds, seed)
    every = owned_documents(docs)
    return [(np.flatnonzero(~touches(docs, held)), np.flatnonzero(~touches(docs, np.setdiff1d(every, held))))
            for held in groups]


def balance(levels: np.ndarray, max_per_level: int | None, seed: int) -> np.ndarray:
    """Positions keeping at most max_per_level rows of each level (seeded), in the original order."""
    if not max_per_level:
        return np.arange(len(levels))
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(levels == v), size=min(max_per_level, int((levels == v).sum())), replace=False)
            for v in np.unique(levels)]
    return np.sort(np.concatenate(keep))


def check_classes(labels: np.ndarray, where: str, minimum: int,
                  fix: str = "score more samples, pick another --context/--continuation or --edges") -> None:
    counts = np.bincount(labels, minlength=len(CLASSES))
    for name, n in zip(CLASSES, counts):
        if n < minimum:
            raise MemdynError(
                f"too few {name} samples in the {where} ({n}, need {minimum}; counts: "
                + ", ".join(f"{c} {k}" for c, k in zip(CLASSES, counts)) + f"); {fix}"
            )


# ---------------------------------------------------------------------------- tables


@dataclass
class Dataset:
    """One row per training sample of the target model's scored cell."""

    model: str
    revision: str
    context_len: int
    continuation_len: int
    rows: pd.DataFrame  # seq_idx, score, matches, label, context_loss, first_doc, last_doc (+ dynamics columns)
    inputs: np.ndarray  # context: tokens [n, k] int64; hidden: features [n, k + c, d + 2] float32
    token_labels: np.ndarray | None = None  # hidden: [n, c] bool, generated token == true token
    extra: dict = field(default_factory=dict)


def model_cell(table: pd.DataFrame, model: str, context: int | None, continuation: int | None):
    """Rows of `model` at its last revision in one (k, c) cell; (rows, revision, k, c)."""
    part = table[table["model"] == model]
    if part.empty:
        raise MemdynError(f"the scores hold no model {model!r} (models there: {', '.join(sorted(table['model'].unique()))})")
    revision = last_revisions(part)[model]
    part = part[part["revision"] == revision]
    k, c = pick_cell(part, context, continuation)
    cell = part[(part["context_len"] == k) & (part["continuation_len"] == c)]
    return cell.sort_values("seq_idx").reset_index(drop=True), revision, k, c


def context_dataset(family: FamilySpec, scores: str | Path, model: str, edges=CLASS_EDGES,
                    context: int | None = None, continuation: int | None = None) -> Dataset:
    """Context tokens seq[0:k] from the family's training data, labels from the scores."""
    check_scores_family(family, Path(scores))
    cell, revision, k, c = model_cell(read_scores(scores), model, context, continuation)
    gens = read_generations(scores)
    gens = gens[(gens["model"] == model) & (gens["revision"] == revision) & (gens["context_len"] == k)]
    rows = cell[["seq_idx", "score", "matches"]].copy()
    rows["label"] = score_classes(rows["score"], edges)
    rows["context_loss"] = gens.set_index("seq_idx").loc[rows["seq_idx"], "context_loss"].to_numpy()
    docs = sample_documents(family, rows["seq_idx"].to_numpy())
    rows["first_doc"], rows["last_doc"] = docs["first_doc"].to_numpy(), docs["last_doc"].to_numpy()
    if "doc_ids" in docs:
        rows["doc_ids"] = docs["doc_ids"].to_numpy()
    data = IndexedDataset(family.data.prefix).batch(0, len(IndexedDataset(family.data.prefix)))
    tokens = np.asarray(data[rows["seq_idx"].to_numpy()][:, :k], dtype=np.int64)  # [n, k]
    return Dataset(model, revision, k, c, rows, tokens)


def hidden_dataset(family: FamilySpec, dynamics: str | Path, model: str, edges=CLASS_EDGES) -> Dataset:
    """Last collected layer's hidden states + entropy and surprisal over context + greedy continuation,
    as `memdyn dynamics` collected them in its one pass over the fed tokens."""
    settings = read_settings(dynamics)
    if (settings.get("family"), settings.get("corpus_hash")) != (family.name, family.corpus.get("hash")):
        raise MemdynError(f"--dynamics {dynamics} was collected for family {settings.get('family')!r}, not {family.name!r}")
    if model not in settings.get("models", {}):
        raise MemdynError(f"--dynamics {dynamics} holds no model {model!r} (models there: {', '.join(settings.get('models', {}))})")
    meta, seqs, pos = read_model(dynamics, model)
    k, c = meta["context_len"], meta["continuation_len"]
    T = k + c
    layer = meta["layers"][-1]
    hidden = np.asarray(read_hidden(dynamics, model, layer), dtype=np.float32)  # [n, T, d]
    pos = pos.sort_values(["row", "position"])
    entropy = pos["entropy_nats"].to_numpy(np.float32).reshape(-1, T)  # [n, T]
    fed = pos["generated"].to_numpy().reshape(-1, T)  # context + greedy continuation
    match = (pos["token"].to_numpy().reshape(-1, T) == fed)[:, k:]  # [n, c]
    if "surprisal_nats" not in pos:
        raise MemdynError(f"--dynamics {dynamics} was collected before memdyn recorded surprisal; "
                          "run `memdyn dynamics` into a new --out (or delete that directory) and train again")
    surprisal = pos["surprisal_nats"].to_numpy(np.float32).reshape(-1, T)  # [n, T]
    rows = seqs[["seq_idx", "score", "matches", "random_draw", "span_count"]].copy()
    rows["label"] = score_classes(rows["score"], edges)
    docs = sample_documents(family, rows["seq_idx"].to_numpy())
    rows["first_doc"], rows["last_doc"] = docs["first_doc"].to_numpy(), docs["last_doc"].to_numpy()
    if "doc_ids" in docs:
        rows["doc_ids"] = docs["doc_ids"].to_numpy()
    rows["context_loss"] = surprisal[:, 1:k].mean(1)  # as the scorer's context loss, for the baselines
    rows["entropy_context"] = entropy[:, 1:k].mean(1)
    rows["entropy_continuation"] = entropy[:, k:].mean(1)
    rows["max_surprisal_continuation"] = surprisal[:, k:].max(1)  # the least confident greedy step
    return Dataset(model, meta["revision"], k, c, rows.reset_index(drop=True), hidden_features(hidden, entropy, surprisal),
                   match, {"layer": layer, "hidden_dtype": meta["hidden_dtype"]})


HIDDEN_CHANNELS = ("entropy", "surprisal")  # per-position channels after the hidden state, in this order


def hidden_features(hidden: np.ndarray, entropy: np.ndarray, surprisal: np.ndarray) -> np.ndarray:
    """[..., T, d + 2] hidden-mode inputs from hidden states [..., T, d] and the HIDDEN_CHANNELS
    [..., T] in nats (position 0 has no predicting distribution: its NaN becomes 0)."""
    chans = [np.nan_to_num(v, nan=0.0)[..., None] for v in (entropy, surprisal)]
    return np.concatenate([hidden, *chans], axis=-1).astype(np.float32)


def context_tokens(family: FamilySpec, seq_idx: np.ndarray, k: int) -> np.ndarray:
    ds = IndexedDataset(family.data.prefix)
    return np.asarray(ds.batch(0, len(ds))[np.asarray(seq_idx)][:, :k], dtype=np.int64)  # [n, k]


# ---------------------------------------------------------------------------- baseline features


def zlib_ratio(tokens: np.ndarray) -> np.ndarray:
    """Compressed / raw size of each row's token bytes: low = repetitive, boilerplate-like."""
    out = np.empty(len(tokens))
    for i, row in enumerate(np.asarray(tokens, dtype=np.uint32)):
        raw = row.tobytes()
        out[i] = len(zlib.compress(raw, 9)) / max(1, len(raw))
    return out


def scalar_features(family: FamilySpec, data: Dataset, tokens: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """[n, F] features for the baselines: context loss, zlib ratio, n-gram frequencies of the
    context (log1p of mean unigram / bigram count, and of the whole context's duplicate count),
    and (hidden mode only, where the dynamics outputs hold what they need) mean entropy over context
    and continuation and the greedy continuation's largest surprisal."""
    from dynamics.family.data import training_data

    cols, names = [], []
    if "context_loss" in data.rows:
        cols.append(data.rows["context_loss"].to_numpy()); names.append("context_loss")
    cols.append(zlib_ratio(tokens)); names.append("zlib_ratio")
    index = training_data(family).ngrams
    for n in (1, 2):
        counts = index.count_positions(tokens, n)[:, n - 1 :]  # [n, k - n + 1]
        cols.append(np.log1p(counts.mean(1))); names.append(f"log_mean_{n}gram_count")
    cols.append(np.log1p(index.count(tokens))); names.append("log_context_duplicates")
    for col in ("entropy_context", "entropy_continuation", "max_surprisal_continuation"):
        if col in data.rows:
            cols.append(data.rows[col].to_numpy()); names.append(col)
    return np.stack(cols, 1).astype(np.float64), names
