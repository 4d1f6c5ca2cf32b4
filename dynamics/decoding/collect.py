"""Decoding dynamics: sample sequences per score level and collect, in one model pass per batch,
entropies, hidden states and n-gram counts along the context and the greedy continuation.

For every model in a scores table (at its last revision there) and one (context k, continuation
c) cell (default: the main cell, dynamics.scoring.grid): up to N sequences of each score level
matches = 0..c, plus N drawn at random from all scored sequences (the natural mix), every draw
seeded. Each sequence is fed ONCE as context + its greedy continuation (read from the scores'
`_generations` table): with causal attention, the logits at a generated position equal those of
step-by-step greedy decoding, so that pass yields generation-time entropies and hidden states.

Positions: a sequence has T = k + c positions p = 0..T-1; `position` = p - k is relative to the
boundary (0 = first continuation token, -1 = last context token). Alignment (see entropy.py):
entropy at p is that of the distribution predicting token p; hidden states are at input position p;
n-gram counts at p are those of the n-gram ENDING at token p (-1 where p < n - 1).

The directory's files: dynamics.decoding.store.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dynamics.decoding.entropy import LN2, forward_pass
from dynamics.errors import MemdynError
from dynamics.family.load import check_data_vocab, load_model, model_location, resolve_device, resolve_dtype
from dynamics.decoding.store import HIDDEN_DTYPES, NGRAM_ORDERS, SETTINGS, DynamicsSettings
from dynamics import seeds
from dynamics.family.data import TrainingData, training_data
from dynamics.family.spec import FamilySpec
from dynamics.scoring.table import SETTINGS as SCORE_SETTINGS
from dynamics import manifest
from dynamics.files import atomic_path, check_output_dir, read_json, settings_fingerprint, settings_record, write_json
from dynamics.scoring.table import read_generations, read_scores
from dynamics.scoring.grid import last_revisions, pick_cell

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


def check_out(out: Path, settings: DynamicsSettings, replace_stale: bool = False) -> None:
    check_output_dir(out, SETTINGS, asdict(settings), "dynamics", replace_stale=replace_stale)


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
    family: FamilySpec, scores: str | Path, out: str | Path, *, per_group: int = 1000, layers: str | list[int] = "last",
    context: int | None = None, continuation: int | None = None, seed: int = 0, batch_size: int = 32,
    device: str | None = "auto", dtype: str = "fp32", hidden_dtype: str = "float16", ngram_index: str | Path | None = None,
    data: str | TrainingData | None = None, progress: bool = True, jump_window: int | None = None,
    replace_stale: bool = False,
) -> Path:
    """Validate everything, then collect every model not yet done; returns OUT. jump_window: the
    analysis' --jump-window, checked against the context here, before any model runs. replace_stale:
    a collection in OUT made with other settings is removed and made again (`memdyn run`'s own)."""
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
    train = data if isinstance(data, TrainingData) else training_data(family, data, ngram_index)
    ds = train.dataset
    table = read_scores(scores)
    k, c = pick_cell(table, context, continuation)
    if jump_window is not None and jump_window >= k:
        raise MemdynError(f"--jump-window {jump_window} must be smaller than the context ({k} tokens); use at most {k - 1}")
    if k + c > ds.fixed_length():
        raise MemdynError(f"context {k} + continuation {c} is longer than the samples in {ds.bin_path}")
    last = last_revisions(table)
    family.select(list(last.index))  # every scored model must belong to the family
    revisions = {s.name: last[s.name] for s in family.sizes if s.name in last.index}  # in family order
    if not (layers in ("last", "all") or (isinstance(layers, list) and layers and all(isinstance(v, int) and v >= 0 for v in layers))):
        raise MemdynError(f"layers must be 'last', 'all' or a list of hidden-state indexes >= 0, got {layers!r}")
    model_layer_ids = {m: model_layers(layers, _num_layers(family, family.size(m), r), m) for m, r in revisions.items()}
    train.ngrams  # opened (or built) now: an index built over other data is refused before any output
    settings = DynamicsSettings(
        family=family.name, corpus_hash=family.corpus.get("hash"), scores=settings_fingerprint(scores),
        data=ds.fingerprint(), context_len=k, continuation_len=c, models=revisions,
        per_group=per_group, layers=layers if isinstance(layers, str) else ",".join(map(str, layers)), seed=seed,
        dtype=dtype, hidden_dtype=hidden_dtype,
    )
    check_out(out, settings, replace_stale)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SETTINGS, settings_record(asdict(settings)))
    manifest.expect(out, [f"{name}/sequences.parquet" for name in revisions])

    gens = read_generations(scores)
    for name, revision in revisions.items():
        if manifest.tree_done(out, name, "sequences.parquet"):  # a damaged model folder is removed and redone
            continue
        cell = table[(table["model"] == name) & (table["revision"] == revision)
                     & (table["context_len"] == k) & (table["continuation_len"] == c)]
        seqs = select_sequences(cell, c, per_group, seeds.rng(seed, "dynamics", name))  # per model, independent
        g = gens[(gens["model"] == name) & (gens["revision"] == revision) & (gens["context_len"] == k)]
        generated = g.set_index("seq_idx").loc[seqs["seq_idx"], "generated"]
        model = load_model(family, name, revision, device=dev, dtype=dtype)
        collect_one(model, seqs, generated, train, out / name, k, c, model_layer_ids[name], batch_size, hidden_dtype,
                    {"model": name, "revision": revision, "params": family.size(name).params}, progress)
        manifest.record_tree(out, name)
        del model
    return out


def collect_one(model, seqs: pd.DataFrame, generated: pd.Series, train: TrainingData, folder: Path, k: int, c: int,
                layers: list[int], batch_size: int, hidden_dtype: str, meta: dict, progress: bool) -> None:
    """One model's folder (written atomically): its sequences fed as context + greedy continuation."""
    ds, index, domains = train.dataset, train.ngrams, train.domains()
    orig = np.asarray(ds.batch(0, len(ds))[seqs["seq_idx"].to_numpy()][:, : k + c], dtype=np.int64)  # [n, T]
    fed = orig.copy()
    fed[:, k:] = np.stack([np.asarray(v[:c]) for v in generated])  # context + greedy continuation
    check_data_vocab(int(orig.max()), model.get_input_embeddings().num_embeddings, str(ds.bin_path), meta["model"])
    dev = next(model.parameters()).device
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        files = {l: tmp / f"hidden_{l}.npy" for l in layers}
        entropy, top1, surprisal = collect_model(model, orig, fed, layers, batch_size, dev, files,
                                                 HIDDEN_DTYPES[hidden_dtype], f"dynamics {meta['model']}", progress)
        seqs["span_count"] = index.count(orig)
        seqs["gen_span_count"] = index.count(fed)
        seqs["document"] = train.documents(seqs["seq_idx"])
        if domains is not None:
            seqs["domain"] = seqs["seq_idx"].map(domains).fillna("unknown").to_numpy()
        positions_table(seqs, orig, fed, entropy, top1, surprisal, index, k).to_parquet(tmp / "positions.parquet", index=False)
        write_json(tmp / "meta.json", {**meta, "context_len": k, "continuation_len": c, "layers": layers,
                                       "hidden_dtype": hidden_dtype, "n_rows": len(seqs)})
        seqs.to_parquet(tmp / "sequences.parquet", index=False)


