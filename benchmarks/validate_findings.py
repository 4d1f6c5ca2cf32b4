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
PASS: the interval excludes 0 on the published side. FAIL: it does not (the line says whether the
trend is reversed or only not shown at 95%). NOT SHOWN: a stage or group is missing altogether.
When a context trend fails, two diagnostics follow: one holds the continuation fixed (the tokens
after the largest context) and grows the context backwards from it, separating the context's length
from the continuation's position in the sample, which the sample-aligned grid moves together; the
other repeats the trend on the samples whose longest span occurs twice or more in the training
stream, beside the share of samples whose span does at each context length.
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
def fixed_continuation_shares(run: Workdir, model: str) -> dict[int, float]:
    """Memorized share at the main continuation length with the continuation fixed at the tokens
    after the largest context K and the context sample[K - k:K] for every context length k."""
    contexts, c = sorted(run.scores.context_len.unique()), run.cell[1]
    K = contexts[-1]
    ds = IndexedDataset(run.family.data.prefix)
    idx = np.sort(run.scores.seq_idx.unique())
    tokens = torch.from_numpy(np.asarray(ds.batch(0, len(ds)))[idx].astype(np.int64))
    net = load_model(run.family, model)
    true = tokens[:, K : K + c].numpy()
    shares = {}
    for k in contexts:
        x = tokens[:, K - k : K + c]
        gen = np.concatenate([score_batch(net, x[i : i + 64], [k], c).generated[:, 0] for i in range(0, len(x), 64)])
        shares[int(k)] = float((gen == true).all(1).mean())
    return shares


def duplicated_span_diagnostic(run: Workdir, model: str, seed: int) -> tuple[str, str, str, str]:
    """The context trend on the samples whose longest span (largest context + continuation) occurs
    twice or more in the training stream, beside the share of samples whose span does at each
    context: a longer span more often runs past the end of a duplicated copy (or into a canary),
    which takes duplicated samples out of the grid's longer contexts."""
    from dynamics.analyses.checks import directional, fmt, memorized, paired_diff
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
    d = paired_diff(shares[contexts[0]], shares[contexts[-1]], seed)
    nums = (", ".join(f"context {k}: {F.pct((dup[k] >= 2).mean())}" for k in contexts) + " of the samples have a span "
            f"that occurs twice or more; memorized among the {len(kept)} whose {contexts[-1] + c}-token span does: "
            + ", ".join(f"context {k}: {F.pct(v.mean())}" for k, v in shares.items())
            + f"; {contexts[-1]} - {contexts[0]}: {fmt(*d, ' pts', 100)}")
    status, why = directional(*d)
    if status == "PASS":
        why = "where the text stays duplicated a longer context helps; the grid's longer spans more often leave it"
    return name, nums, status, why


def context_diagnostics(run: Workdir, checks, seed: int) -> list[tuple[str, str, str, str]]:
    """For sizes failing the context trend: the same comparison with the continuation held fixed."""
    out = []
    for name, _, status, _ in checks:
        if status != "FAIL" or "context length" not in name:
            continue
        model = name[name.rindex("(") + 1 : -1]
        shares = fixed_continuation_shares(run, model)
        K = max(shares)
        nums = ", ".join(f"context {k}: {F.pct(s)}" for k, s in shares.items())
        why = ("in the sample-aligned grid a longer context also moves the continuation deeper into the sample; "
               "with it fixed the trend holds (short contexts here start mid-sample, a position the model never saw them at)")
        status, why = ("PASS", why) if shares[K] > shares[min(shares)] else ("FAIL", "longer contexts do not help even with the continuation fixed")
        out.append((f"{DIAGNOSTIC}memorized share rises with context length, continuation fixed at tokens {K}..{K + run.cell[1]} ({model})",
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
