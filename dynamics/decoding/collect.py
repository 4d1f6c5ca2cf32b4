"""Decoding dynamics: sample sequences per score level and collect, in one model pass per batch,
entropies, hidden states and n-gram counts along the context and the greedy continuation.

For every model in a scores table (at its last revision there) and one (context k, continuation
c) cell (default 32/16 if scored, else the smallest): up to N sequences of each score level
matches = 0..c, plus N drawn at random from all scored sequences (the natural mix), every draw
seeded. Each sequence is fed ONCE as context + its greedy continuation (read from the scores'
`_generations` table): with causal attention, the logits at a generated position equal those of
step-by-step greedy decoding, so that pass yields generation-time entropies and hidden states.

Positions: a sequence has T = k + c positions p = 0..T-1; `position` = p - k is relative to the
boundary (0 = first continuation token, -1 = last context token). Alignment (see entropy.py):
entropy at p is that of the distribution predicting token p; hidden states are at input position p;
n-gram counts at p are those of the n-gram ENDING at token p (-1 where p < n - 1).

Files (OUT = --out):
  _settings.json                what the directory was computed with; other settings are refused
  <model>/meta.json             model, revision, params, context_len, continuation_len, layers,
                                hidden_dtype, n_rows
  <model>/sequences.parquet     one row per collected sequence, in `row` order (row r is
                                hidden_<layer>.npy[r]): row, seq_idx, matches, score, prefix_len,
                                group (unmemorized: score 0 | partial | memorized: score 1),
                                level_draw (drawn for its level), random_draw (drawn in the random
                                sample; a sequence may be both), near_tie, span_count (occurrences of
                                the true context + continuation in the training data), gen_span_count
                                (of context + greedy continuation), domain (if data/samples.parquet
                                has it)
  <model>/positions.parquet     one row per (row, position): row, seq_idx, matches, group, position,
                                segment (context | continuation), token (true), generated (fed token:
                                true in the context, greedy in the continuation), entropy_nats,
                                entropy_bits, surprisal_nats (-log p of the fed token), top1 (fed
                                token p is the argmax of its distribution),
                                orig_n1..orig_n5 (counts of the true n-gram ending at p), gen_n1..gen_n5
                                (of the fed n-gram ending at p); int64 counts, -1 where undefined
  <model>/hidden_<layer>.npy    [n_rows, T, d] hidden states (float16 by default) at input positions
                                0..T-1 of the fed tokens; layer indexes `hidden_states` as transformers
                                returns it (0 = embeddings, num_hidden_layers = last)
  tables/                       curves, jumps (boundary.py), distances, projections, separation
                                (embeddings.py), words (words.py): each as .parquet and .csv
  figures/                      PNG and SVG figures of those tables (plots.py)
A model's directory is written atomically; a rerun skips models already done and redoes the
(cheap) analysis.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dynamics.corpus.megatron import IndexedDataset
from dynamics.decoding.entropy import LN2, forward_pass
from dynamics.errors import MemdynError
from dynamics.family.load import check_data_vocab, load_model, model_location, resolve_device, resolve_dtype
from dynamics.family.spec import FamilySpec
from dynamics import manifest
from dynamics.files import atomic_path, check_output_dir, read_json, settings_record, write_json
from dynamics.lock import locks_output
from dynamics.ngrams import build_for_dataset, default_index_dir, open_for_dataset
from dynamics.scoring.table import SETTINGS as SCORE_SETTINGS
from dynamics.scoring.table import read_generations, read_scores
from dynamics.scoring.grid import last_revisions, pick_cell

SETTINGS = "_settings.json"
NGRAM_ORDERS = (1, 2, 3, 4, 5)
HIDDEN_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class DynamicsSettings:
    family: str
    corpus_hash: str | None
    # content fingerprints of the scores and the data, not paths: a moved work directory resumes
    scores: str
    data: str
    context_len: int
    continuation_len: int
    models: dict  # model -> revision
    per_group: int
    layers: str
    seed: int
    dtype: str
    hidden_dtype: str


def scores_fingerprint(scores: Path) -> str:
    """What a scores directory holds, independent of where it lies: the hash of its settings (a
    directory's chunks are fixed by them)."""
    return hashlib.sha256((Path(scores) / SCORE_SETTINGS).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- validation


def check_scores_family(family: FamilySpec, scores: Path) -> dict:
    """The scores must have been computed for this family (same name and corpus hash)."""
    path = Path(scores) / SCORE_SETTINGS
    if not path.is_file():
        raise MemdynError(f"--scores {scores} is not a memdyn scores directory (no {SCORE_SETTINGS}); run `memdyn score` first")
    s = read_json(path)
    ours = (family.name, family.corpus.get("hash"))
    if (s.get("family"), s.get("corpus_hash")) != ours:
        raise MemdynError(
            f"--scores {scores} was computed for family {s.get('family')!r} (corpus hash {s.get('corpus_hash')}), "
            f"not for --family {family.name!r} (corpus hash {ours[1]}); score this family first"
        )
    return s


def parse_layers(spec: str) -> str | list[int]:
    """'last', 'all' or comma-separated hidden_states indexes (0 = embeddings)."""
    spec = spec.strip().lower()
    if spec in ("last", "all"):
        return spec
    try:
        layers = sorted({int(v) for v in spec.split(",") if v.strip()})
    except ValueError:
        raise MemdynError(f"--layers must be last, all or comma-separated layer indexes, got {spec!r}") from None
    if not layers or layers[0] < 0:
        raise MemdynError(f"--layers indexes must be >= 0 (0 = embeddings), got {spec!r}")
    return layers


def model_layers(spec: str | list[int], n_layers: int, model: str) -> list[int]:
    """Layer indexes for a model with n_layers blocks (hidden_states has n_layers + 1 entries)."""
    if spec == "last":
        return [n_layers]
    if spec == "all":
        return list(range(n_layers + 1))
    if spec[-1] > n_layers:
        raise MemdynError(
            f"--layers {','.join(map(str, spec))}: model {model} has hidden states 0..{n_layers} "
            f"(0 = embeddings, {n_layers} = last layer)"
        )
    return list(spec)


def _num_layers(family: FamilySpec, size, revision: str) -> int:
    from transformers import AutoConfig

    location, hub_revision = model_location(family, size, revision)
    return int(AutoConfig.from_pretrained(location, revision=hub_revision).num_hidden_layers)


def open_ngram_index(prefix: str, index_dir: str | Path | None):
    """The n-gram index of the data: built beside it if missing; refused if built over other data."""
    index_dir = Path(index_dir) if index_dir else default_index_dir(prefix)
    if not (index_dir / "manifest.json").is_file():
        return build_for_dataset(prefix, index_dir)
    return open_for_dataset(prefix, index_dir)


def check_out(out: Path, settings: DynamicsSettings) -> None:
    check_output_dir(out, SETTINGS, asdict(settings), "dynamics")


# ---------------------------------------------------------------------------- sampling


def select_sequences(cell: pd.DataFrame, continuation: int, per_group: int, rng: np.random.Generator) -> pd.DataFrame:
    """Up to per_group sequences of each level matches = 0..c, and per_group at random; one row per
    distinct sequence, sorted by seq_idx, with level_draw / random_draw flags."""
    cell = cell.sort_values("seq_idx")
    level = []
    for m in range(continuation + 1):
        ids = cell.loc[cell["matches"] == m, "seq_idx"].to_numpy()
        level.append(rng.choice(ids, size=min(per_group, len(ids)), replace=False))
    level = np.concatenate(level)
    ids = cell["seq_idx"].to_numpy()
    random = rng.choice(ids, size=min(per_group, len(ids)), replace=False)
    chosen = cell[cell["seq_idx"].isin(np.union1d(level, random))].reset_index(drop=True)
    out = pd.DataFrame({"row": np.arange(len(chosen)), "seq_idx": chosen["seq_idx"].to_numpy()})
    out["matches"] = chosen["matches"].to_numpy().astype(np.int16)
    out["score"] = chosen["score"].to_numpy().astype(np.float32)
    out["prefix_len"] = chosen["prefix_len"].to_numpy().astype(np.int16)
    out["group"] = np.select([out["matches"] == 0, out["matches"] == continuation], ["unmemorized", "memorized"], "partial")
    out["level_draw"] = out["seq_idx"].isin(level)
    out["random_draw"] = out["seq_idx"].isin(random)
    out["near_tie"] = chosen["near_tie"].to_numpy().astype(bool)
    return out


def sample_domains(prefix: str) -> pd.Series | None:
    """sample_idx -> domain of the training split, from data/samples.parquet beside the data."""
    path = Path(prefix).parent / "samples.parquet"
    if not path.is_file():
        return None
    table = pd.read_parquet(path)
    if "domain" not in table or "split" not in table:
        return None
    train = table[table["split"] == "train"]
    return train.set_index("sample_idx")["domain"]


# ---------------------------------------------------------------------------- collection


def collect_model(model, orig: np.ndarray, fed: np.ndarray, layers: list[int], batch_size: int, device,
                  hidden_files: dict[int, Path], hidden_dtype, desc: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Feed fed [n, T] in batches; write hidden states to hidden_files (.npy [n, T, d]) and return
    (entropy nats [n, T], top1 [n, T], surprisal nats [n, T])."""
    n, T = fed.shape
    d = model.config.hidden_size
    arrays = {l: np.lib.format.open_memmap(hidden_files[l], mode="w+", dtype=hidden_dtype, shape=(n, T, d)) for l in layers}
    entropy = np.empty((n, T), dtype=np.float32)
    top1 = np.empty((n, T), dtype=bool)
    surprisal = np.empty((n, T), dtype=np.float32)
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress):
        ids = torch.from_numpy(fed[start : start + batch_size].astype(np.int64)).to(device)
        r = forward_pass(model, ids, layers)
        entropy[start : start + len(ids)] = r.entropy
        top1[start : start + len(ids)] = r.top1
        surprisal[start : start + len(ids)] = r.surprisal
        for l in layers:
            arrays[l][start : start + len(ids)] = r.hidden[l]
    for a in arrays.values():
        a.flush()
    del arrays
    return entropy, top1, surprisal


def positions_table(seqs: pd.DataFrame, orig: np.ndarray, fed: np.ndarray, entropy: np.ndarray, top1: np.ndarray,
                    surprisal: np.ndarray, index, k: int) -> pd.DataFrame:
    """Long table, one row per (row, position); see the module docstring."""
    n_rows, T = orig.shape
    position = np.tile(np.arange(T) - k, n_rows)
    table = pd.DataFrame({
        **{col: np.repeat(seqs[col].to_numpy(), T) for col in ("row", "seq_idx", "matches", "group")},
        "position": position.astype(np.int16),
        "segment": np.where(position < 0, "context", "continuation"),
        "token": orig.reshape(-1).astype(np.int32), "generated": fed.reshape(-1).astype(np.int32),
        "entropy_nats": entropy.reshape(-1), "entropy_bits": (entropy / LN2).reshape(-1).astype(np.float32),
        "surprisal_nats": surprisal.reshape(-1),
        "top1": top1.reshape(-1),
    })
    for name, tokens in (("orig", orig), ("gen", fed)):
        for n in NGRAM_ORDERS:
            table[f"{name}_n{n}"] = index.count_positions(tokens, n).reshape(-1)
    return table


def run_collection(
    family: FamilySpec, scores: str | Path, out: str | Path, *, per_group: int = 1000, layers: str = "last",
    context: int | None = None, continuation: int | None = None, seed: int = 0, batch_size: int = 32,
    device: str | None = "auto", dtype: str = "fp32", hidden_dtype: str = "float16", ngram_index: str | Path | None = None,
    data: str | None = None, progress: bool = True, jump_window: int | None = None,
) -> Path:
    """Validate everything, then collect every model not yet done; returns OUT. jump_window: the
    analysis' --jump-window, checked against the context here, before any model runs."""
    scores, out = Path(scores), Path(out)
    if per_group < 1:
        raise MemdynError(f"--per-group must be >= 1, got {per_group}")
    if batch_size < 1:
        raise MemdynError(f"--batch-size must be >= 1, got {batch_size}")
    if hidden_dtype not in HIDDEN_DTYPES:
        raise MemdynError(f"--hidden-dtype must be one of {', '.join(HIDDEN_DTYPES)}, got {hidden_dtype!r}")
    dev = resolve_device(device)
    resolve_dtype(dtype, dev)
    check_scores_family(family, scores)
    prefix = data or (family.data.prefix if family.data else None)
    if not prefix:
        raise MemdynError(f"family {family.name!r} has no training data on record: pass --data PREFIX (a Megatron .bin/.idx)")
    ds = IndexedDataset(prefix)
    table = read_scores(scores)
    k, c = pick_cell(table, context, continuation)
    if jump_window is not None and jump_window >= k:
        raise MemdynError(f"--jump-window {jump_window} must be smaller than the context ({k} tokens); use at most {k - 1}")
    if k + c > ds.fixed_length():
        raise MemdynError(f"context {k} + continuation {c} is longer than the samples in {ds.bin_path}")
    last = last_revisions(table)
    family.select(list(last.index))  # every scored model must belong to the family
    revisions = {s.name: last[s.name] for s in family.sizes if s.name in last.index}  # in family order
    layer_spec = parse_layers(layers)
    model_layer_ids = {m: model_layers(layer_spec, _num_layers(family, family.size(m), r), m) for m, r in revisions.items()}
    index = open_ngram_index(prefix, ngram_index)
    settings = DynamicsSettings(
        family=family.name, corpus_hash=family.corpus.get("hash"), scores=scores_fingerprint(scores),
        data=ds.fingerprint(), context_len=k, continuation_len=c, models=revisions,
        per_group=per_group, layers=layers, seed=seed, dtype=dtype, hidden_dtype=hidden_dtype,
    )
    check_out(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SETTINGS, settings_record(asdict(settings)))
    manifest.expect(out, [f"{name}/sequences.parquet" for name in revisions])

    gens = read_generations(scores)
    domains = sample_domains(prefix)
    all_tokens = ds.batch(0, len(ds))  # [N, L] memory-mapped
    for name, revision in revisions.items():
        if manifest.tree_done(out, name, "sequences.parquet"):  # a damaged model folder is removed and redone
            continue
        cell = table[(table["model"] == name) & (table["revision"] == revision)
                     & (table["context_len"] == k) & (table["continuation_len"] == c)]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])  # per model, independent of the others
        seqs = select_sequences(cell, c, per_group, rng)
        g = gens[(gens["model"] == name) & (gens["revision"] == revision) & (gens["context_len"] == k)]
        generated = g.set_index("seq_idx").loc[seqs["seq_idx"], "generated"]
        orig = np.asarray(all_tokens[seqs["seq_idx"].to_numpy()][:, : k + c], dtype=np.int64)  # [n, T]
        fed = orig.copy()
        fed[:, k:] = np.stack([np.asarray(v[:c]) for v in generated])  # context + greedy continuation
        model = load_model(family, name, revision, device=dev, dtype=dtype)
        check_data_vocab(int(orig.max()), model.get_input_embeddings().num_embeddings, str(ds.bin_path), name)
        with atomic_path(out / name) as tmp:
            tmp.mkdir()
            files = {l: tmp / f"hidden_{l}.npy" for l in model_layer_ids[name]}
            entropy, top1, surprisal = collect_model(model, orig, fed, model_layer_ids[name], batch_size, dev, files,
                                          HIDDEN_DTYPES[hidden_dtype], f"dynamics {name}", progress)
            seqs["span_count"] = index.count(orig)
            seqs["gen_span_count"] = index.count(fed)
            if domains is not None:
                seqs["domain"] = seqs["seq_idx"].map(domains).fillna("unknown").to_numpy()
            positions_table(seqs, orig, fed, entropy, top1, surprisal, index, k).to_parquet(tmp / "positions.parquet", index=False)
            write_json(tmp / "meta.json", {
                "model": name, "revision": revision, "params": family.size(name).params, "context_len": k,
                "continuation_len": c, "layers": model_layer_ids[name], "hidden_dtype": hidden_dtype, "n_rows": len(seqs),
            })
            seqs.to_parquet(tmp / "sequences.parquet", index=False)
        manifest.record_tree(out, name)
        del model
    return out


# ---------------------------------------------------------------------------- reading


def read_settings(out: str | Path) -> dict:
    path = Path(out) / SETTINGS
    if not path.is_file():
        raise MemdynError(f"{out} is not a memdyn dynamics directory (no {SETTINGS}); run `memdyn dynamics` first")
    return read_json(path)


def read_model(out: str | Path, model: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(meta, sequences, positions) of one collected model."""
    d = Path(out) / model
    if not (d / "sequences.parquet").is_file():
        raise MemdynError(f"{d}: no collected dynamics for model {model}; rerun `memdyn dynamics`")
    manifest.verify(out, [f"{model}/*"], f"memdyn dynamics ... --out {out}", "dynamics", prefix=f"{model}/")
    return read_json(d / "meta.json"), pd.read_parquet(d / "sequences.parquet"), pd.read_parquet(d / "positions.parquet")


def read_hidden(out: str | Path, model: str, layer: int) -> np.ndarray:
    """hidden_<layer>.npy of a model, memory-mapped: [n_rows, T, d]."""
    path = Path(out) / model / f"hidden_{layer}.npy"
    if not path.is_file():
        raise MemdynError(f"{path}: layer {layer} was not collected for model {model}")
    return np.load(path, mmap_mode="r")


# ---------------------------------------------------------------------------- analysis


def write_table(table: pd.DataFrame, stem: Path) -> None:
    """STEM.parquet and STEM.csv, atomically."""
    for ext in ("parquet", "csv"):
        with atomic_path(stem.with_suffix(f".{ext}")) as tmp:
            table.to_parquet(tmp, index=False) if ext == "parquet" else table.to_csv(tmp, index=False)
    out = stem.parent.parent  # tables live in OUT/tables/
    manifest.record_part(out, str(stem.with_suffix(".parquet").relative_to(out)), len(table))


ANALYSIS_TABLES = ("curves", "jumps", "distances", "projections", "separation", "words")


def check_analysis_args(m: int, n_resamples: int) -> None:
    if m < 1:
        raise MemdynError(f"--jump-window must be >= 1, got {m}")
    if n_resamples < 1:
        raise MemdynError(f"--bootstrap must be >= 1, got {n_resamples}")


def analyze(family: FamilySpec, out: str | Path, *, seed: int = 0, m: int = 4, n_resamples: int = 1000,
            use_umap: bool = True, plots: bool = True, top_words: int = 30, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Boundary curves and jumps, embedding trajectories, distinguishing words and figures of every
    collected model; tables go to OUT/tables/, figures to OUT/figures/."""
    from dynamics.decoding.boundary import boundary_tables
    from dynamics.decoding.embeddings import embedding_tables
    from dynamics.family.load import load_tokenizer
    from dynamics.decoding.words import words_table

    out = Path(out)
    settings = read_settings(out)
    check_analysis_args(m, n_resamples)
    tokenizer = load_tokenizer(family)
    parts: dict[str, list] = {name: [] for name in ANALYSIS_TABLES}
    for model in tqdm(list(settings["models"]), desc="analyze", unit="model", disable=not progress):
        meta, seqs, positions = read_model(out, model)
        curves, jumps = boundary_tables(seqs, positions, meta, seed, m, n_resamples)
        parts["curves"].append(curves)
        parts["jumps"].append(jumps)
        for layer in meta["layers"]:
            for name, t in zip(("distances", "projections", "separation"),
                               embedding_tables(seqs, read_hidden(out, model, layer), meta, layer, seed, use_umap)):
                parts[name].append(t)
        tokens = positions.sort_values(["row", "position"])["token"].to_numpy().reshape(len(seqs), -1)
        parts["words"].append(words_table(seqs, tokens, tokenizer, meta, top_words))
    tables = {name: pd.concat(ts, ignore_index=True) if ts else pd.DataFrame() for name, ts in parts.items()}
    for name, table in tables.items():
        write_table(table, out / "tables" / name)
    if plots:
        from dynamics.decoding.plots import write_figures

        write_figures(tables, out / "figures")
    return tables


@locks_output()
def run_dynamics(family: FamilySpec, scores: str | Path, out: str | Path, *, seed: int = 0, use_umap: bool = True,
                 plots: bool = True, m: int = 4, n_resamples: int = 1000, progress: bool = True, **collect) -> dict[str, pd.DataFrame]:
    """`memdyn dynamics`: collect (resumable), then analyze, unless the same analysis of the same
    collection is already on disk (a resumed `memdyn run` would otherwise redo it every time)."""
    check_analysis_args(m, n_resamples)
    run_collection(family, scores, out, seed=seed, progress=progress, jump_window=m, **collect)
    done = Path(out) / "tables" / "analysis.json"
    record = {"collection": read_settings(out), "seed": seed, "m": m, "n_resamples": n_resamples, "use_umap": use_umap,
              "plots": plots}
    if done.is_file() and read_json(done) == record:
        manifest.verify(out, ["tables/*.parquet"], f"memdyn dynamics ... --out {out}", "dynamics", prefix="tables/")
        return {name: pd.read_parquet(done.with_name(f"{name}.parquet")) for name in ANALYSIS_TABLES}
    done.unlink(missing_ok=True)  # tables being rewritten are not a finished analysis
    tables = analyze(family, out, seed=seed, m=m, n_resamples=n_resamples, use_umap=use_umap, plots=plots, progress=progress)
    write_json(done, record)
    return tables
