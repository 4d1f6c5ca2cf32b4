"""Memorized share (score 1) of a family's sizes on its training samples, per cell and per
duplicate-count bin, without the scorer: greedy decoding reproduces sample[k:k+c] exactly when
the teacher-forced argmax equals the true token at every continuation position, so one forward
pass per sample decides every cell. Used to tune the embedded world's presets.

    python benchmarks/world_shares.py --family runs/family [--samples 3200] [--models 617k,1.6m]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from dynamics.corpus.megatron import IndexedDataset  # noqa: E402
from dynamics.family.load import load_model  # noqa: E402
from dynamics.family.presets import get_preset  # noqa: E402
from dynamics.family.spec import load_family  # noqa: E402

CELLS = ((32, 16), (48, 16), (64, 16), (96, 16), (32, 32), (32, 64))
BINS = ((1, 1), (2, 9), (10, 29), (30, 10**9))


@torch.no_grad()
def reproduced(model, x: torch.Tensor, length: int, batch: int = 64) -> np.ndarray:
    """[n, length - 1] bool: teacher-forced argmax equals the next true token."""
    out = [(model(input_ids=x[a:a + batch, :length - 1]).logits.argmax(-1) == x[a:a + batch, 1:length]).numpy()
           for a in range(0, len(x), batch)]
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", required=True)
    ap.add_argument("--samples", type=int, default=3200)
    ap.add_argument("--models", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    family = load_family(args.family)
    ds = IndexedDataset(family.data.prefix)
    idx = np.sort(np.random.default_rng(args.seed).choice(len(ds), size=min(args.samples, len(ds)), replace=False))
    x = torch.from_numpy(np.asarray(ds.batch(0, len(ds)))[idx].astype(np.int64))
    meta = pd.read_parquet(Path(family.data.prefix).parent / "samples.parquet")
    copies = meta[meta.split == "train"].set_index("sample_idx").loc[idx, "max_doc_copies"].to_numpy()
    grid = CELLS
    if family.preset:  # the preset's sample-aligned grid: contexts at the shortest continuation, and back
        p = get_preset(family.preset)
        grid = [(k, p.continuations[0]) for k in p.contexts] + [(p.contexts[0], c) for c in p.continuations[1:]]
    cells = [(k, c) for k, c in grid if k + c <= x.shape[1]]
    length = max(k + c for k, c in cells)
    print("model   " + " ".join(f"{k}/{c}" for k, c in cells) + " | share at the first cell by max_doc_copies")
    for size in family.select(args.models.split(",") if args.models else None):
        ok = reproduced(load_model(family, size.name, device="cpu"), x, length)
        shares = " ".join(f"{ok[:, k - 1:k - 1 + c].all(1).mean():.1%}" for k, c in cells)
        k, c = cells[0]
        mem = ok[:, k - 1:k - 1 + c].all(1)
        per = " ".join(f"{a}-{b if b < 10**9 else 'max'}: {mem[(copies >= a) & (copies <= b)].mean():.1%} "
                       f"(n {((copies >= a) & (copies <= b)).sum()})" for a, b in BINS)
        print(f"{size.name:>7} {shares} | {per}", flush=True)


if __name__ == "__main__":
    main()
