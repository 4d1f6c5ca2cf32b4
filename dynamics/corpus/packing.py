"""Packing documents into fixed-length training samples, as Pythia's data is packed.

Documents (each followed by `<|endoftext|>`) are joined into one stream and cut into samples of
`seq_length + 1` tokens (inputs `[:seq_length]`, labels `[1:]`); samples do not start at document
boundaries. The samples are shuffled with a seed and written in training order as `.bin/.idx`.
Whole documents are held out (never trained on) so that members and non-members, and predictor
train/test splits, never share a document. In the embedded world (world.py) training documents
are duplicated (the copies shuffled into the stream) and canaries overwrite windows of samples.

Files written under the data directory:
  train.{bin,idx}, heldout.{bin,idx}   samples in training order (heldout: in its own order)
  samples.parquet    one row per sample: split, sample_idx (position in its .bin), step (training
                     step that sees it, sample_idx // batch_size; -1 for heldout), first_doc and
                     last_doc (the documents at its two ends), doc_ids (list: every distinct
                     document it covers), n_docs (their number), max_doc_copies (largest `copies`
                     of those documents), canary_ids (list: canaries with a copy in it), domain (the
                     domain holding most of its tokens), domains
  documents.parquet  one row per document of the world (held-out ones from beyond it included):
                     doc_id, name, domain, split, n_tokens
                     (end-of-document included, after the duplicated documents' cut), copies
                     (occurrences in its split's stream: held-out documents are duplicated by the
                     training stream's rule in a stream of their own, so non-members are drawn as
                     members are)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dynamics.corpus import megatron
from dynamics.corpus.sources import Document
from dynamics.corpus.tokenizer import EOD_ID
from dynamics.corpus.world import Duplication, draw_copies, place_canaries, plan_documents, stream_order, stream_tokens
from dynamics.errors import MemdynError
from dynamics.files import atomic_path

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class PackedData:
    n_train: int
    n_heldout: int
    n_tokens: int  # tokens in all used documents (one copy each), end-of-document tokens included
    unused: list[int] = field(default_factory=list)  # documents left out of the world (target reached)
    n_documents: int | None = None  # documents used (training and held-out; None: not known, adopted samples)


def select_documents(docs: list[Document], seed: int, max_chars: int | None, max_doc_chars: int | None) -> list[Document]:
    """A seeded shuffle of the documents, each cut to `max_doc_chars`, up to `max_chars` in total."""
    order = np.random.default_rng(seed).permutation(len(docs))
    chosen, total = [], 0
    for i in order:
        doc = docs[i]
        if max_doc_chars is not None and len(doc.text) > max_doc_chars:
            doc = Document(doc.name, doc.text[:max_doc_chars], doc.domain)
        chosen.append(doc)
        total += len(doc.text)
        if max_chars is not None and total >= max_chars:
            break
    return chosen


def _pack_split(tokens: list[np.ndarray], domain_ids: np.ndarray, occ: np.ndarray, length: int,
                max_samples: int | None, rng):
    """Join the documents `occ` (ids in stream order, repeats allowed), cut into samples of `length`
    (at most max_samples), shuffle. Returns samples [n, length], metadata, and per document the
    number of its copies that start inside the kept stream."""
    sizes = np.array([len(tokens[i]) for i in occ], dtype=np.int64)
    stream = np.concatenate([tokens[i] for i in occ]) if len(occ) else np.zeros(0, np.int64)
    n = len(stream) // length if max_samples is None else min(len(stream) // length, max_samples)
    samples = stream[: n * length].reshape(n, length)
    occ_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    starts = np.arange(n, dtype=np.int64) * length
    first = np.searchsorted(occ_starts, starts, side="right") - 1
    last = np.searchsorted(occ_starts, starts + length - 1, side="right") - 1
    kept = np.bincount(occ[occ_starts < n * length], minlength=len(tokens)) if len(occ) else np.zeros(len(tokens), np.int64)
    # majority domain per sample, by tokens: one domain id per token, counted per row
    token_domain = np.repeat(domain_ids[occ], sizes)[: n * length].reshape(n, length)
    n_domains = int(domain_ids.max()) + 1 if len(domain_ids) else 1
    counts = np.stack([(token_domain == d).sum(axis=1) for d in range(n_domains)], axis=1)
    doc_ids = [np.unique(occ[a : b + 1]) for a, b in zip(first, last)]
    order = rng.permutation(n)
    meta = pd.DataFrame(
        {
            "sample_idx": np.arange(n),
            "first_doc": occ[first[order]],
            "last_doc": occ[last[order]],
            "doc_ids": [doc_ids[i].tolist() for i in order],
            "n_docs": [len(doc_ids[i]) for i in order],
            "domain_id": counts.argmax(axis=1)[order],
            "domain_mask": [(row > 0) for row in counts[order]],
        }
    )
    return samples[order], meta, kept


def pack_documents(
    tokens: list[np.ndarray],
    docs: list[Document],
    out_dir: str | Path,
    seq_length: int,
    seed: int,
    heldout_fraction: float,
    dtype: np.dtype,
    *,
    duplication: Duplication | None = None,
    target_samples: int | None = None,
    canaries: list[dict] | None = None,
    batch_size: int | None = None,
    heldout_pool: tuple[list[Document], list[np.ndarray]] | None = None,
    heldout_samples: int | None = None,
) -> PackedData:
    """Write train/heldout `.bin/.idx` and metadata for tokenized documents (EOD appended here).

    duplication: copies of the training documents (world.py); target_samples: documents are taken
    in order until the training stream fills so many samples, later ones are left unused
    (PackedData.unused); canaries: records of world.make_canaries, placed into the training samples
    (their placement fields are filled in); batch_size: for the `step` column; heldout_samples: the
    held-out split holds at most so many samples, its documents then those of heldout_pool (documents
    and tokens, taken in order while it holds fewer)."""
    if not 0 <= heldout_fraction < 1:
        raise MemdynError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    rng = np.random.default_rng(seed)
    dup = duplication or Duplication()
    length = seq_length + 1
    tokens = [np.append(np.asarray(t, dtype=np.int64), EOD_ID) for t in tokens]
    split, copies = plan_documents(np.array([len(t) for t in tokens], dtype=np.int64), dup, heldout_fraction,
                                   None if target_samples is None else target_samples * length, rng)
    if heldout_samples is not None:
        docs, tokens, split, copies = _add_heldout(docs, tokens, split, copies, heldout_pool or ([], []),
                                                   heldout_samples * length, dup, np.random.default_rng([seed, 17]))
    if dup.doc_tokens:  # duplicated documents are boilerplate-sized
        tokens = [np.append(t[: dup.doc_tokens], EOD_ID) if c > 1 and len(t) > dup.doc_tokens + 1 else t
                  for t, c in zip(tokens, copies)]
    domains = sorted({d.domain for d in docs})
    domain_ids = np.array([domains.index(d.domain) for d in docs], dtype=np.int64)
    out_dir = Path(out_dir)
    metas, counts = [], {}
    for name in SPLITS:
        occ = stream_order(np.where(split == name, copies, 0), rng)
        samples, meta, kept = _pack_split(tokens, domain_ids, occ, length, target_samples if name == "train" else heldout_samples, rng)
        copies = np.where(split == name, kept, copies)  # copies cut off at the end of the stream
        if name == "train" and len(samples) == 0:
            raise MemdynError(
                f"the corpus is too small: fewer than {length} tokens for training "
                "(use a larger corpus or a shorter --seq-length)"
            )
        if name == "train":
            per_sample = place_canaries(samples, canaries, batch_size or 1, rng) if canaries else [[]] * len(samples)
            meta["canary_ids"] = [per_sample[i] for i in meta.sample_idx]
        else:
            meta["canary_ids"] = [[] for _ in range(len(meta))]
        megatron.write(out_dir / name, samples, dtype)
        meta.insert(0, "split", name)
        meta["step"] = meta.sample_idx // batch_size if batch_size and name == "train" else -1
        metas.append(meta)
        counts[name] = len(samples)
    used = _write_tables(out_dir, pd.concat(metas, ignore_index=True), docs, tokens, split, copies, domains)
    return PackedData(counts["train"], counts["heldout"], int(sum(len(tokens[i]) for i in used)),
                      np.flatnonzero(split == "").tolist(), len(used))


def _add_heldout(docs: list[Document], tokens: list[np.ndarray], split: np.ndarray, copies: np.ndarray,
                 pool: tuple[list[Document], list[np.ndarray]], tokens_wanted: int, dup: Duplication, rng):
    """The pool's documents appended as held-out ones, with copies drawn by the duplication rule,
    while the held-out stream holds fewer than tokens_wanted tokens (documents, tokens with EOD,
    split and copies, extended)."""
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    have = int(stream_tokens(lengths, copies, dup)[split == "heldout"].sum())
    pool_copies = draw_copies(len(pool[1]), dup, rng)
    pool_sizes = stream_tokens(np.array([len(t) + 1 for t in pool[1]], dtype=np.int64), pool_copies, dup)
    take = 0
    while take < len(pool[1]) and have < tokens_wanted:
        have += int(pool_sizes[take])
        take += 1
    added = [np.append(np.asarray(t, dtype=np.int64), EOD_ID) for t in pool[1][:take]]
    return ([*docs, *pool[0][:take]], tokens + added, np.concatenate([split, np.full(take, "heldout", dtype=object)]),
            np.concatenate([copies, pool_copies[:take]]))


def _write_tables(out_dir: Path, meta: pd.DataFrame, docs: list[Document], tokens: list[np.ndarray],
                  split: np.ndarray, copies: np.ndarray, domains: list[str]) -> np.ndarray:
    """samples.parquet (one row per sample) and documents.parquet (one row per document the world
    uses); returns the used documents' ids."""
    meta["max_doc_copies"] = [int(copies[d].max()) if len(d) else 0 for d in meta.doc_ids]
    meta["domain"] = [domains[i] for i in meta.pop("domain_id")]
    meta["domains"] = [",".join(d for d, on in zip(domains, mask) if on) for mask in meta.pop("domain_mask")]
    with atomic_path(out_dir / "samples.parquet") as tmp:
        meta.to_parquet(tmp, index=False)
    used = np.flatnonzero(split != "")
    doc_table = pd.DataFrame({
        "doc_id": used, "name": [docs[i].name for i in used], "domain": [docs[i].domain for i in used],
        "split": split[used].astype(str), "n_tokens": [len(tokens[i]) for i in used], "copies": copies[used],
    })
    with atomic_path(out_dir / "documents.parquet") as tmp:
        doc_table.to_parquet(tmp, index=False)
    return used


def adopt_megatron(prefix: str, out_dir: str | Path, seq_length: int, seed: int, heldout_fraction: float) -> PackedData:
    """Use an already tokenized Megatron dataset: fixed-length items of seq_length + 1 tokens are
    taken as training samples in their stored order (Pythia's pre-shuffled Pile); other items are
    treated as documents and packed."""
    ds = megatron.IndexedDataset(prefix)
    if len(ds) and np.all(ds.sizes == seq_length + 1):
        n_heldout = int(round(len(ds) * heldout_fraction))
        n_train = len(ds) - n_heldout
        out_dir = Path(out_dir)
        megatron.write(out_dir / "train", (ds[i] for i in range(n_train)), ds.dtype)
        megatron.write(out_dir / "heldout", (ds[i] for i in range(n_train, len(ds))), ds.dtype)
        meta = pd.DataFrame(
            {
                "split": ["train"] * n_train + ["heldout"] * n_heldout,
                "sample_idx": np.r_[np.arange(n_train), np.arange(n_heldout)],
                "first_doc": -1, "last_doc": -1, "n_docs": -1, "domain": "unknown", "domains": "unknown",
            }
        )
        with atomic_path(out_dir / "samples.parquet") as tmp:
            meta.to_parquet(tmp, index=False)
        return PackedData(n_train, n_heldout, ds.n_tokens)
    docs = [Document(f"{prefix}:{i}", "", "unknown") for i in range(len(ds))]
    items = [np.asarray(ds[i]) for i in range(len(ds))]
    # Megatron documents usually end with EOD already; don't add a second one
    items = [t[:-1] if len(t) and t[-1] == EOD_ID else t for t in items]
    return pack_documents(items, docs, out_dir, seq_length, seed, heldout_fraction, ds.dtype)
