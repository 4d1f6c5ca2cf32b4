"""A dynamics directory (`memdyn dynamics --out`): its settings, its files and their readers.

Files (OUT = --out):
  _settings.json                what the directory was computed with; other settings are refused
  <model>/meta.json             model, revision, params, context_len, continuation_len, layers,
                                hidden_dtype, n_rows
  <model>/sequences.parquet     one row per collected sequence, in `row` order (row r is
                                hidden_<layer>.npy[r]): row, seq_idx, matches, score, prefix_len,
                                group (unmemorized: score 0 | partial | memorized: score 1),
                                level_draw (drawn for its level), random_draw (drawn in the random
                                sample; a sequence may be both), near_tie, span_count (occurrences of
                                the true context + continuation in the training data), gen_span_count
                                (of context + greedy continuation), domain (if data/samples.parquet
                                has it)
  <model>/positions.parquet     one row per (row, position): row, seq_idx, matches, group, position,
                                segment (context | continuation), token (true), generated (fed token:
                                true in the context, greedy in the continuation), entropy_nats,
                                entropy_bits, surprisal_nats (-log p of the fed token), top1 (fed
                                token p is the argmax of its distribution),
                                orig_n1..orig_n5 (counts of the true n-gram ending at p), gen_n1..gen_n5
                                (of the fed n-gram ending at p); int64 counts, -1 where undefined
  <model>/hidden_<layer>.npy    [n_rows, T, d] hidden states (float16 by default) at input positions
                                0..T-1 of the fed tokens; layer indexes `hidden_states` as transformers
                                returns it (0 = embeddings, num_hidden_layers = last)
  tables/                       curves, jumps (boundary.py), distances, projections, separation
                                (embeddings.py), words (words.py): each as .parquet and .csv
  figures/                      PNG and SVG figures of those tables (plots.py)
A model's directory is written atomically; a rerun skips models already done and redoes the
(cheap) analysis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dynamics import manifest
from dynamics.errors import MemdynError
from dynamics.files import read_json

SETTINGS = "_settings.json"
NGRAM_ORDERS = (1, 2, 3, 4, 5)
HIDDEN_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class DynamicsSettings:
    family: str
    corpus_hash: str | None
    # content fingerprints of the scores and the data, not paths: a moved work directory resumes
    scores: str
    data: str
    context_len: int
    continuation_len: int
    models: dict  # model -> revision
    per_group: int
    layers: str
    seed: int
    dtype: str
    hidden_dtype: str


def read_settings(out: str | Path) -> dict:
    path = Path(out) / SETTINGS
    if not path.is_file():
        raise MemdynError(f"{out} is not a memdyn dynamics directory (no {SETTINGS}); run `memdyn dynamics` first")
    return read_json(path)


def read_model(out: str | Path, model: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(meta, sequences, positions) of one collected model."""
    d = Path(out) / model
    if not (d / "sequences.parquet").is_file():
        raise MemdynError(f"{d}: no collected dynamics for model {model}; rerun `memdyn dynamics`")
    manifest.verify(out, [f"{model}/*"], f"memdyn dynamics ... --out {out}", "dynamics", prefix=f"{model}/")
    return read_json(d / "meta.json"), pd.read_parquet(d / "sequences.parquet"), pd.read_parquet(d / "positions.parquet")


def read_hidden(out: str | Path, model: str, layer: int) -> np.ndarray:
    """hidden_<layer>.npy of a model, memory-mapped: [n_rows, T, d]."""
    path = Path(out) / model / f"hidden_{layer}.npy"
    if not path.is_file():
        raise MemdynError(f"{path}: layer {layer} was not collected for model {model}")
    return np.load(path, mmap_mode="r")
