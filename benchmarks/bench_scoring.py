"""memdyn's grid scorer against the reference approach, on a trained family.

Reference: transformers `generate` (greedy) once per (context, continuation) cell, batched with the
same batch size — what public memorization scripts do. memdyn: one teacher-forced pass per batch
plus KV-cached decoding after the first mismatch, every cell read off one generation per context.

    python benchmarks/bench_scoring.py --family runs/family [--samples 500] [--models a,b] [--batch-size 8,16,32]
                                       [--schemes t1,k40,p0.9,t0.7k40] [--repeats 3]

memdyn runs three times per batch, alternating with the reference: greedy scores alone; with the
near-verbatim columns (edit distance, longest common substring, BLEU-4); and with those and the
extraction columns (p_z under each sampling scheme, with its n50/n90), as `memdyn score` writes
them. The speedup is that of the full scorer. Each set of columns has its own bound in issue 16:
"near-verbatim" is its cost over greedy alone (a few percent at most), "extraction" the cost of
the extraction columns over the scorer without them (at most 11.1% more time: a speedup at most
10% lower).

Besides speed, it prints the work ratio: token positions run through the model by the reference
(k + c - 1 per cell: the prompt, then one per generated token after the first) over those run by
memdyn (the teacher-forced positions plus one per decoding step). Where both are bound by
arithmetic (larger models, larger batches on a CPU) the speedup cannot go far beyond it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dynamics.corpus.megatron import IndexedDataset
from dynamics.family.load import load_model
from dynamics.family.spec import load_family
from dynamics.scoring.extraction import DEFAULT_SCHEMES, cell_logprobs, extraction_columns, parse_schemes
from dynamics.scoring.kernel import NEAR_TIE, cell_scores, score_batch
from dynamics.scoring.near import near_verbatim


@torch.no_grad()
def reference_batch(model, x: torch.Tensor, contexts, continuations) -> dict:
    """matches[(k, c)] -> [B] by one `generate` call per cell."""
    out = {}
    for k in contexts:
        for c in continuations:
            gen = model.generate(
                input_ids=x[:, :k], attention_mask=torch.ones_like(x[:, :k]), max_new_tokens=c,
                do_sample=False, eos_token_id=None, pad_token_id=model.config.pad_token_id,
            )[:, k:]
            out[(k, c)] = (gen == x[:, k : k + c]).sum(1).cpu().numpy()
    return out


def memdyn_batch(model, x: torch.Tensor, contexts, continuations, near: bool = False, schemes=()) -> tuple[dict, np.ndarray, int]:
    """matches[(k, c)] -> [B] from memdyn's scorer, its near-tie flags [B, K], and the token
    positions it ran through the model. near: also the table's near-verbatim columns; schemes:
    also its extraction columns under these schemes, as `memdyn score` computes them."""
    C = max(continuations)
    r = score_batch(model, x, list(contexts), C, list(schemes))
    true = np.stack([x[:, k : k + C].cpu().numpy() for k in contexts], 1)
    B, K = true.shape[:2]
    if near:
        near_verbatim(r.generated.reshape(B * K, C), true.reshape(B * K, C), list(continuations))
    if schemes:
        for c, logp in cell_logprobs(r.logp, list(continuations)).items():
            extraction_columns(list(schemes), logp.reshape(len(schemes), B * K))
    out = {}
    cells = cell_scores(r.generated, true, list(continuations))
    for c, (matches, _) in cells.items():
        for j, k in enumerate(contexts):
            out[(k, c)] = matches[:, j]
    # an item whose first mismatch m is before the last position decodes the C - 1 - m after it
    first_mismatch = cells[C][1]  # [B, K]
    positions = x.size(0) * (max(contexts) + C) + int(np.clip(C - 1 - first_mismatch, 0, None).sum())
    return out, r.min_gap < NEAR_TIE, positions


def _timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def compare(model, data: np.ndarray, contexts, continuations, batch_size, device, schemes=(), repeats: int = 1):
    """The scorers batch by batch, alternating, so that a machine whose speed drifts (shared
    cores, frequency scaling) slows all alike; each batch `repeats` times, each scorer timed by its
    fastest run (on a shared machine a run is only ever slowed). Returns (seconds of ours: greedy
    only, with the near-verbatim columns, with those and the extraction columns; seconds of the
    reference; cells that differ; cells that differ where memdyn saw no near-tie; work ratio)."""
    seconds = np.zeros(4)  # greedy, + near-verbatim, + extraction, reference
    differ = unexplained = ours_positions = 0
    for start in range(0, len(data), batch_size):
        x = torch.from_numpy(data[start : start + batch_size].astype(np.int64)).to(device)
        runs = (lambda: memdyn_batch(model, x, contexts, continuations),
                lambda: memdyn_batch(model, x, contexts, continuations, near=True),
                lambda: memdyn_batch(model, x, contexts, continuations, near=True, schemes=schemes),
                lambda: reference_batch(model, x, contexts, continuations))
        best = np.full(4, np.inf)
        for _ in range(repeats):
            timed = [_timed(run) for run in runs]
            best = np.minimum(best, [t for t, _ in timed])
        seconds += best
        (ours, ties, positions), ref = timed[2][1], timed[3][1]
        ours_positions += positions
        for (k, c), matches in ref.items():
            wrong = ours[(k, c)] != matches
            differ += int(wrong.sum())
            # a disagreement is excused only where memdyn saw a near-tie for that (sample, context)
            unexplained += int((wrong & ~ties[:, contexts.index(k)]).sum())
    ref_positions = len(data) * sum(k + c - 1 for k in contexts for c in continuations)
    return (*seconds, differ, unexplained, ref_positions / ours_positions)


def benchmark_samples(ds: IndexedDataset, n: int, seed: int) -> np.ndarray:
    """n sequences of the samples' length: the first n samples, or, when the data holds fewer (the
    tiny family trains on ~250), windows at seeded random offsets in the concatenated samples."""
    samples = np.asarray(ds.batch(0, len(ds)))  # [n_samples, length]
    if n <= len(samples):
        return samples[:n]
    stream, length = samples.reshape(-1), samples.shape[1]
    starts = np.random.default_rng(seed).integers(0, len(stream) - length + 1, size=n)
    return np.stack([stream[s : s + length] for s in starts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="runs/family")
    ap.add_argument("--models", default=None)
    ap.add_argument("--data", default=None, help="Megatron prefix (default: the family's training data)")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--batch-size", default="8,16,32", help="one batch size or several, comma-separated")
    ap.add_argument("--contexts", default="32,48,64,96")
    ap.add_argument("--continuations", default="16,32,48,64")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schemes", default=DEFAULT_SCHEMES, help="sampling schemes of the extraction columns ('' for none)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each batch per scorer; the fastest counts (3 on a shared machine)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    contexts = [int(v) for v in args.contexts.split(",")]
    continuations = [int(v) for v in args.continuations.split(",")]
    batch_sizes = [int(v) for v in args.batch_size.split(",")]
    schemes = parse_schemes(args.schemes)
    family = load_family(args.family, args.data)
    ds = IndexedDataset(family.data.prefix)
    data = benchmark_samples(ds, args.samples, args.seed)
    kind = "samples" if args.samples <= len(ds) else f"windows of the {len(ds)} samples' token stream"
    print(f"family {family.name}: {len(data)} {kind}, grid {contexts} x {continuations}, "
          f"torch threads {torch.get_num_threads()}, device {args.device}, schemes {','.join(s.name for s in schemes) or 'none'}, "
          f"fastest of {args.repeats} runs per batch")
    header = (f"{'model':>8} {'batch':>5} {'reference seq/s':>16} {'memdyn seq/s':>13} {'speedup':>8} {'work ratio':>11} "
              f"{'greedy-only seq/s':>18} {'near-verbatim':>14} {'extraction':>11} {'cells':>8} {'differ':>7} {'not near-tie':>13}")
    print("\n" + header, flush=True)
    for size in family.select(args.models.split(",") if args.models else None):
        model = load_model(family, size, device=args.device)
        for batch_size in batch_sizes:
            t_greedy, t_near, t_ours, t_ref, differ, unexplained, work = compare(
                model, data, contexts, continuations, batch_size, args.device, schemes, args.repeats)
            cells = len(data) * len(contexts) * len(continuations)
            print(f"{size.name:>8} {batch_size:5d} {len(data) / t_ref:16.1f} {len(data) / t_ours:13.1f} {t_ref / t_ours:7.1f}x "
                  f"{work:10.1f}x {len(data) / t_greedy:18.1f} {100 * (t_near / t_greedy - 1):+13.1f}% "
                  f"{100 * (t_ours / t_near - 1):+10.1f}% {cells:8d} {differ:7d} {unexplained:13d}", flush=True)
    print("\ntarget: speedup >= 5x on CPU, every cell equal except near-ties (top-2 logit gap < 1e-4); near-verbatim "
          "columns a few percent; extraction columns at most +11.1% (a speedup at most 10% lower)")


if __name__ == "__main__":
    main()
