"""Benchmark the suffix-array n-gram index: build throughput, count throughput, bytes per token.

    python benchmarks/bench_ngrams.py [--family DIR] [--tokens 50000000] [--queries 100000]

Rows: the tiny family's training data (DIR/data/train.{bin,idx}; skipped with a note when absent)
and a synthetic stream of --tokens tokens (vocabulary 50,257, Zipf-like unigram frequencies, plus
repeated passages so that long n-grams recur, as in real text). Queries are n-grams taken at
random positions of the stream, so every search runs to full depth. Targets (issue): build
>= 1M tokens/s, count >= 100k n-grams/s (each n = 1..5), <= 10 bytes per token on disk.
Runs single-threaded (OMP_NUM_THREADS=1 unless set); the index files go to a temporary
directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # libdivsufsort uses OpenMP: measure one core

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dynamics.errors import MemdynError  # noqa: E402
from dynamics.ngrams import NgramIndex  # noqa: E402

TARGET_BUILD, TARGET_COUNT, TARGET_BYTES = 1e6, 1e5, 10.0


def synthetic_stream(n_tokens: int, vocab: int = 50257, seed: int = 0) -> np.ndarray:
    """Zipf-like (p ~ 1 / (rank + 2.7)) i.i.d. tokens, then ~5% of the stream overwritten by
    copies of earlier passages (64-2048 tokens), like duplicated documents in a web corpus."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(vocab) + 2.7)
    cdf = np.cumsum(p / p.sum())
    tokens = np.empty(n_tokens, dtype=np.uint16)
    for start in range(0, n_tokens, 1 << 22):  # in blocks, to keep the float64 temporaries small
        stop = min(start + (1 << 22), n_tokens)
        tokens[start:stop] = np.minimum(np.searchsorted(cdf, rng.random(stop - start)), vocab - 1)
    n_copies = n_tokens // 20 // 1056
    lengths = rng.integers(64, 2049, n_copies)
    for length in lengths:  # a loop over passages (~1k for 50M tokens), not over tokens
        src, dst = rng.integers(0, n_tokens - length, 2)
        tokens[dst : dst + length] = tokens[src : src + length]
    return tokens


def family_tokens(family: Path) -> np.ndarray | None:
    from dynamics.corpus.megatron import IndexedDataset

    prefix = family / "data" / "train"
    spec = family / "family.json"
    if spec.is_file():
        data = json.loads(spec.read_text()).get("data", {})
        if data.get("prefix"):
            prefix = Path(data["prefix"]) if Path(data["prefix"]).is_absolute() else family / data["prefix"]
    ds = IndexedDataset(prefix)
    return np.asarray(ds.tokens())


def bench(name: str, tokens: np.ndarray, n_queries: int, workdir: Path) -> dict:
    path = workdir / f"{name}.ngi"
    t0 = time.perf_counter()
    index = NgramIndex.build(tokens, path)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    row = {"dataset": name, "tokens": len(tokens), "build tok/s": len(tokens) / build_s}
    for n in range(1, 6):
        pos = rng.integers(0, len(tokens) - n + 1, n_queries)
        queries = np.asarray(tokens)[pos[:, None] + np.arange(n)]
        t0 = time.perf_counter()
        counts = index.count(queries)
        row[f"n={n}/s"] = n_queries / (time.perf_counter() - t0)
        assert (counts >= 1).all(), "every query was taken from the stream, so each occurs"
    row["bytes/tok"] = path.stat().st_size / len(tokens)
    ok = (row["build tok/s"] >= TARGET_BUILD and row["bytes/tok"] <= TARGET_BYTES
          and all(row[f"n={n}/s"] >= TARGET_COUNT for n in range(1, 6)))
    row["pass"] = "PASS" if ok else "FAIL"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", type=Path, help="a family directory with data/train.{bin,idx}")
    ap.add_argument("--tokens", type=int, default=50_000_000, help="synthetic stream length")
    ap.add_argument("--queries", type=int, default=100_000, help="n-grams per count batch")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_ngrams.") as tmp:
        if args.family is None or not args.family.is_dir():
            print(f"note: no family directory ({args.family}); skipping the tiny-family row")
        else:
            try:
                rows.append(bench(f"family:{args.family.name}", family_tokens(args.family), args.queries, Path(tmp)))
            except MemdynError as e:
                print(f"note: skipping the family row: {e}")
        t0 = time.perf_counter()
        tokens = synthetic_stream(args.tokens)
        print(f"generated {len(tokens):,} synthetic tokens in {time.perf_counter() - t0:.1f}s")
        rows.append(bench("synthetic-zipf", tokens, args.queries, Path(tmp)))

    cols = ["dataset", "tokens", "build tok/s"] + [f"n={n}/s" for n in range(1, 6)] + ["bytes/tok", "pass"]
    fmt = {"tokens": "{:,}", "build tok/s": "{:,.0f}", "bytes/tok": "{:.2f}"}
    fmt.update({f"n={n}/s": "{:,.0f}" for n in range(1, 6)})
    cells = [[fmt.get(c, "{}").format(r[c]) for c in cols] for r in rows]
    target = ["target", "", f">= {TARGET_BUILD:,.0f}"] + [f">= {TARGET_COUNT:,.0f}"] * 5
    target += [f"<= {TARGET_BYTES:.0f}", ""]
    cells.append(target)
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.rjust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |")


if __name__ == "__main__":
    main()
