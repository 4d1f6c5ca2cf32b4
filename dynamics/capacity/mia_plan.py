"""Planning `memdyn membership` (dynamics/capacity/mia.py): every check that can run before a model
is loaded (data, lengths, vocabularies, overlap of members and non-members, the reference), the
balanced draw of members and non-members, and the jobs to run."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dynamics.corpus.megatron import IndexedDataset, paths
from dynamics.errors import MemdynError
from dynamics.family.spec import FamilySpec
from dynamics.files import check_output_dir

SETTINGS = "_settings.json"
SPLITS = ("member", "nonmember")
FULL_HASH_LIMIT = 1_000_000  # pools up to this many samples are hashed whole for the overlap check


@dataclass(frozen=True)
class MembershipSettings:
    family: str
    corpus_hash: str | None
    members: str  # content fingerprints of the two datasets, not their paths
    nonmembers: str
    n: int  # samples of each split
    length: int  # tokens of each sample scored (the first `length`)
    seed: int
    dtype: str
    chunk_size: int
    batch_size: int
    reference: str | None  # None, "family" (the family's reference per size) or a model id/path
    training_order: bool  # members are the training samples in order: record which a checkpoint saw
    dropped_nonmembers: int  # held-out samples left out because the training data holds the same tokens
    dropped_members: int  # training samples left out because they hold a canary copy, which no held-out sample can


@dataclass
class MembershipPlan:
    settings: MembershipSettings
    prefixes: dict  # split -> Megatron prefix
    indices: dict  # split -> drawn sample indices (sorted)
    jobs: list  # (kind, size or reference key, revision or reference location, split, chunk)
    step_batch: int | None  # training samples per optimizer step (which members a checkpoint saw)
    sizes: list  # size names in the family's order
    ref_keys: dict  # size name -> key of its reference model's parts


def resolve_data(family: FamilySpec, handle: str, option: str) -> str:
    """`train` / `heldout` / a Megatron prefix -> a prefix whose .bin/.idx exist."""
    if handle == "train":
        prefix = family.data.prefix if family.data else None
    elif handle == "heldout":
        prefix = family.data.heldout_prefix if family.data else None
    else:
        prefix = handle
    if not prefix:
        raise MemdynError(f"{option} {handle}: family {family.name!r} records no such data; pass a Megatron prefix (PREFIX.bin/.idx)")
    bin_path, idx_path = paths(prefix)
    if not (bin_path.is_file() and idx_path.is_file()):
        raise MemdynError(f"{option} {handle}: {bin_path} / {idx_path} not found; give a Megatron .bin/.idx prefix")
    return str(prefix)


def _row_hashes(rows: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(np.ascontiguousarray(r).tobytes(), digest_size=16).digest() for r in rows]


def _pool_hashes(pool: IndexedDataset, length: int) -> set | None:
    """Hashes of every sample's first `length` tokens; None for a pool too large to hash whole."""
    if len(pool) > FULL_HASH_LIMIT:
        return None
    return set(_row_hashes(np.asarray(pool.batch(0, len(pool)))[:, :length]))


def _check_overlap(sets: dict, pools: dict, length: int, whole_pools: bool = True) -> None:
    """No token sequence may be both a member and a non-member: the drawn samples of each side
    are compared with the whole other pool when it is small enough to hash (and whole_pools),
    else with the other side's drawn samples."""
    hashes = {s: set(_row_hashes(sets[s])) for s in SPLITS}
    for side, other in (SPLITS, SPLITS[::-1]):
        against = _pool_hashes(pools[other], length) if whole_pools else None
        against = hashes[other] if against is None else against
        common = hashes[side] & against
        if common:
            raise MemdynError(f"{len(common)} of the drawn {side} samples also occur among the {other}s (same token sequence); "
                              "give --members and --nonmembers data that do not overlap")


def _check_reference(family: FamilySpec, reference: str, size) -> None:
    """A reference model with another tokenizer scores other token sequences: refuse it."""
    from transformers import AutoConfig, AutoTokenizer

    from dynamics.family.load import load_tokenizer, model_location

    try:
        ref_config = AutoConfig.from_pretrained(reference)
    except (OSError, ValueError):
        raise MemdynError(f"--reference {reference}: not a loadable model (no config.json here or in the Hugging Face cache)") from None
    location, revision = model_location(family, size, None)
    target_config = AutoConfig.from_pretrained(location, revision=revision)
    if ref_config.vocab_size != target_config.vocab_size:
        raise MemdynError(f"--reference {reference} has a vocabulary of {ref_config.vocab_size}, the family's models "
                          f"{target_config.vocab_size}: give a reference with the family's tokenizer")
    local = Path(reference).is_dir()
    if local and not any((Path(reference) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return  # a bare checkpoint (transformers would make up a default tokenizer): its vocabulary size was checked above
    try:
        ref_tok = AutoTokenizer.from_pretrained(reference)
    except (OSError, ValueError):
        return
    tok = load_tokenizer(family)
    special = lambda t: (t.bos_token_id, t.eos_token_id, t.pad_token_id, t.unk_token_id)  # noqa: E731
    if ref_tok.get_vocab() != tok.get_vocab() or special(ref_tok) != special(tok):
        raise MemdynError(f"--reference {reference} uses another tokenizer (vocabulary or special token ids differ) "
                          f"than family {family.name!r}; give a reference trained with the family's tokenizer")


def _reference_plan(family: FamilySpec, reference: str | None, sizes) -> tuple[str | None, dict]:
    """(settings value, size name -> (reference key, location)) of the reference models. Sizes that
    share one reference model (the embedded family's) share its key, so it runs once."""
    if reference is None:
        refs = family.references.get("sizes", {}) if family.kind == "local" else {}
        if not refs:
            return None, {}
        missing = [s.name for s in sizes if s.name not in refs]
        if missing:
            raise MemdynError(f"family {family.name!r} has no reference model for {', '.join(missing)}; pass --reference")
        broken = sorted({refs[s.name] for s in sizes if not (family.root / refs[s.name] / "config.json").is_file()})
        if broken:  # now, not after the targets' jobs
            raise MemdynError(f"family {family.name!r} records reference model(s) {', '.join(broken)} that are missing in "
                              f"{family.root}; retrain them (`memdyn family references`) or pass --reference")
        return "family", {name: (re.sub(r"[^A-Za-z0-9.]+", "_", path), str(family.root / path)) for name, path in refs.items()}
    _check_reference(family, reference, sizes[0])
    return reference, {s.name: ("reference", reference) for s in family.sizes}


def _candidates(pools: dict, prefixes: dict, length: int, own_split: bool) -> tuple[dict, int, int]:
    """Sample indices each side may draw from, and how many held-out and training samples were dropped.

    With the family's own `train` / `heldout` the two sides must differ only in membership:
    - a family's held-out documents can still hold token sequences that also occur in its training
      data (near-identical files, e.g. the stdlib's codec tables): such a sample is trained on, so
      it is dropped from the non-members (for data given as prefixes an overlap is an error, see
      _check_overlap);
    - canary copies (random strings) sit only in training samples: with them among the members an
      untrained model's zlib ratio told the sides apart at AUROC 0.91 (session 29), so the samples
      holding one are dropped from the members (the canaries have their own analysis)."""
    from dynamics.family.data import TrainingData

    cand = {s: np.arange(len(pools[s])) for s in SPLITS}
    seen = _pool_hashes(pools["member"], length) if own_split else None
    if seen is None:
        return cand, 0, 0
    held = np.asarray(pools["nonmember"].batch(0, len(pools["nonmember"])))[:, :length]
    keep = np.array([h not in seen for h in _row_hashes(held)], dtype=bool)
    canaries = TrainingData(prefixes["member"]).canary_samples
    members = cand["member"] if canaries is None else np.setdiff1d(cand["member"], canaries)
    return {"member": members, "nonmember": cand["nonmember"][keep]}, int((~keep).sum()), len(cand["member"]) - len(members)


def _draw(cand: dict, samples: int | None, seed: int) -> tuple[int, dict]:
    n = min(len(c) for c in cand.values())
    if samples is not None:
        n = min(n, samples)
    rng = np.random.default_rng(seed)
    return n, {s: np.sort(rng.choice(cand[s], size=n, replace=False)) for s in SPLITS}


def plan_membership(
    family: FamilySpec, out: Path, members: str, nonmembers: str, models=None, revisions=None, reference: str | None = None,
    samples: int | None = None, length: int | None = None, seed: int = 0, dtype: str = "fp32", device: str | None = None,
    batch_size: int = 32, chunk_size: int = 256, replace_stale: bool = False,
) -> MembershipPlan:
    """Every check that can run before any model is loaded; the jobs to run. replace_stale: results
    of other settings in `out` are removed instead of refused (files.check_output_dir)."""
    from dynamics.family.load import load_tokenizer, model_location, resolve_device, resolve_dtype

    if samples is not None and samples < 1:
        raise MemdynError(f"--samples must be >= 1, got {samples}")
    if batch_size < 1 or chunk_size < 1:
        raise MemdynError("--batch-size and --chunk-size must be >= 1")
    resolve_dtype(dtype, resolve_device(device))
    prefixes = {"member": resolve_data(family, members, "--members"), "nonmember": resolve_data(family, nonmembers, "--nonmembers")}
    pools = {s: IndexedDataset(p) for s, p in prefixes.items()}
    for s, option in zip(SPLITS, ("--members", "--nonmembers")):
        if len(pools[s]) == 0:
            raise MemdynError(f"{option} {prefixes[s]} holds no samples; give non-empty data")
    full = min(p.fixed_length() for p in pools.values())
    length = full if length is None else length
    if not 2 <= length <= full:
        raise MemdynError(f"--length must be between 2 and {full} (the shorter samples' length), got {length}")
    own = (members, nonmembers) == ("train", "heldout")
    cand, dropped, canary_members = _candidates(pools, prefixes, length, own)
    if min(len(c) for c in cand.values()) == 0:
        raise MemdynError(f"--nonmembers {nonmembers}: every sample also occurs in the members' data; give other non-members")
    n, indices = _draw(cand, samples, seed)
    drawn = {s: np.asarray(pools[s].batch(0, len(pools[s]))[indices[s]])[:, :length] for s in SPLITS}
    vocab = len(load_tokenizer(family))
    for s, option in zip(SPLITS, ("--members", "--nonmembers")):
        if int(drawn[s].max()) >= vocab:
            raise MemdynError(f"{option} {prefixes[s]} holds token id {int(drawn[s].max())} but the family's tokenizer has {vocab} "
                              "tokens: the data was tokenized with another tokenizer")
    _check_overlap(drawn, pools, length, whole_pools=not own)  # the family's own: overlaps were dropped above
    sizes = family.select(models)
    plan = [(size, family.revision(size, r)) for size in sizes for r in (revisions or [None])]
    if family.kind == "local":
        for size, rev in plan:
            model_location(family, size, rev)
    ref_value, refs = _reference_plan(family, reference, sizes)
    order = members == "train" or (family.kind == "hub" and family.data is not None)
    settings = MembershipSettings(
        family=family.name, corpus_hash=family.corpus.get("hash"), members=pools["member"].fingerprint(),
        nonmembers=pools["nonmember"].fingerprint(), n=n, length=length, seed=seed, dtype=dtype,
        chunk_size=chunk_size, batch_size=batch_size, reference=ref_value, training_order=order,
        dropped_nonmembers=dropped, dropped_members=canary_members,
    )
    check_output_dir(out, SETTINGS, asdict(settings), "membership results", replace_stale=replace_stale)
    chunks = range(-(-n // chunk_size))
    jobs = [("target", size, rev, s, c) for size, rev in plan for s in SPLITS for c in chunks]
    for key, location in dict(refs[s.name] for s in sizes if s.name in refs).items():
        jobs += [("reference", key, location, s, c) for s in SPLITS for c in chunks]
    step_batch = family.data.batch_size if family.data else None
    return MembershipPlan(settings, prefixes, indices, jobs, step_batch, family.size_names, {k: v[0] for k, v in refs.items()})
