"""`memdyn run`: every stage on the embedded default, each cached and resumable.

The work directory's layout is dynamics.workdir.Workdir; reports go to REPORTS/<family>/ (family
overview index.html and <size>/report.{html,md}). Each stage skips work that is already done, so
rerunning after a crash continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from dynamics.errors import MemdynError
from dynamics.family.presets import get_preset
from dynamics.files import check_output_folder, check_output_location, read_json, write_json
from dynamics.lock import locks_output
from dynamics.scoring.grid import main_cell
from dynamics.workdir import Workdir


def _stage(name: str, number: int, total: int):
    print(f"[{number}/{total}] {name}", flush=True)
    return time.time()


@locks_output("workdir", "--workdir")
def run_pipeline(workdir: str | Path, preset: str, seed: int, reports: str | Path = "reports") -> None:
    from dynamics.family.train import train_family
    from dynamics.scoring.table import score
    from dynamics.scoring.transitions import summarize
    from dynamics.scoring.table import read_scores

    p = get_preset(preset)
    w = Workdir(workdir)
    # a work directory of an earlier run, or one holding just a family to reuse; nothing else
    check_output_folder(w.root, "--workdir", lambda p: (p / "run.json").is_file() or (p / "family" / "family.json").is_file())
    check_output_location(reports, "--reports")
    marker = {"preset": p.name, "seed": seed}
    if w.run_json.is_file() and read_json(w.run_json) != marker:
        raise MemdynError(f"{w.root} holds a run with {read_json(w.run_json)}; use another --workdir")
    w.root.mkdir(parents=True, exist_ok=True)
    write_json(w.run_json, marker)
    total = 9

    t = _stage("family: corpus, tokenizer, packed data, training", 1, total)
    family = train_family(p.name, w.family_dir, seed=seed)
    print(f"      {', '.join(family.size_names)} trained ({time.time() - t:.0f} s)")

    t = _stage("scores: final checkpoints over the context x continuation grid", 2, total)
    # the scored set: every training sample, or the preset's seeded subset (the same one in both tables)
    score(family, w.scores_dir, contexts=list(p.contexts), continuations=list(p.continuations),
          sample=p.scored_samples, seed=seed)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("scores: every checkpoint at the main cell", 3, total)
    k, c = main_cell(p.contexts, p.continuations)
    score(family, w.checkpoints_dir, contexts=[k], continuations=[c], revisions="all", sample=p.scored_samples, seed=seed)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("dynamics: entropy, n-gram frequency and hidden states around the boundary", 4, total)
    from dynamics.decoding.analyze import run_dynamics

    run_dynamics(family, w.scores_dir, w.dynamics_dir, seed=seed, per_group=200, context=k, continuation=c)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("predictor: memorization from context tokens and from hidden states, per size", 5, total)
    run_predictors(family, w, k, c, seed)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("capacity: bits memorized per size against same-size reference models", 6, total)
    if not w.capacity_table.is_file():
        from dynamics.capacity.text import text_capacity
        from dynamics.family.train import train_references

        family = train_references(w.family_dir)
        text_capacity(family, w.capacity_dir, seed=seed)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("membership: loss, zlib, min-k%, min-k%++ and reference attacks per size and checkpoint", 7, total)
    from dynamics.capacity.mia import MEMBERSHIP_DIR, run_membership

    revisions = sorted({r for s in family.sizes for r in s.revisions}, key=lambda r: int(r[4:]))
    run_membership(family, w.root / MEMBERSHIP_DIR, "train", "heldout", revisions=revisions, seed=seed, progress=False)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("analyses: duplication dose-response, taxonomy, canary scores and exposure", 8, total)
    from dynamics.analyses.stage import run_analyses

    run_analyses(family, w.root, k, c, seed=seed)
    print(f"      done ({time.time() - t:.0f} s)")

    t = _stage("reports: family overview and one report per size", 9, total)
    from dynamics.report import write_reports

    paths = write_reports(w.root, reports, p.name)
    print(f"      {paths[0]} ({time.time() - t:.0f} s)")

    table = summarize(read_scores(w.scores_dir))
    main = table[(table.context_len == k) & (table.continuation_len == c)]
    main = main.assign(params=main.model.map({s.name: s.params for s in family.sizes})).sort_values("params")
    print(f"\nmemorized share at context {k} / continuation {c}:")
    for row in main.itertuples():
        print(f"  {row.model:>8}: {row.memorized_share:7.2%} ({row.memorized} of {row.n})")


def run_predictors(family, w: Workdir, context: int, continuation: int, seed: int, folds: int = 5) -> None:
    """One predictor per (size, input mode), cross-validated by document over `folds` folds (one
    split leaves too few test samples on a small family); a size whose labels lack a class is
    skipped and said so."""
    from predictor.train import TrainSettings, train_predictor

    skipped = {}
    for size in family.size_names:
        for mode in ("context", "hidden"):
            out = w.predictor_dir(size, mode)
            if (out / "cv.json").is_file():
                continue
            try:
                train_predictor(
                    family, out, model=size, mode=mode, scores=w.scores_dir, dynamics=w.dynamics_dir,
                    context=context, continuation=continuation, settings=TrainSettings(seed=seed), folds=folds,
                )
            except MemdynError as e:
                skipped[f"{size}-{mode}"] = str(e)
                print(f"      {size} {mode}: skipped ({e})")
    write_json(w.predictor_root / "skipped.json", skipped)
