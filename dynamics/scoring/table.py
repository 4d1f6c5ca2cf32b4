"""Scoring a family into a Parquet score table: chunked, crash-safe, resumable, multi-process.

A scores directory holds:
  part-<model>-<revision>-<chunk>.parquet   one row per (model, revision, seq_idx, context_len,
                                            continuation_len): score, matches, prefix_len, near_tie;
                                            per sampling scheme S: logp_S (log p_z), n50_S, n90_S
                                            (dynamics.scoring.extraction); edit_distance, lcs_len,
                                            bleu4, approx_memorized (dynamics.scoring.near)
  _generations/part-....parquet             one row per (model, revision, seq_idx, context_len):
                                            generated (largest continuation), loss, context_loss,
                                            min_gap, logp_S (per continuation position)
  _settings.json                            what the table was computed with; a rerun with other
                                            settings is refused, so finished chunks never mix
  _first_memorized.parquet                  with several revisions: first step with score 1
Names starting with `_` are skipped by Parquet readers, so `pandas.read_parquet(DIR)` is the table.

Each chunk is a fixed range of samples for one (model, revision), written atomically when done.
Rerunning the same command computes only missing chunks. Under `accelerate launch`, process r
takes every world_size-th chunk; a chunk's result does not depend on which process ran it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dynamics.corpus.megatron import IndexedDataset
from dynamics.corpus.steps import revision_step, sort_revisions
from dynamics.errors import MemdynError, note
from dynamics.family.data import TrainingData
from dynamics.family.load import check_data_vocab, load_model, resolve_device, resolve_dtype
from dynamics.family.spec import FamilySpec
from dynamics import manifest
from dynamics.lock import locks_output
from dynamics.workers import check_workers, kept, run_jobs
from dynamics.files import read_json
from dynamics.files import atomic_path, check_output_dir, settings_record, write_json
from dynamics.scoring import BATCH_SIZE
from dynamics.scoring.extraction import DEFAULT_SCHEMES, Scheme, cell_logprobs, extraction_columns, parse_schemes, scheme_from_name
from dynamics.scoring.kernel import NEAR_TIE, cell_scores, score_batch
from dynamics.scoring.near import APPROX_BLEU, near_verbatim

SETTINGS = "_settings.json"
GENERATIONS = "_generations"
FIRST_MEMORIZED = "_first_memorized.parquet"


@dataclass(frozen=True)
class ScoreSettings:
    family: str
    corpus_hash: str | None
    # the data's content fingerprint, not its path: a moved work directory, or data mounted
    # elsewhere, still resumes
    data: str
    n_data: int
    contexts: list[int]
    continuations: list[int]
    samples: list[int]  # [start, stop) or [n], see `sample_indices`
    sample_mode: str  # range | random
    # only samples that hold no canary copy (a memdyn world's canaries are measured on their own:
    # inside the grid, where a copy sits in its sample decides a sample's score)
    exclude_canaries: bool
    seed: int
    dtype: str
    chunk_size: int
    batch_size: int
    schemes: list[str]  # sampling schemes of the extraction columns (dynamics.scoring.extraction)
    approx_bleu: float  # BLEU-4 from which a cell counts as approximately memorized (dynamics.scoring.near)


def _eligible(data: str, exclude_canaries: bool) -> np.ndarray | None:
    """The samples that may be scored: None for all of them, else those of `data` that hold no
    canary copy (from memdyn's per-sample table beside the data)."""
    if not exclude_canaries:
        return None
    td = TrainingData(str(data))
    if td.samples is None:
        raise MemdynError(f"--exclude-canaries needs memdyn's per-sample table of {data} (samples.parquet beside it, "
                          "listing canary copies), and there is none: drop --exclude-canaries")
    return np.setdiff1d(np.arange(len(td.dataset), dtype=np.int64), td.canary_samples)


def sample_indices(settings: ScoreSettings, data: str) -> np.ndarray:
    """The scored samples' indices, sorted. data: the Megatron prefix the settings were made from."""
    eligible = _eligible(data, settings.exclude_canaries)
    if settings.sample_mode == "range":
        idx = np.arange(*settings.samples, dtype=np.int64)
        return idx if eligible is None else np.intersect1d(idx, eligible)
    n = settings.samples[0]
    pool = settings.n_data if eligible is None else eligible
    return np.sort(np.random.default_rng(settings.seed).choice(pool, size=n, replace=False))


def make_settings(
    family: FamilySpec, *, data: str, contexts: list[int], continuations: list[int],
    samples: tuple[int, int | None] | None = None, sample: int | None = None, exclude_canaries: bool = False,
    seed: int = 0, dtype: str = "fp32", chunk_size: int = 256, batch_size: int = BATCH_SIZE, schemes: list[Scheme] | None = None,
    approx_bleu: float = APPROX_BLEU,
) -> ScoreSettings:
    """Validate everything that can be checked before any model is loaded.
    samples: a (start, stop) range of samples in training order (stop None: to the end);
    sample: score this many samples drawn with the seed instead; exclude_canaries: of those, only
    the ones that hold no canary copy (a memdyn family's training data); schemes: the sampling
    schemes of the extraction columns (default DEFAULT_SCHEMES; [] for none)."""
    ds = IndexedDataset(data)
    length = ds.fixed_length()
    if not contexts or not continuations or min(contexts) < 1 or min(continuations) < 1:
        raise MemdynError(f"contexts and continuations must be non-empty lists of integers >= 1, got {contexts} and {continuations}")
    contexts, continuations = sorted(set(contexts)), sorted(set(continuations))
    worst = max(contexts) + max(continuations)
    if worst > length:
        raise MemdynError(
            f"context {max(contexts)} + continuation {max(continuations)} = {worst} tokens is longer than the "
            f"samples in {ds.bin_path} ({length} tokens); use shorter --contexts/--continuations"
        )
    if samples is not None and sample is not None:
        raise MemdynError("give either --samples START:END or --sample N, not both")
    eligible = _eligible(data, exclude_canaries)
    if sample is not None:
        pool, which = (len(ds), "") if eligible is None else (len(eligible), " that hold no canary copy")
        if not 0 < sample <= pool:
            raise MemdynError(f"--sample must be between 1 and the {pool} samples in {ds.bin_path}{which}, got {sample}")
        mode, spec = "random", [sample]
    else:
        start, stop = samples if samples is not None else (0, None)
        if stop is not None and stop > len(ds) > start:
            note(f"--samples {start}:{stop} runs past the {len(ds)} samples of the data; clamped to {len(ds) - start} samples ({start}:{len(ds)})")
        stop = len(ds) if stop is None else min(stop, len(ds))
        if stop <= start:
            raise MemdynError(f"--samples {start}:{stop} selects no samples (the data has {len(ds)})")
        mode, spec = "range", [start, stop]
        if eligible is not None and not np.any((eligible >= start) & (eligible < stop)):
            raise MemdynError(f"--samples {start}:{stop} holds no sample without a canary copy: choose another range")
    if chunk_size < 1 or batch_size < 1:
        raise MemdynError("--chunk-size and --batch-size must be >= 1")
    if not 0 < approx_bleu <= 1:
        raise MemdynError(f"--approx-bleu must be a BLEU-4 value in (0, 1], got {approx_bleu:g}")
    schemes = parse_schemes(DEFAULT_SCHEMES) if schemes is None else schemes
    return ScoreSettings(
        family=family.name, corpus_hash=family.corpus.get("hash"), data=ds.fingerprint(),
        n_data=len(ds), contexts=contexts, continuations=continuations, samples=spec, sample_mode=mode,
        exclude_canaries=bool(exclude_canaries), seed=seed, dtype=dtype, chunk_size=chunk_size, batch_size=batch_size,
        schemes=[sc.name for sc in schemes], approx_bleu=float(approx_bleu),
    )


def check_settings(out: Path, settings: ScoreSettings, replace_stale: bool = False) -> None:
    """A scores directory belongs to one set of settings: refuse to mix, before any work (or, with
    replace_stale, remove scores made with other settings: see files.check_output_dir)."""
    check_output_dir(out, SETTINGS, asdict(settings), "scores", replace_stale=replace_stale)


def _chunk_name(model: str, revision: str, chunk: int) -> str:
    return f"part-{model}-{revision}-{chunk:05d}.parquet"


def score_chunk(model, model_name: str, revision: str, tokens: np.ndarray, seq_idx: np.ndarray, s: ScoreSettings, device):
    """Score one chunk; returns (scores table, generations table)."""
    C, K, n = max(s.continuations), len(s.contexts), len(tokens)
    schemes = [scheme_from_name(name) for name in s.schemes]
    parts = [score_batch(model, torch.from_numpy(tokens[a : a + s.batch_size].astype(np.int64)).to(device), s.contexts, C, schemes)
             for a in range(0, n, s.batch_size)]
    gen = np.concatenate([r.generated for r in parts])  # [n, K, C]
    true = np.stack([tokens[:, k : k + C] for k in s.contexts], 1).astype(np.int64)  # [n, K, C]
    min_gap = np.concatenate([r.min_gap for r in parts])
    # per (sample, context) once, every continuation length by prefix: extraction probabilities by
    # prefix sums, near-verbatim measures from the one greedy generation
    logp = np.concatenate([r.logp for r in parts], 1) if schemes else None  # [S, n, K, C]
    cum = cell_logprobs(logp, s.continuations) if schemes else {}
    near = near_verbatim(gen.reshape(n * K, C), true.reshape(n * K, C), s.continuations, s.approx_bleu)
    score_rows = []
    for c, (matches, prefix) in cell_scores(gen, true, s.continuations).items():
        cols = {
            "seq_idx": np.repeat(seq_idx, K), "context_len": np.tile(np.int16(s.contexts), n), "continuation_len": np.int16(c),
            "score": (matches / c).astype(np.float32).reshape(-1), "matches": matches.astype(np.int16).reshape(-1),
            "prefix_len": prefix.astype(np.int16).reshape(-1), "near_tie": (min_gap < NEAR_TIE).reshape(-1),
        }
        if schemes:
            cols.update(extraction_columns(schemes, cum[c].reshape(len(schemes), n * K)))
        score_rows.append(pd.DataFrame({**cols, **near[c]}))
    gen_cols = {
        "seq_idx": np.repeat(seq_idx, K), "context_len": np.tile(np.int16(s.contexts), n),
        "generated": list(gen.reshape(n * K, C).astype(np.int32)),
        "loss": np.concatenate([r.loss for r in parts]).reshape(-1),
        "context_loss": np.concatenate([r.context_loss for r in parts]).reshape(-1), "min_gap": min_gap.reshape(-1),
    }
    for i, scheme in enumerate(schemes):  # per continuation position; NaN after the cell's first -inf
        gen_cols[f"logp_{scheme.name}"] = list(logp[i].reshape(n * K, C))
    head = {"model": model_name, "revision": revision, "step": revision_step(revision) if revision.startswith("step") else -1}
    keys = ["seq_idx", "context_len", "continuation_len"]
    scores = pd.concat(score_rows, ignore_index=True).sort_values(keys, kind="stable").reset_index(drop=True)
    gens = pd.DataFrame(gen_cols).sort_values(keys[:2], kind="stable").reset_index(drop=True)
    for table in (scores, gens):
        for i, (col, value) in enumerate(head.items()):
            table.insert(i, col, value)
    return scores, gens


def process_state(device: str | None):
    """This process's place among the launched ones (accelerate's PartialState)."""
    from accelerate import PartialState

    # cpu=True on a CPU: only then does accelerate take the launcher's ranks (torchrun, or
    # `accelerate launch --multi_gpu`) as MULTI_CPU processes instead of N copies of rank 0
    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def start_output(state, out: Path, settings_file: str, settings: dict, subdirs: tuple[str, ...] = ()) -> None:
    """The main process creates the (already checked) output directory and records its settings;
    every process waits for it."""
    state.wait_for_everyone()
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for sub in subdirs:
            (out / sub).mkdir(parents=True, exist_ok=True)
        write_json(out / settings_file, settings_record(settings))
    state.wait_for_everyone()


def claim_jobs(state, jobs: list, is_done) -> list:
    """This process's share of the jobs (every num_processes-th, so the split does not depend on
    what is done), less those already done: a killed run resumes with the missing ones."""
    mine = [j for i, j in enumerate(jobs) if i % state.num_processes == state.process_index]
    return [j for j in mine if not is_done(j)]


@locks_output()
def run_scoring(
    family: FamilySpec, out: str | Path, settings: ScoreSettings, data: str | Path, models: list[str] | None,
    revisions: list[str] | None, device: str | None = None, progress: bool = True, workers: int = 1,
    replace_stale: bool = False,
) -> Path:
    """Compute every missing chunk (this process's share of them) and write the table.
    data: the Megatron prefix that `settings` were made from. workers > 1 on a CPU, outside a
    launcher: the chunks are scored by so many single-threaded processes (dynamics.workers).
    replace_stale: scores in `out` made with other settings are removed and recomputed (one process
    only: under a launcher they are refused, as without it)."""
    state = process_state(device)
    out = Path(out)
    sizes = family.select(models)
    plan = [(size, family.revision(size, r)) for size in sizes for r in (revisions or [None])]
    if family.kind == "local":
        for size, rev in plan:  # missing checkpoints fail now, not after hours of work
            from dynamics.family.load import model_location

            model_location(family, size, rev)
    dev = state.device if device in (None, "auto") else resolve_device(device)
    resolve_dtype(settings.dtype, dev)  # fp16 on a CPU fails now, before any file is written
    check_settings(out, settings, replace_stale=replace_stale and state.num_processes == 1)
    start_output(state, out, SETTINGS, asdict(settings), (GENERATIONS,))

    idx = sample_indices(settings, data)
    n_chunks = -(-len(idx) // settings.chunk_size)
    jobs = [(size, rev, c) for size, rev in plan for c in range(n_chunks)]
    if state.is_main_process:  # the manifest's list of parts makes an unfinished table visible to readers
        manifest.expect(out, [f"{d}{_chunk_name(z.name, r, c)}" for z, r, c in jobs for d in ("", GENERATIONS + "/")])
    todo = claim_jobs(state, jobs, lambda j: _chunk_done(out, settings, len(idx), *j))
    work = sum(len(idx[c * settings.chunk_size : (c + 1) * settings.chunk_size]) for _, _, c in todo)
    bar = tqdm(total=work, desc=f"score [{state.process_index}]", unit="seq", disable=not progress or not todo)
    chunks = [(size, rev, chunk, idx[chunk * settings.chunk_size : (chunk + 1) * settings.chunk_size]) for size, rev, chunk in todo]
    run_jobs(partial(_write_chunk, family, out, settings, data), chunks, device=dev, workers=workers,
             launched=state.num_processes, done=bar.update)
    bar.close()
    state.wait_for_everyone()
    if state.is_main_process and len({rev for _, rev in plan}) > 1:
        table = first_memorized(read_scores(out))
        with atomic_path(out / FIRST_MEMORIZED) as tmp:
            table.to_parquet(tmp, index=False)
        manifest.record_part(out, FIRST_MEMORIZED, len(table))
    state.wait_for_everyone()
    return out


def _write_chunk(family: FamilySpec, out: Path, settings: ScoreSettings, data, size, rev: str, chunk: int,
                 chunk_idx: np.ndarray, dev) -> int:
    """Score one chunk of samples and write both its parts; returns its number of samples."""
    model = kept("model", (family.root, size.name, rev, str(dev), settings.dtype),
                 lambda: load_model(family, size, rev, device=dev, dtype=settings.dtype))
    ds = kept("data", str(data), lambda: IndexedDataset(data))
    tokens = np.asarray(ds.batch(0, len(ds))[chunk_idx])
    check_data_vocab(int(tokens.max()), model.get_input_embeddings().num_embeddings, str(ds.bin_path), size.name)
    scores, gens = score_chunk(model, size.name, rev, tokens, chunk_idx, settings, dev)
    name = _chunk_name(size.name, rev, chunk)
    with atomic_path(out / GENERATIONS / name) as tmp:
        gens.to_parquet(tmp, index=False)
    manifest.record_part(out, f"{GENERATIONS}/{name}", len(gens))
    with atomic_path(out / name) as tmp:
        scores.to_parquet(tmp, index=False)
    manifest.record_part(out, name, len(scores))  # last: the chunk is done once both parts are recorded
    return len(chunk_idx)


def score(
    family: FamilySpec, out: str | Path, *, contexts: list[int], continuations: list[int],
    models: list[str] | None = None, revisions: list[str] | str | None = None, data: str | None = None,
    samples: tuple[int, int | None] | None = None, sample: int | None = None, exclude_canaries: bool = False,
    seed: int = 0, dtype: str = "fp32", chunk_size: int = 256, batch_size: int = BATCH_SIZE, schemes: list[Scheme] | None = None,
    approx_bleu: float = APPROX_BLEU, device: str | None = "auto", progress: bool = True, workers: int = 1,
    replace_stale: bool = False,
) -> Path:
    """Memorization scores of `family` over the contexts x continuations grid, into the scores
    directory `out` (created, or resumed). models: size names (default all); revisions: checkpoint
    names (default each size's last), or "all"; data: a Megatron prefix (default the family's
    training data); samples / sample / exclude_canaries: see `make_settings`; workers, replace_stale:
    see `run_scoring`."""
    check_workers(workers)
    prefix = data or (family.data.prefix if family.data else None)
    if not prefix:
        raise MemdynError(f"family {family.name!r} has no training data on record: pass --data PREFIX (a Megatron .bin/.idx)")
    settings = make_settings(family, data=prefix, contexts=contexts, continuations=continuations, samples=samples,
                             sample=sample, exclude_canaries=exclude_canaries, seed=seed, dtype=dtype, chunk_size=chunk_size, batch_size=batch_size,
                             schemes=schemes, approx_bleu=approx_bleu)
    if revisions == "all":
        revisions = sort_revisions({r for s in family.select(models) for r in s.revisions})
    return run_scoring(family, out, settings, prefix, models, revisions, device=device, progress=progress, workers=workers,
                       replace_stale=replace_stale)


def read_scores(scores: str | Path) -> pd.DataFrame:
    path = Path(scores)
    if not (path / SETTINGS).is_file():
        raise MemdynError(f"{path} is not a memdyn scores directory (no {SETTINGS}); run `memdyn score` first")
    if not any(path.glob("part-*.parquet")):
        raise MemdynError(f"{path} holds no finished chunks yet; rerun the `memdyn score` command to compute them")
    verify_scores(path)
    return pd.read_parquet(path)


def verify_scores(path: Path) -> None:
    """Refuse a table with a missing, extra, truncated or altered part (every file a Parquet
    reader of the directory would read is checked against the manifest)."""
    read_json(path / SETTINGS)  # a truncated settings file is refused here, in one line
    manifest.verify(path, ["[!_.]*", f"{GENERATIONS}/*"], f"memdyn score ... --out {path}` with the settings in "
                    f"`{path / SETTINGS}", "scores")


def _chunk_done(out: Path, s: ScoreSettings, n_samples: int, size, rev: str, chunk: int) -> bool:
    """Both parts of a chunk finished and intact (a damaged one is removed, so it is recomputed)."""
    n = len(range(chunk * s.chunk_size, min((chunk + 1) * s.chunk_size, n_samples)))
    name = _chunk_name(size.name, rev, chunk)
    gens = manifest.settle(out, f"{GENERATIONS}/{name}", n * len(s.contexts), manifest.parquet_rows)
    return manifest.settle(out, name, n * len(s.contexts) * len(s.continuations), manifest.parquet_rows) and gens


def read_generations(scores: str | Path) -> pd.DataFrame:
    verify_scores(Path(scores))
    return pd.read_parquet(Path(scores) / GENERATIONS)


def first_memorized(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, seq_idx, context, continuation): the first checkpoint step with score 1 (NaN if
    none), and whether it stays memorized in every later checkpoint scored."""
    keys = ["model", "seq_idx", "context_len", "continuation_len"]
    t = table.sort_values(keys + ["step"])
    mem = t["score"] >= 1.0
    t = t.assign(memorized=mem)
    first = t[mem].groupby(keys, sort=True)["step"].min().rename("first_memorized_step")
    last_unmem = t[~mem].groupby(keys)["step"].max().rename("last_unmemorized_step")
    out = t.groupby(keys, sort=True)["step"].agg(steps_scored="count").join(first).join(last_unmem)
    out["stays_memorized"] = out["first_memorized_step"].notna() & ~(out["last_unmemorized_step"] > out["first_memorized_step"])
    return out.reset_index()
