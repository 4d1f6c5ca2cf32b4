"""Check a work directory against the published trends (shared/REFERENCE.md sections 1-6).

    python benchmarks/validate_findings.py --workdir runs [--workdir runs-seed1 ...] [--strict] [--seed 0]

Each check is printed with its numbers, the tested difference and its 95% bootstrap interval
(dynamics/analyses/checks.py), and PASS / FAIL / NOT SHOWN:
  memorized share (score 1) rises with model size; rises with context length in the published
  sample-aligned grid (per size); falls with continuation length (per size)  (Pythia; Chen et al. 2024)
  entropy jumps UP at the boundary for unmemorized samples, and not for memorized ones (per size)
  the unigram count of the true token DROPS at the first continuation position for unmemorized
  samples, and not for memorized ones (per size)                       (Chen et al. 2024)
  memorized and unmemorized hidden states separate more with size (silhouette, largest - smallest)
  memorization rises with duplication (logistic slope on log2 occurrences, per size)  (Carlini et al. 2022)
  canary exposure rises with repetitions (per size) and with size; canary memorization rises with
  repetitions (pooled over sizes) and with size            (Carlini et al. 2019; Huang et al. 2024)
  bits memorized grow with model size                       (Morris et al. 2025)
Every interval over training samples resamples the documents they start in (dynamics/bootstrap.py).
PASS: the interval excludes 0 on the published side. FAIL: it does not (the line says whether the
trend is reversed or only not shown at 95%). NOT SHOWN: a stage or group is missing altogether.
When a context trend fails, three diagnostics follow: one holds the continuation fixed (the tokens
after the largest context) and grows the context backwards from it, separating the context's length
from the continuation's position in the sample, which the sample-aligned grid moves together (paired
over samples, with an interval over their documents); one measures how much that continuation's loss falls with the
longer context, beside its fall within short contexts, i.e. how much of a long context the model
uses at all; the last repeats the trend on the samples whose longest span occurs twice or more in
the training stream, beside the share of samples whose span does at each context length.
With several work directories (other draws of the world, `memdyn run --seed N`), each is checked
and a table gives every check's status per run and in how many it passes.
The totals count the checks; the diagnostics, which explain a failed check, are counted apart.
--strict exits 1 when a check FAILs.
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
from dynamics.errors import MemdynError  # noqa: E402
from dynamics.family.load import load_model  # noqa: E402
from dynamics.report import findings as F  # noqa: E402
from dynamics.workdir import Workdir  # noqa: E402
from dynamics.scoring.kernel import score_batch  # noqa: E402

DIAGNOSTIC = "diagnostic: "  # explains a failed check; not a check itself


@torch.no_grad()
def fixed_continuation(run: Workdir, model: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per context length k: for every scored sample, whether the continuation after the largest
    context K (tokens K..K+c, c the main continuation) is reproduced greedily from the k tokens
    before it (1.0 or 0.0), and its mean loss in nats given them. k runs over the grid's contexts and
    a quarter and a half of the shortest, which give the loss's fall within short contexts for scale."""
    contexts, c = sorted(int(k) for k in run.scores.context_len.unique()), run.cell[1]
    K = contexts[-1]
    ds = IndexedDataset(run.family.data.prefix)
    idx = np.sort(run.scores.seq_idx.unique())
    tokens = torch.from_numpy(np.asarray(ds.batch(0, len(ds)))[idx].astype(np.int64))
    net = load_model(run.family, model)
    true = tokens[:, K : K + c].numpy()
    out = {}
    for k in sorted({max(1, contexts[0] // 4), max(1, contexts[0] // 2), *contexts}):
        x = tokens[:, K - k : K + c]
        parts = [score_batch(net, x[i : i + 64], [k], c) for i in range(0, len(x), 64)]
        generated = np.concatenate([p.generated[:, 0] for p in parts])
        out[k] = ((generated == true).all(1).astype(float), np.concatenate([p.loss[:, 0] for p in parts]))
    return out


def duplicated_span_diagnostic(run: Workdir, model: str, seed: int) -> tuple[str, str, str, str]:
    """The context trend on the samples whose longest span (largest context + continuation) occurs
    twice or more in the training stream, beside the share of samples whose span does at each
    context: a longer span more often runs past the end of a duplicated copy (or into a canary),
    which takes duplicated samples out of the grid's longer contexts."""
    from dynamics.analyses.checks import directional, documents, fmt, memorized, paired_diff
    from dynamics.analyses.duplication import read_duplication

    name = f"{DIAGNOSTIC}memorized share rises with context length on samples whose longest span is duplicated ({model})"
    c = run.cell[1]
    try:
        dup = read_duplication(run.scores_dir)
    except MemdynError as e:  # a run whose analyses stage has not annotated its scores
        return name, "-", "NOT SHOWN", str(e)
    dup = dup[dup.continuation_len == c].pivot(index="seq_idx", columns="context_len", values="span_count")
    contexts = sorted(dup.columns)
    kept = dup.index[dup[contexts[-1]] >= 2]
    shares = {k: memorized(run.scores, model=model, context_len=k, continuation_len=c).loc[kept] for k in contexts}
    d = paired_diff(shares[contexts[0]], shares[contexts[-1]], seed, groups=documents(run, kept))
    nums = (", ".join(f"context {k}: {F.pct((dup[k] >= 2).mean())}" for k in contexts) + " of the samples have a span "
            f"that occurs twice or more; memorized among the {len(kept)} whose {contexts[-1] + c}-token span does: "
            + ", ".join(f"context {k}: {F.pct(v.mean())}" for k, v in shares.items())
            + f"; {contexts[-1]} - {contexts[0]}: {fmt(*d, ' pts', 100)}")
    status, why = directional(*d)
    if status == "PASS":
        why = "where the text stays duplicated a longer context helps; the grid's longer spans more often leave it"
    return name, nums, status, why


def context_diagnostics(run: Workdir, checks, seed: int) -> list[tuple[str, str, str, str]]:
    """For sizes failing the context trend: the trend with the continuation held fixed, how much the
    models' loss of that continuation falls with a longer context, and the trend on duplicated spans."""
    from dynamics.analyses.checks import directional, documents, fmt, paired_diff

    groups = documents(run, np.sort(run.scores.seq_idx.unique()))  # fixed_continuation's samples, in its order
    out = []
    for name, _, status, _ in checks:
        if status != "FAIL" or "context length" not in name:
            continue
        model = name[name.rindex("(") + 1 : -1]
        fixed = fixed_continuation(run, model)
        grid = sorted(int(k) for k in run.scores.context_len.unique())
        k0, K, shortest, c = grid[0], grid[-1], min(fixed), run.cell[1]
        d = paired_diff(fixed[k0][0], fixed[K][0], seed, groups=groups)
        status, why = directional(*d)
        if status == "PASS":
            why = ("in the sample-aligned grid a longer context also moves the continuation deeper into the sample; "
                   "with it fixed the trend holds")
        nums = ", ".join(f"context {k}: {F.pct(fixed[k][0].mean())}" for k in grid) + f"; {K} - {k0}: {fmt(*d, ' pts', 100)}"
        out.append((f"{DIAGNOSTIC}memorized share rises with context length, continuation fixed at tokens {K}..{K + c} ({model})",
                    nums, status, why))
        # how much of a longer context the model uses at all: the same continuation's loss
        d = paired_diff(fixed[k0][1], fixed[K][1], seed, groups=groups)
        short = paired_diff(fixed[shortest][1], fixed[k0][1], seed, groups=groups)
        nums = (f"mean loss of tokens {K}..{K + c} given the last k tokens: "
                + ", ".join(f"k={k} {fixed[k][1].mean():.3f}" for k in sorted(fixed)) + " nats; "
                f"{K} - {k0}: {fmt(*d, ' nats')}; {k0} - {shortest}: {fmt(*short, ' nats')}")
        status, _ = directional(*d, rising=False)
        # per doubling of the context: the two ranges differ in how many doublings they span
        beyond, within = -d[0] / np.log2(K / k0), -short[0] / np.log2(k0 / shortest)
        why = (f"the loss falls by {beyond:.3g} nats per doubling of the context beyond {k0} tokens, against {within:.3g} "
               f"per doubling from {shortest} to {k0}: per doubling, context beyond {k0} tokens lowers the loss "
               f"{beyond / within:.0%} as much as context within them")
        out.append((f"{DIAGNOSTIC}longer contexts lower the loss of the continuation at tokens {K}..{K + c} ({model})",
                    nums, status, why))
        out.append(duplicated_span_diagnostic(run, model, seed))
    return out


def validate(run: Workdir, seed: int) -> list[tuple[str, str, str, str]]:
    from dynamics.analyses.checks import all_checks

    checks = all_checks(run, seed)
    return checks + context_diagnostics(run, checks, seed)


def totals(checks) -> str:
    counts = pd.Series([c[2] for c in checks if not c[0].startswith(DIAGNOSTIC)]).value_counts()
    line = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("PASS", "FAIL", "NOT SHOWN"))
    diagnostics = [c[2] for c in checks if c[0].startswith(DIAGNOSTIC)]
    return line + (f" (diagnostics: {diagnostics.count('PASS')} of {len(diagnostics)} PASS)" if diagnostics else "")


def across_worlds(runs: list[tuple[Workdir, list]]) -> pd.DataFrame:
    """One row per check (in first-seen order), one status column per run, and how many pass: a
    trend that passes in every draw of the world is a finding; one that passes in some is not decided
    by a single run."""
    table = pd.DataFrame([{"check": name, "run": i, "status": status} for i, (_, checks) in enumerate(runs)
                          for name, _, status, _ in checks])
    wide = table.pivot(index="check", columns="run", values="status").reindex(table["check"].unique()).fillna("-")
    wide.columns = [f"run {i + 1}" for i in wide.columns]
    wide["passes"] = [f"{(row == 'PASS').sum()} of {len(runs)}" for row in wide.to_numpy()]
    return wide


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, action="append",
                        help="a `memdyn run` work directory (default runs); give it again for other draws of the "
                             "world (`memdyn run --seed N`): each run is checked, then every check's status per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a check FAILs")
    args = parser.parse_args()
    try:
        opened = [Workdir.open(w) for w in args.workdir or [Path("runs")]]  # every directory checked before any work
        runs = [(run, validate(run, args.seed)) for run in opened]
    except MemdynError as e:
        print(f"validate_findings: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # it writes nothing, so there is nothing to keep or clean up
        print("validate_findings: interrupted; nothing was written", file=sys.stderr)
        return 130
    for run, checks in runs:
        print(f"{run.family.name} ({run.preset} preset, seed {run.family.seed}, sizes {', '.join(run.sizes)}) in {run.root} "
              "against REFERENCE.md sections 1-6\n")
        for name, nums, status, why in checks:
            print(f"[{status:>9}] {name}\n            {nums}" + (f"\n            why: {why}" if why else ""))
        print("\n" + totals(checks) + "\n")
    if len(runs) > 1:
        with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_colwidth", 110):
            legend = "; ".join(f"run {i + 1}: {run.root} (seed {run.family.seed})" for i, (run, _) in enumerate(runs))
            print(f"every check in {len(runs)} runs ({legend}):\n{across_worlds(runs).to_string()}")
    fails = sum(status == "FAIL" and not name.startswith(DIAGNOSTIC) for _, checks in runs for name, _, status, _ in checks)
    return 1 if args.strict and fails else 0


if __name__ == "__main__":
    sys.exit(main())
