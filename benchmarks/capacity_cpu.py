"""Synthetic capacity on 2 CPU cores: run the `cpu` preset and compare alpha with the paper.

    torchrun --nproc_per_node 2 benchmarks/capacity_cpu.py --threads 1 [--out DIR] [--dtype ...]
    python benchmarks/capacity_cpu.py [--out DIR] [--dtype fp32|bf16] [--seed N] [--threads 2]

Two processes of one thread each (jobs split by rank) beat one process of two threads: these
models are too small for intra-op parallelism, and on a shared machine two spinning OpenMP
threads slowed steps ~30x (470 vs 13 ms for L1 d12, batch 96).

Prints per-model capacity (max over dataset sizes) in bits/param, the fitted alpha against
Morris et al. 2025 (3.64 fit; 3.83 fp32 / 3.51 bf16 means over 16 configurations), wall time
and peak memory. Resumable: rerunning with the same --out reuses finished jobs.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dynamics.capacity.synthetic import PRESETS, run_sweep  # noqa: E402

PAPER = {"fit": 3.64, "fp32": 3.83, "bf16": 3.51}
TARGET = (3.3, 4.3)  # the acceptance band for the cpu preset in fp32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/memdyn_capacity_cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    args = ap.parse_args()

    t0 = time.time()
    summary = run_sweep(PRESETS[args.preset], args.out, seed=args.seed, dtype=args.dtype, threads=args.threads)
    wall = time.time() - t0
    if summary is None:
        return
    import pandas as pd

    table = pd.read_parquet(Path(args.out) / "capacity.parquet")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table[["n_layer", "d_model", "params", "n_samples", "dataset_bits", "memorized_bits",
                     "bits_per_param", "converged", "steps", "f1", "auroc", "train_seconds"]]
              .to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print()
    print(f"{'model':<10} {'params':>8} {'capacity bits':>14} {'bits/param':>10} {'converged':>9}")
    for m in summary["models"]:
        print(f"L{m['n_layer']} d{m['d_model']:<6} {m['params']:>8,} {m['capacity_bits']:>14,.0f} "
              f"{m['bits_per_param']:>10.2f} {str(m['all_converged']):>9}")
    mean = sum(m["bits_per_param"] for m in summary["models"]) / len(summary["models"])
    print()
    print(f"{'':<28} {'memdyn':>8} {'paper':>8}")
    print(f"{'alpha (fit through origin)':<28} {summary['alpha']:>8.2f} {PAPER['fit']:>8.2f}")
    print(f"{'mean bits/param':<28} {mean:>8.2f} {PAPER[args.dtype]:>8.2f}  ({args.dtype})")
    ok = TARGET[0] <= summary["alpha"] <= TARGET[1]
    print(f"target band {TARGET[0]}-{TARGET[1]}: {'MET' if ok else 'MISSED'}")
    s = summary.get("mi_sigmoid", {})
    if "c1" in s:
        print(f"MI sigmoid on the sweep: c1={s['c1']:.3f} c2={s['c2']:.3f} c3={s['c3']:.3f} rmse={s['rmse']:.3f}")
    else:
        print(f"MI sigmoid on the sweep: not fitted ({s.get('error')})")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"not converged: {summary['n_not_converged']} of {summary['n_jobs']} runs; "
          f"wall {wall / 60:.1f} min; peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
