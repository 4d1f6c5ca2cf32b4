"""Unintended memorization of text, per size of a family (Morris et al. 2025; REFERENCE section 3).

For a member sample x (trained on by the target model t, never by the reference model r):
  bits_baseline(x)   code length under the training data's unigram distribution (no model)
  bits_reference(x)  -log2 p_r(x): what a reference model that never saw x needs
  bits_target(x)     -log2 p_t(x)
  generalization(x)  = max(0, bits_baseline - bits_reference): what is learnable without x
  unintended(x)      = max(0, bits_reference - bits_target): what t stores about x itself
The first token of a sample has no context and is not scored, under any of the three.
Dataset totals extrapolate the members' mean to every training sample; bits per parameter divides
that total by the target's parameter count. Membership inference (loss threshold) compares the
target's loss on the members that hold no canary copy with as many held-out samples, which no
model of the family trained on.

Reference models: `memdyn family references DIR` trains them (family.json "references"; `memdyn
run` does this in its capacity stage). In the embedded world that is one model of the preset's
reference shape trained for one pass on documents the world never uses, so it generalizes instead
of overfitting a few documents; elsewhere one per size, trained without a seeded set of probe
documents. `--reference PATH` uses another model instead, which must share the family's tokenizer.
The table's share_reference_above_unigram is the share of members on which the reference needs
more bits than the unigram baseline (a reference that generalizes keeps it low).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dynamics.capacity.attacks import score_samples
from dynamics.capacity.bits import LN2
from dynamics.capacity.membership import fit_sigmoid, loss_threshold_attack, plot_sigmoid_fit
from dynamics.corpus.megatron import IndexedDataset
from dynamics.errors import MemdynError
from dynamics.family.data import TrainingData
from dynamics.family.load import load_model, load_reference_model, load_tokenizer, resolve_device, resolve_dtype
from dynamics.family.spec import FamilySpec
from dynamics import manifest, seeds
from dynamics.files import atomic_path, check_output_folder, read_json, settings_record, write_json
from dynamics.lock import locks_output


def unigram_bits_per_token(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """-log2 p(token) under add-one smoothed unigram frequencies of `tokens` -> [vocab_size]."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64).ravel(), minlength=vocab_size)[:vocab_size] + 1.0
    return -np.log2(counts / counts.sum())


def _sample_bits(model, samples: np.ndarray, batch_size: int, device) -> np.ndarray:
    """NLL bits of every sample (first token unscored) -> [n] float64: the loss attack's per-sample
    NLL (dynamics/capacity/attacks.py, logits reduced a few positions at a time), in bits."""
    return score_samples(model, samples, batch_size, device)["nll"] / LN2


def _check_reference_tokenizer(family: FamilySpec, reference: str) -> None:
    """A reference with another tokenizer scores other token sequences: refuse it."""
    from transformers import AutoTokenizer

    try:
        ref_tok = AutoTokenizer.from_pretrained(reference)
    except (OSError, ValueError):
        return  # a bare checkpoint without tokenizer files: its vocabulary size is checked instead
    if ref_tok.get_vocab() != load_tokenizer(family).get_vocab():
        raise MemdynError(f"reference model {reference} uses another tokenizer than family {family.name!r}; "
                          "give a reference trained with the family's tokenizer")


def _reference_location(family: FamilySpec, size: str, reference: str | None) -> str:
    if reference is None:
        paths = family.references.get("sizes", {})
        if size not in paths:
            raise MemdynError(
                f"family {family.name!r} has no reference model for {size!r}: train them with "
                f"`memdyn family references {family.root}`, or pass --reference PATH"
            )
        return str(family.root / paths[size])
    _check_reference_tokenizer(family, reference)
    return reference


def members_and_nonmembers(family: FamilySpec, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(member sample indices, member samples [M, L], which members the membership attack uses [M],
    held-out samples [K, L]). The attack leaves out members holding a canary copy (random strings
    no held-out sample holds: they would tell the sides apart without any membership) and sets the
    others against as many held-out samples, a seeded draw where the held-out split holds more."""
    if family.kind != "local" or not family.references:
        raise MemdynError(f"family {family.name!r} records no member/reference split: run `memdyn family references DIR` on it")
    members = np.asarray(read_json(family.root / family.references["members"])["members"], dtype=np.int64)
    train = IndexedDataset(family.data.prefix)
    canaries = TrainingData(family.data.prefix).canary_samples
    attacked = ~np.isin(members, canaries) if canaries is not None else np.ones(len(members), dtype=bool)
    held = IndexedDataset(family.data.heldout_prefix)
    held = np.asarray(held.batch(0, len(held)))
    if len(held) > attacked.sum():
        held = held[np.sort(seeds.rng(seed, "capacity held-out").choice(len(held), size=int(attacked.sum()), replace=False))]
    return members, np.asarray(train.batch(0, len(train))[members]), attacked, held


def _is_text_capacity(out: Path) -> bool:
    return (out / "text_capacity.parquet").is_file() or (out / manifest.MANIFEST).is_dir()


SETTINGS = "_settings.json"


def capacity_inputs(family: FamilySpec, sizes, reference: str | None) -> dict:
    """What a text-capacity directory is computed from (its settings file; readers compare it
    with the family they show): the corpus, each target checkpoint and each reference model."""
    refs = {size.name: reference or family.references.get("sizes", {}).get(size.name) for size in sizes}
    return {"family": family.name, "corpus_hash": family.corpus.get("hash"), "reference": reference,
            "models": {size.name: size.final for size in sizes}, "references": refs}


def computed_from(out: str | Path, family: FamilySpec) -> bool:
    """Was the text-capacity directory `out` computed from the corpus, checkpoints and reference
    models that `family` holds now (its settings file)?"""
    path = Path(out) / SETTINGS
    recorded = read_json(path) if path.is_file() else {}
    sizes = [s for s in family.sizes if s.name in recorded.get("models", {})]
    return recorded == settings_record(capacity_inputs(family, sizes, recorded.get("reference")))


@locks_output()
def text_capacity(family: FamilySpec, out: str | Path, *, models: list[str] | None = None, reference: str | None = None,
                  device: str | None = None, dtype: str = "fp32", batch_size: int = 32, seed: int = 0,
                  progress: bool = True) -> pd.DataFrame:
    """Per-sample and per-size unintended memorization, membership inference and its sigmoid fit."""
    out = check_output_folder(out, "--out", _is_text_capacity)
    sizes = family.select(models)
    dev = resolve_device(device)
    resolve_dtype(dtype, dev)  # fp16 on a CPU fails here, before any model loads
    members, member_samples, attacked, heldout = members_and_nonmembers(family, seed)
    if attacked.sum() < 2 or len(heldout) < 2:
        raise MemdynError(f"too few samples for capacity estimates ({attacked.sum()} canary-free members, {len(heldout)} held out)")
    train = IndexedDataset(family.data.prefix)
    per_token = unigram_bits_per_token(train.tokens(), len(load_tokenizer(family)))
    baseline = per_token[member_samples[:, 1:]].sum(1)
    rows, per_sample = [], []
    references = {}  # location -> (vocabulary size, bits of the members): one reference often serves every size
    for size in tqdm(sizes, desc="capacity", unit="model", disable=not progress):
        target = load_model(family, size, device=dev, dtype=dtype)
        location = _reference_location(family, size.name, reference)
        if location not in references:
            ref = load_reference_model(location, dev, dtype)
            references[location] = [ref.get_input_embeddings().num_embeddings, None]
        if references[location][0] != target.get_input_embeddings().num_embeddings:
            raise MemdynError(f"reference model for {size.name} has another vocabulary size than the target")
        if references[location][1] is None:
            references[location][1] = _sample_bits(ref, member_samples, batch_size, dev)
            del ref
        bits_r = references[location][1]
        bits_t = _sample_bits(target, member_samples, batch_size, dev)
        attack = loss_threshold_attack(bits_t[attacked], _sample_bits(target, heldout, batch_size, dev), seed=seed)
        params = size.params or sum(p.numel() for p in target.parameters())
        per_sample.append(pd.DataFrame({
            "model": size.name, "seq_idx": members, "bits_baseline": baseline, "bits_reference": bits_r,
            "bits_target": bits_t, "unintended_bits": np.maximum(0.0, bits_r - bits_t),
            "generalization_bits": np.maximum(0.0, baseline - bits_r),
        }))
        rows.append(_size_row(size.name, params, per_sample[-1], len(heldout), train, attack))
        del target
    table = pd.DataFrame(rows)
    _write(out, table, pd.concat(per_sample, ignore_index=True), capacity_inputs(family, sizes, reference), family.name)
    return table


def _size_row(model: str, params: int, s: pd.DataFrame, n_heldout: int, train: IndexedDataset, attack) -> dict:
    """One size's row of text_capacity.parquet from its per-sample bits `s`."""
    n_train = len(train)
    return {
        "model": model, "params": params, "n_members": len(s), "n_heldout": n_heldout,
        "train_samples": n_train, "tokens_per_param": n_train * (train.fixed_length() - 1) / params,
        "mean_bits_baseline": s.bits_baseline.mean(), "mean_bits_reference": s.bits_reference.mean(),
        "mean_bits_target": s.bits_target.mean(),
        "unintended_bits_per_sample": s.unintended_bits.mean(), "generalization_bits_per_sample": s.generalization_bits.mean(),
        # the reference should generalize: mostly below the unigram code length of the members
        "share_reference_above_unigram": float((s.bits_reference > s.bits_baseline).mean()),
        "bits_memorized": s.unintended_bits.mean() * n_train, "generalization_bits": s.generalization_bits.mean() * n_train,
        "bits_per_param": s.unintended_bits.mean() * n_train / params,
        "mi_f1": attack.f1, "mi_f1_oracle": attack.f1_oracle, "mi_auroc": attack.auroc, "mi_members": attack.n_members,
    }


def _write(out: Path, table: pd.DataFrame, samples: pd.DataFrame, inputs: dict, family_name: str) -> None:
    # the settings file marks the directory complete (computed_from): removed first, written last, so
    # a run killed between two files is computed again instead of passing with its figure missing
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS).unlink(missing_ok=True)
    with atomic_path(out / "text_samples.parquet") as tmp:
        samples.to_parquet(tmp, index=False)
    with atomic_path(out / "text_capacity.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    manifest.record_part(out, "text_samples.parquet", len(samples))
    manifest.record_part(out, "text_capacity.parquet", len(table))
    with atomic_path(out / "text_capacity.csv") as tmp:
        table.to_csv(tmp, index=False)
    if len(table) >= 2:
        # with fewer points than 3 free constants, pin c1 = 1 (F1 starts at 1 for tiny datasets)
        fit = fit_sigmoid(table.tokens_per_param, table.mi_f1, fix_c1=None if len(table) >= 3 else 1.0)
        write_json(out / "membership_fit.json", fit.as_dict() | {"points": table[["model", "tokens_per_param", "mi_f1"]].to_dict("records")})
        plot_sigmoid_fit(table.tokens_per_param, table.mi_f1, fit, out / "membership_sigmoid",
                         title=f"{family_name}: loss-threshold membership inference", labels=list(table.model))
    write_json(out / SETTINGS, settings_record(inputs))
