"""The pipeline's analyses stage: duplication, dose-response, taxonomy and canaries of a work directory.

  WORKDIR/scores/_duplication.parquet, WORKDIR/scores_checkpoints/_duplication.parquet
                                    per-sample duplication and category beside the scores
  WORKDIR/canaries/                 `memdyn canaries` output (per canary, size and checkpoint)
  WORKDIR/analyses/dose_bins.parquet     memorized share per (measure, model, step, count bin), 95% CIs
                                         (the final step from scores/, the others from scores_checkpoints/)
  WORKDIR/analyses/dose_fits.parquet     logistic fit on log2 count per (measure, model, step), slope CI
  WORKDIR/analyses/taxonomy_shares.parquet       memorized share per (category, model, step)
  WORKDIR/analyses/taxonomy_transitions.parquet  kept / gained per category between sizes and checkpoints
  WORKDIR/analyses/canary_by_count.parquet, canary_by_insert.parquet, canary_forgetting.parquet
  WORKDIR/analyses/done.json        {"settings": seed, cell, candidates; "skipped": {part: why}} (stage done)
Every table is at the main cell (context k, continuation c) and written atomically.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dynamics.analyses import canaries as C
from dynamics.analyses import duplication as D
from dynamics.analyses import taxonomy as T
from dynamics.family.spec import FamilySpec
from dynamics.files import atomic_path, dtype_setting, read_json, settings_fingerprint, write_json

TABLES = ("dose_bins", "dose_fits", "taxonomy_shares", "taxonomy_transitions", "canary_by_count", "canary_by_insert",
          "canary_forgetting")


def _write(out: Path, name: str, table: pd.DataFrame) -> None:
    with atomic_path(out / f"{name}.parquet") as tmp:
        table.to_parquet(tmp, index=False)


def scores_with_duplication(family: FamilySpec, scores: Path, k: int, c: int) -> pd.DataFrame:
    """Score rows of every checkpoint of a scores directory at (k, c), joined with the duplication
    columns (annotated first)."""
    from dynamics.scoring.table import read_scores

    D.annotate_scores(family, scores)
    return D.joined(read_scores(scores), D.read_duplication(scores), k, c)


def dose_tables(scored: pd.DataFrame, final: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dose-response on span_count at every checkpoint, and on max_doc_copies at the final ones.
    The checkpoints before the last come from the checkpoint table (`scored`), the last from the
    final scores (`final`), which `memdyn run` computes on more samples (tiny: 2000 against 1000)."""
    earlier = scored[scored["step"] < scored.groupby("model")["step"].transform("max")]
    bins, fits = D.dose_response(pd.concat([earlier, final], ignore_index=True), seed, "span_count")
    docs_bins, docs_fits = D.dose_response(final, seed, "max_doc_copies")
    return (pd.concat([bins.assign(measure="span_count"), docs_bins.assign(measure="max_doc_copies")], ignore_index=True),
            pd.concat([fits, docs_fits], ignore_index=True))


def taxonomy_tables(scored: pd.DataFrame, sizes: list[str], seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    shares = T.shares(scored, seed)
    final = scored.groupby("model")["step"].max()
    parts = [T.transitions(scored, [(s, int(final[s])) for s in sizes if s in final.index], "sizes")]
    for size in sizes:
        steps = sorted(scored.loc[scored["model"] == size, "step"].unique())
        parts.append(T.transitions(scored, [(size, int(s)) for s in steps], "checkpoints"))
    return shares, pd.concat(parts, ignore_index=True)


def run_analyses(family: FamilySpec, workdir: str | Path, k: int, c: int, seed: int = 0, n_candidates: int = 256,
                 dtype: str = "fp32", progress: bool = True) -> Path:
    """Every table above; skipped when done.json records the same settings. A family without the
    world's manifests (a tokenized corpus, an old layout) or without canaries skips what needs
    them and says why in done.json ("skipped"), so the rest of a run still completes."""
    from dynamics.errors import MemdynError

    w = Path(workdir)
    out = w / "analyses"
    # (canaries_after: analyses of canaries scored without the <|endoftext|> before them are redone;
    # resampled: so are intervals made before they resampled documents)
    settings = {"seed": seed, "context_len": k, "continuation_len": c, "n_candidates": n_candidates,
                "final_dose_from": "scores", "canaries_after": "end-of-document", "resampled": "documents",
                # the tables follow the scores: scores computed again make them stale
                "scores": settings_fingerprint(w / "scores"), "checkpoints": settings_fingerprint(w / "scores_checkpoints"),
                **dtype_setting(dtype)}
    if (out / "done.json").is_file() and read_json(out / "done.json").get("settings") == settings:
        return out
    (out / "done.json").unlink(missing_ok=True)  # tables being rewritten are not finished analyses
    tables, skipped = {}, {}
    try:
        final = scores_with_duplication(family, w / "scores", k, c)
        scored = scores_with_duplication(family, w / "scores_checkpoints", k, c)
    except MemdynError as e:
        skipped["duplication"] = skipped["canaries"] = str(e)
    else:
        sizes = sorted(family.size_names, key=lambda s: family.size(s).params or 0)
        tables.update(zip(("dose_bins", "dose_fits"), dose_tables(scored, final, seed)))
        tables.update(zip(("taxonomy_shares", "taxonomy_transitions"), taxonomy_tables(scored, sizes, seed)))
        try:
            C.run_canaries(family, w / "canaries", seed=seed, n_candidates=n_candidates, dtype=dtype, progress=progress,
                           replace_stale=True)  # the work directory's own: an earlier memdyn's scores are redone
        except MemdynError as e:
            skipped["canaries"] = str(e)
        else:
            canary = C.read_canaries(w / "canaries")
            tables.update(canary_by_count=C.by(canary, "count", seed), canary_by_insert=C.by(canary, "insert", seed),
                          canary_forgetting=C.forgetting(canary, seed))
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        _write(out, name, table)
    for what, why in skipped.items():
        print(f"      {what}: skipped ({why})")
    write_json(out / "done.json", {"settings": settings, "skipped": skipped})
    return out


def skipped(workdir: str | Path) -> dict:
    """{part: reason} of the analyses a work directory's family could not support."""
    path = Path(workdir) / "analyses" / "done.json"
    return read_json(path).get("skipped", {}) if path.is_file() else {}
