"""`memdyn run`: every stage on the embedded default, each cached and resumable.

The work directory holds one family's whole run:
  WORKDIR/run.json             preset and seed the directory belongs to
  WORKDIR/family/              `memdyn family train` output
  WORKDIR/scores/              final checkpoints of every size over the preset's grid
  WORKDIR/scores_checkpoints/  every checkpoint of every size at the main cell (k=32, c=16)
  WORKDIR/dynamics/            entropy, n-gram and hidden-state dynamics at the main cell
  WORKDIR/predictor/<size>-<mode>/  memorization predictors (context tokens; hidden states) per size,
                               with 5-fold cross-validated metrics by document (cv.json)
  WORKDIR/predictor/skipped.json    sizes whose labels have too few samples of a class to train on
  WORKDIR/capacity/            unintended memorization in bits per size, membership inference
                               (reference models are trained into family/references/ first)
  REPORTS/<family>/            family overview (index.html) and <size>/report.{html,md}
Each stage skips work that is already done, so rerunning after a crash continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from dynamics.errors import MemdynError
from dynamics.family.presets import get_preset
from dynamics.files import read_json, write_json


def _stage(name: str, number: int, total: int):
    print(f"[{number}/{total}] {name}", flush=True)
    return time.time()


def run_pipeline(workdir: str | Path, preset: str, seed: int, reports: str | Path = "reports") -> None:
    from dynamics.family.train import train_family
    from dynamics.scoring.table import make_settings, run_scoring
    from dynamics.scoring.transitions import summarize
    from dynamics.scoring.table import read_scores

    p = get_preset(preset)
    workdir = Path(workdir)
    marker = {"preset": p.name, "seed": seed}
    if (workdir / "run.json").is_file() and read_json(workdir / "run.json") != marker:
        raise MemdynError(f"{workdir} holds a run with {read_json(workdir / 'run.json')}; use another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "run.json", marker)
    total = 7

    t = _stage("family: corpus, tokenizer, packed data, training", 1, total)
    family = train_family(p.name, workdir / "family", seed=seed)
    print(f"      {', '.join(family.size_names)} trained ({time.time() - t:.0f} s)")

    t = _stage("scores: final checkpoints over the context x continuation grid", 2, total)
    settings = make_settings(family, family.data.prefix, list(p.contexts), list(p.continuations), None, None,
                             seed, "fp32", 256, 32)
    run_scoring(family, workdir / "scores", settings, family.data.prefix, None, None)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("scores: every checkpoint at the main cell", 3, total)
    k, c = min(p.contexts, key=lambda v: abs(v - 32)), min(p.continuations, key=lambda v: abs(v - 16))
    settings = make_settings(family, family.data.prefix, [k], [c], None, None, seed, "fp32", 256, 32)
    revisions = sorted({r for s in family.sizes for r in s.revisions}, key=lambda r: int(r[4:]))
    run_scoring(family, workdir / "scores_checkpoints", settings, family.data.prefix, None, revisions)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("dynamics: entropy, n-gram frequency and hidden states around the boundary", 4, total)
    from dynamics.decoding.collect import run_dynamics

    run_dynamics(family, workdir / "scores", workdir / "dynamics", seed=seed, per_group=200, context=k, continuation=c)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("predictor: memorization from context tokens and from hidden states, per size", 5, total)
    run_predictors(family, workdir, k, c, seed)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("capacity: bits memorized per size against same-size reference models", 6, total)
    if not (workdir / "capacity" / "text_capacity.parquet").is_file():
        from dynamics.capacity.text import text_capacity
        from dynamics.family.train import train_references

        family = train_references(workdir / "family")
        text_capacity(family, workdir / "capacity", seed=seed)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("reports: family overview and one report per size", 7, total)
    from dynamics.report import write_reports

    paths = write_reports(workdir, reports, p.name)
    print(f"      {paths[0]} ({time.time() - t:.0f} s)")

    table = summarize(read_scores(workdir / "scores"))
    main = table[(table.context_len == k) & (table.continuation_len == c)]
    main = main.assign(params=main.model.map({s.name: s.params for s in family.sizes})).sort_values("params")
    print(f"\nmemorized share at context {k} / continuation {c}:")
    for row in main.itertuples():
        print(f"  {row.model:>8}: {row.memorized_share:7.2%} ({row.memorized} of {row.n})")


def run_predictors(family, workdir: Path, context: int, continuation: int, seed: int, folds: int = 5) -> None:
    """One predictor per (size, input mode), cross-validated by document over `folds` folds (one
    split leaves too few test samples on a small family); a size whose labels lack a class is
    skipped and said so."""
    from predictor.train import TrainSettings, train_predictor

    skipped = {}
    for size in family.size_names:
        for mode in ("context", "hidden"):
            out = workdir / "predictor" / f"{size}-{mode}"
            if (out / "cv.json").is_file():
                continue
            try:
                train_predictor(
                    workdir / "family", out, size, mode=mode, scores=workdir / "scores", dynamics=workdir / "dynamics",
                    context=context, continuation=continuation, settings=TrainSettings(seed=seed), folds=folds,
                )
            except MemdynError as e:
                skipped[f"{size}-{mode}"] = str(e)
                print(f"      {size} {mode}: skipped ({e})")
    write_json(workdir / "predictor" / "skipped.json", skipped)
