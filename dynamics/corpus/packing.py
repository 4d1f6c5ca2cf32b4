"""Packing documents into fixed-length training samples, as Pythia's data is packed.

Documents (each followed by `<|endoftext|>`) are joined into one stream and cut into samples of
`seq_length + 1` tokens (inputs `[:seq_length]`, labels `[1:]`); samples do not start at document
boundaries. The samples are shuffled with a seed and written in training order as `.bin/.idx`.
Whole documents are held out (never trained on) so that members and non-members, and predictor
train/test splits, never share a document.

Files written under the data directory:
  train.{bin,idx}, heldout.{bin,idx}   samples in training order (heldout: in its own order)
  samples.parquet    one row per sample: split, sample_idx (position in its .bin), first_doc,
                     last_doc, n_docs, domain (the domain holding most of its tokens), domains
  documents.parquet  one row per document: doc_id, name, domain, split, n_tokens
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dynamics.corpus import megatron
from dynamics.corpus.sources import Document
from dynamics.corpus.tokenizer import EOD_ID
from dynamics.errors import MemdynError
from dynamics.files import atomic_path

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class PackedData:
    n_train: int
    n_heldout: int
    n_tokens: int  # tokens in all documents, end-of-document tokens included


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


def _pack_split(tokens: list[np.ndarray], domain_ids: np.ndarray, doc_ids: np.ndarray, length: int, rng):
    """Join documents, cut into samples of `length`, shuffle. Returns samples [n, length] and metadata."""
    sizes = np.array([len(t) for t in tokens], dtype=np.int64)
    stream = np.concatenate(tokens) if tokens else np.zeros(0, np.int64)
    n = len(stream) // length
    samples = stream[: n * length].reshape(n, length)
    doc_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    starts = np.arange(n, dtype=np.int64) * length
    first = np.searchsorted(doc_starts, starts, side="right") - 1
    last = np.searchsorted(doc_starts, starts + length - 1, side="right") - 1
    # majority domain per sample, by tokens: one domain id per token, counted per row
    token_domain = np.repeat(domain_ids, sizes)[: n * length].reshape(n, length)
    n_domains = int(domain_ids.max()) + 1 if len(domain_ids) else 1
    counts = np.stack([(token_domain == d).sum(axis=1) for d in range(n_domains)], axis=1)
    order = rng.permutation(n)
    meta = pd.DataFrame(
        {
            "sample_idx": np.arange(n),
            "first_doc": doc_ids[first[order]],
            "last_doc": doc_ids[last[order]],
            "n_docs": (last - first + 1)[order],
            "domain_id": counts.argmax(axis=1)[order],
            "domain_mask": [(row > 0) for row in counts[order]],
        }
    )
    return samples[order], meta


def pack_documents(
    tokens: list[np.ndarray],
    docs: list[Document],
    out_dir: str | Path,
    seq_length: int,
    seed: int,
    heldout_fraction: float,
    dtype: np.dtype,
) -> PackedData:
    """Write train/heldout `.bin/.idx` and metadata for tokenized documents (EOD appended here)."""
    if not 0 <= heldout_fraction < 1:
        raise MemdynError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    rng = np.random.default_rng(seed)
    tokens = [np.append(np.asarray(t, dtype=np.int64), EOD_ID) for t in tokens]
    domains = sorted({d.domain for d in docs})
    domain_ids = np.array([domains.index(d.domain) for d in docs], dtype=np.int64)
    is_heldout = rng.random(len(docs)) < heldout_fraction
    length = seq_length + 1
    out_dir = Path(out_dir)
    metas, counts = [], {}
    for split in SPLITS:
        ids = np.flatnonzero(is_heldout == (split == "heldout"))
        samples, meta = _pack_split([tokens[i] for i in ids], domain_ids[ids], ids, length, rng)
        if split == "train" and len(samples) == 0:
            raise MemdynError(
                f"the corpus is too small: fewer than {length} tokens for training "
                "(use a larger corpus or a shorter --seq-length)"
            )
        megatron.write(out_dir / split, samples, dtype)
        meta.insert(0, "split", split)
        metas.append(meta)
        counts[split] = len(samples)
    meta = pd.concat(metas, ignore_index=True)
    meta["domain"] = [domains[i] for i in meta.pop("domain_id")]
    meta["domains"] = [",".join(d for d, on in zip(domains, mask) if on) for mask in meta.pop("domain_mask")]
    with atomic_path(out_dir / "samples.parquet") as tmp:
        meta.to_parquet(tmp, index=False)
    doc_table = pd.DataFrame(
        {
            "doc_id": np.arange(len(docs)),
            "name": [d.name for d in docs],
            "domain": [d.domain for d in docs],
            "split": np.where(is_heldout, "heldout", "train"),
            "n_tokens": [len(t) for t in tokens],
        }
    )
    with atomic_path(out_dir / "documents.parquet") as tmp:
        doc_table.to_parquet(tmp, index=False)
    return PackedData(counts["train"], counts["heldout"], int(sum(len(t) for t in tokens)))


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
