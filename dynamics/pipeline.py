"""`memdyn run`: every stage on the embedded default, each cached and resumable.

The work directory's layout is dynamics.workdir.Workdir; reports go to REPORTS/<family>/ (family
overview index.html and <size>/report.{html,md}). Each stage skips work that is already done, so
rerunning after a crash continues where it stopped; what the work directory holds from other
settings (an earlier memdyn, a changed preset) is computed again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dynamics.errors import MemdynError
from dynamics.family.presets import Preset, get_preset
from dynamics.family.spec import FamilySpec
from dynamics.files import check_output_folder, check_output_location, read_json, settings_record, write_json
from dynamics.lock import clear_stale_locks, locks_output
from dynamics.scoring.grid import main_cell
from dynamics.workdir import Workdir
from dynamics.workers import cores  # (the small models run faster one single-threaded job per core)


@dataclass
class _Run:
    """What the stages share: the work directory, the preset, the seed, the precision of every model's
    training and inference, and (after stage 1) the family."""

    w: Workdir
    preset: Preset
    seed: int
    reports: Path
    dtype: str = "fp32"
    lr: float | None = None
    family: FamilySpec | None = None

    @property
    def cell(self) -> tuple[int, int]:
        return main_cell(self.preset.contexts, self.preset.continuations)


def _family(r: _Run) -> str:
    from dynamics.family.train import train_family

    r.family = train_family(r.preset.name, r.w.family_dir, seed=r.seed, dtype=r.dtype, lr=r.lr)
    return f"{', '.join(r.family.size_names)} trained"


def _scores(r: _Run) -> None:
    from dynamics.scoring.table import score

    # the scored set: every training sample without a canary copy, or the preset's seeded subset of
    # them (the canaries are measured on their own, in the analyses stage)
    score(r.family, r.w.scores_dir, contexts=list(r.preset.contexts), continuations=list(r.preset.continuations),
          sample=r.preset.scored_samples, exclude_canaries=True, seed=r.seed, dtype=r.dtype, workers=cores(),
          replace_stale=True)


def _checkpoints(r: _Run) -> None:
    from dynamics.scoring.table import score

    k, c = r.cell
    score(r.family, r.w.checkpoints_dir, contexts=[k], continuations=[c], revisions="all",
          sample=r.preset.checkpoint_samples or r.preset.scored_samples, exclude_canaries=True, seed=r.seed,
          dtype=r.dtype, workers=cores(), replace_stale=True)


def _dynamics(r: _Run) -> None:
    from dynamics.decoding.analyze import run_dynamics

    k, c = r.cell
    run_dynamics(r.family, r.w.scores_dir, r.w.dynamics_dir, seed=r.seed, per_group=r.preset.dynamics_per_group,
                 context=k, continuation=c, use_umap=r.preset.umap, dtype=r.dtype, replace_stale=True)


def _capacity(r: _Run) -> None:
    from dynamics.capacity.text import computed_from, text_capacity
    from dynamics.family.train import train_references

    r.family = train_references(r.family)  # (returns at once when they exist)
    if not r.w.capacity_table.is_file() or not computed_from(r.w.capacity_dir, r.family):
        text_capacity(r.family, r.w.capacity_dir, seed=r.seed, dtype=r.dtype)


def _membership(r: _Run) -> None:
    from dynamics.capacity.mia import run_membership

    run_membership(r.family, r.w.membership_dir, members="train", nonmembers="heldout", revisions="all",
                   samples=r.preset.membership_samples, seed=r.seed, dtype=r.dtype, workers=cores(), replace_stale=True)


def _analyses(r: _Run) -> None:
    from dynamics.analyses.stage import run_analyses

    run_analyses(r.family, r.w.root, *r.cell, seed=r.seed, dtype=r.dtype)


def _reports(r: _Run) -> str:
    from dynamics.report import write_reports

    return str(write_reports(r.w.root, r.reports, r.preset.name)[0])


STAGES = (
    ("family: corpus, tokenizer, packed data, training", _family),
    ("scores: final checkpoints over the context x continuation grid", _scores),
    ("scores: every checkpoint at the main cell", _checkpoints),
    ("dynamics: entropy, n-gram frequency and hidden states around the boundary", _dynamics),
    ("predictor: memorization from context tokens and from hidden states, per size",
     lambda r: run_predictors(r.family, r.w, *r.cell, r.seed, folds=r.preset.predictor_folds,
                              epochs=r.preset.predictor_epochs)),
    ("capacity: bits memorized per size against the reference model", _capacity),
    ("membership: loss, zlib, min-k%, min-k%++ and reference attacks per size and checkpoint", _membership),
    ("analyses: duplication dose-response, taxonomy, canary scores and exposure", _analyses),
    ("reports: family overview and one report per size", _reports),
)


@locks_output("workdir", "--workdir")
def run_pipeline(workdir: str | Path, preset: str, seed: int, reports: str | Path = "reports", dtype: str = "fp32",
                 lr: float | None = None) -> None:
    """Every stage, resuming what is done. dtype: fp32, or bf16 (mixed-precision training, inference
    in bf16) for a CPU with AMX or a GPU. lr: one peak learning rate for every size (train_family)."""
    from dynamics.family.load import resolve_device
    from dynamics.family.train import check_family_dir, check_lr, check_train_dtype, family_plan

    p = get_preset(preset)
    _check_scored_pool(p)
    check_train_dtype(dtype, resolve_device(None))
    check_lr(lr)
    w = Workdir(workdir)
    # a work directory of an earlier run, or one holding just a family to reuse; nothing else
    check_output_folder(w.root, "--workdir", lambda d: (d / "run.json").is_file() or (d / "family" / "family.json").is_file())
    check_output_location(reports, "--reports")
    plan = family_plan(p, seed, dtype, lr=lr)
    marker = settings_record({"preset": p.name, "seed": seed, **{k: plan[k] for k in ("dtype", "lr") if k in plan}})
    if w.run_json.is_file() and read_json(w.run_json) != marker:
        raise MemdynError(f"{w.root} holds a run with {read_json(w.run_json)}; use another --workdir")
    check_family_dir(w.family_dir, plan, "--workdir")
    w.root.mkdir(parents=True, exist_ok=True)
    clear_stale_locks(w.root)
    write_json(w.run_json, marker)
    r = _Run(w, p, seed, Path(reports), dtype, lr)
    began = time.time()
    for number, (title, stage) in enumerate(STAGES, 1):
        print(f"[{number}/{len(STAGES)}] {title}", flush=True)
        start = time.time()
        note = stage(r)
        print(f"      {note or 'done'} ({time.time() - start:.0f} s)", flush=True)
    minutes, seconds = divmod(round(time.time() - began), 60)
    print(f"all {len(STAGES)} stages done; this call took {minutes} min {seconds} s", flush=True)
    print_main_shares(r)


def _check_scored_pool(p: Preset) -> None:
    """Refuse, before the family trains, a preset that scores more samples than its world leaves free of canaries."""
    from dynamics.family.world import canary_free_samples, check_world_settings

    check_world_settings(p)
    free = canary_free_samples(p)
    for name in ("scored_samples", "checkpoint_samples"):
        wanted = getattr(p, name)
        if wanted is not None and wanted > free:
            raise MemdynError(f"preset {p.name!r} scores {wanted} samples ({name}) but only {free} of its training samples "
                              f"hold no canary copy: lower {name}, or the canary counts, or train for more steps")


def print_main_shares(r: _Run) -> None:
    from dynamics.scoring.table import read_scores
    from dynamics.scoring.transitions import summarize

    k, c = r.cell
    table = summarize(read_scores(r.w.scores_dir))
    main = table[(table.context_len == k) & (table.continuation_len == c)]
    main = main.assign(params=main.model.map({s.name: s.params for s in r.family.sizes})).sort_values("params")
    print(f"\nmemorized share at context {k} / continuation {c}:")
    for row in main.itertuples():
        print(f"  {row.model:>8}: {row.memorized_share:7.2%} ({row.memorized} of {row.n})")


def run_predictors(family, w: Workdir, context: int, continuation: int, seed: int, folds: int = 5,
                   epochs: int = 20) -> None:
    """One predictor per (size, input mode), cross-validated by document over `folds` folds (one
    split leaves too few test samples on a small family); a size whose labels lack a class is
    skipped and said so. They train in single-threaded workers, one per core (dynamics.workers):
    on the tiny family the stage took 184 s instead of 312 s on one process with two threads."""
    from functools import partial

    from dynamics.workers import run_jobs
    from predictor.store import trained_on

    todo = [(size, mode) for size in family.size_names for mode in ("context", "hidden")
            # (one trained on earlier scores or dynamics is trained again)
            if not ((w.predictor_dir(size, mode) / "cv.json").is_file()
                    and trained_on(w.predictor_dir(size, mode), scores=w.scores_dir, dynamics=w.dynamics_dir))]
    # longest first, so that the workers finish together: hidden-state predictors (three members,
    # wider inputs at larger sizes) take 46-55 s on the tiny family, context ones 34-36 s; in the
    # order of the sizes the last, longest job ran alone and the stage took 148 s, now 134 s
    todo.sort(key=lambda job: (job[1] != "hidden", -(family.size(job[0]).params or 0)))
    skipped = {}  # (a skipped predictor is tried again: it has no cv.json)

    def report(result: tuple) -> None:
        size, mode, error, seconds = result
        if error is None:
            print(f"      {size} {mode}: trained with {folds}-fold cross-validation ({seconds:.0f} s)", flush=True)
        else:
            skipped[f"{size}-{mode}"] = error
            print(f"      {size} {mode}: skipped ({error})", flush=True)

    train = partial(_train_one, w, family=family, context=context, continuation=continuation, seed=seed, epochs=epochs,
                    folds=folds)
    run_jobs(train, todo, device="cpu", workers=cores(), done=report)
    write_json(w.predictor_root / "skipped.json", dict(sorted(skipped.items())))


def _train_one(w: Workdir, size: str, mode: str, device: str, *, family, context, continuation, seed, epochs,
               folds) -> tuple[str, str, str | None, float]:
    """(size, mode, None, seconds) once the predictor is trained, or with the reason it was skipped."""
    from predictor.train import TrainSettings, train_predictor

    start = time.monotonic()
    try:
        train_predictor(family, w.predictor_dir(size, mode), model=size, mode=mode, scores=w.scores_dir,
                        dynamics=w.dynamics_dir, context=context, continuation=continuation,
                        settings=TrainSettings(seed=seed, epochs=epochs, device=device), folds=folds)
    except MemdynError as e:
        return size, mode, str(e), time.monotonic() - start
    return size, mode, None, time.monotonic() - start
