"""Train a Pythia-style family: several GPT-NeoX sizes on the identical sample order.

Like Pythia: step N trains on samples [N*B, (N+1)*B) of the packed data (wrapping around for
further epochs), AdamW with linear warmup and cosine decay to 10% of the peak rate, no dropout,
float32 weights and optimizer state (dtype bf16: the forward pass under bf16 autocast, as Pythia
trained under fp16), and checkpoints `step<N>` at log-spaced steps and at the end. Every
checkpoint is written atomically together with the optimizer state, so an interrupted run resumes
from its last checkpoint and produces the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dynamics.corpus import megatron
from dynamics.corpus.packing import adopt_megatron, select_documents
from dynamics.corpus.sources import content_hash, documents, parse_source, python_version
from dynamics.corpus.steps import revision_name, revision_step
from dynamics.corpus.tokenizer import EOD_ID, PAD_ID, train_tokenizer
from dynamics.errors import MemdynError
from dynamics import seeds
from dynamics.family.data import TrainingData
from dynamics.family.load import resolve_device, resolve_dtype
from dynamics.family.presets import ModelShape, Preset, get_preset, is_peak_rate
from dynamics.family.spec import DataSpec, FamilySpec, SizeSpec, load_family
from dynamics.family.world import CANARIES, build_text_world, check_world_settings
from dynamics.files import atomic_path, canonical, dtype_setting, read_json, write_json
from dynamics.lock import locks_output

PLAN_FILE = "family.plan.json"  # what an unfinished run was asked to do; family.json when done
TRAIN_DTYPES = ("fp32", "bf16")  # fp16 would need loss scaling, which nothing here does


def check_lr(lr: float | None) -> None:
    """A peak learning rate for every size (None: the preset's per-size rates), before anything is written."""
    if lr is not None and not is_peak_rate(lr):
        raise MemdynError(f"--lr must be a peak learning rate in (0, 1], e.g. 3e-3, got {lr!r}")


def shape_at(shape: ModelShape, lr: float | None) -> ModelShape:
    """The shape trained at peak learning rate `lr` instead of its own (None: as it is)."""
    return shape if lr is None else replace(shape, lr=lr)


def check_train_dtype(dtype: str, device: torch.device) -> None:
    """A training precision this device can run, before anything is written."""
    if dtype not in TRAIN_DTYPES:
        raise MemdynError(f"--dtype {dtype!r} cannot train a family: choose fp32 or bf16 (mixed precision)")
    resolve_dtype(dtype, device)


def model_config(shape: ModelShape, vocab_size: int, seq_length: int):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=4 * shape.d_model,
        max_position_embeddings=2 * seq_length,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        use_parallel_residual=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=EOD_ID,
        eos_token_id=EOD_ID,
        pad_token_id=PAD_ID,
    )


def size_name(params: int) -> str:
    """Pythia-style names from parameter counts: 452k, 1.0m, 5.3m."""
    if params >= 10**9:
        return f"{params / 1e9:.1f}b"
    if params >= 10**6:
        return f"{params / 1e6:.1f}m"
    return f"{round(params / 1e3)}k"


def learning_rate(step: int, preset: Preset, peak: float) -> float:
    """Linear warmup to `peak`, then cosine decay to a tenth of it."""
    if step < preset.warmup_steps:
        return peak * (step + 1) / preset.warmup_steps
    progress = (step - preset.warmup_steps) / max(1, preset.steps - preset.warmup_steps)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def family_plan(preset: Preset, seed: int, dtype: str = "fp32", corpus: str = "stdlib", text_field: str = "text",
                tokenizer: str | None = None, lr: float | None = None) -> dict:
    """What a family was asked for (family.json "plan"; train_family's defaults): a directory
    holding another is refused. A common learning rate is recorded only when one was asked for,
    as the precision only when not fp32, so families made before either was a setting still match."""
    return {"preset": preset.name, "corpus": corpus, "seed": seed, "text_field": text_field, "tokenizer": tokenizer,
            **dtype_setting(dtype), **({} if lr is None else {"lr": float(lr)})}


def check_family_dir(out: Path, plan: dict, option: str = "--out") -> None:
    """Refuse to write into a directory that holds something else, or a run with other settings
    (`option`: what the user changes to choose another directory)."""
    if (out / "family.json").is_file() and not (out / PLAN_FILE).is_file():
        done = read_json(out / "family.json").get("plan")
        if done == plan:
            return
        raise MemdynError(f"{out} already holds a finished family trained with other settings ({done}); choose another {option}")
    if (out / PLAN_FILE).is_file():
        if read_json(out / PLAN_FILE) != plan:
            raise MemdynError(
                f"{out} holds an unfinished family started with other settings ({read_json(out / PLAN_FILE)}); "
                f"rerun with those settings to resume, or choose another {option}"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise MemdynError(f"output directory {out} is not empty and holds no memdyn family; choose another {option}")


def _build_data(out: Path, preset: Preset, corpus: str, text_field: str, tokenizer: str | None, seed: int) -> dict:
    """Tokenizer and packed data; returns the corpus record for family.json. Skipped when done."""
    data_dir = out / "data"
    record_path = data_dir / "corpus.json"
    if record_path.is_file():
        return read_json(record_path)
    # a build killed before corpus.json (its completion mark) is redone from scratch: what it left
    # (a tokenizer, part of the data) would otherwise refuse to be replaced
    _clear_unfinished(out, keep=(PLAN_FILE,))
    source = parse_source(corpus, text_field)
    if source.tokenized:
        if tokenizer is None:
            raise MemdynError("a tokenized (Megatron) corpus needs --tokenizer, the tokenizer it was made with")
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out / "tokenizer")
        packed = adopt_megatron(source.location, data_dir, preset.seq_length, seed, preset.heldout_fraction)
        ds = megatron.IndexedDataset(source.location)
        digest = f"megatron:{ds.n_tokens}:{ds.idx_path.stat().st_size}"
        n_docs = len(ds.doc_idx) - 1
    else:
        docs = select_documents(list(documents(source)), seed, None, preset.max_doc_chars)
        if not docs:
            raise MemdynError(f"corpus {corpus!r} holds no documents")
        # the world's candidate documents (the tokenizer's text); later ones may feed the reference
        n_world = _prefix_count(docs, preset.corpus_chars)
        digest = content_hash(docs[:n_world])
        if tokenizer is None:
            train_tokenizer((d.text for d in docs[:n_world]), preset.vocab_size, out / "tokenizer")
        else:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out / "tokenizer")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(out / "tokenizer")
        dtype = megatron.smallest_dtype(len(tok))
        packed, _ = build_text_world(out, preset, docs, n_world, tok, dtype, seed)
        n_docs = packed.n_documents
    record = {
        "source": source.describe(),
        "hash": digest,
        "documents": n_docs,
        "tokens": packed.n_tokens,
        "train_samples": packed.n_train,
        "heldout_samples": packed.n_heldout,
        "epochs": round(preset.steps * preset.batch_size / max(1, packed.n_train), 3),  # 1.0: one pass
        "python": python_version() if source.kind == "stdlib" else None,
    }
    write_json(record_path, record)
    print(f"      data: {record['documents']} documents, {record['train_samples']} training samples "
          f"({record['epochs']} passes), {record['heldout_samples']} held out", flush=True)
    return record


_WEIGHTS = ("models", "references")  # trained weights: never removed with an unfinished data build


def _clear_unfinished(out: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove what an unfinished data build left in `out` (tokenizer, data, canaries), but `keep`.
    check_family_dir let only an empty directory or one holding this family's plan through, so all of
    it is memdyn's own. Weights stay: none exist before corpus.json in a normal run, and should one
    have lost its corpus.json, the same plan rebuilds the same data for them."""
    for entry in out.iterdir():
        if entry.name not in keep + _WEIGHTS:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _prefix_count(docs: list, max_chars: int | None) -> int:
    """How many leading documents reach max_chars characters (all when None)."""
    if max_chars is None:
        return len(docs)
    sizes = np.cumsum([len(d.text) for d in docs])
    return int(min(len(docs), np.searchsorted(sizes, max_chars) + 1))


def _latest_checkpoint(size_dir: Path) -> int | None:
    """The last step whose checkpoint and optimizer state were both written."""
    state = size_dir / "trainer_state.pt"
    if not state.is_file():
        return None
    step = torch.load(state, map_location="cpu", weights_only=False)["step"]
    return step if (size_dir / revision_name(step) / "config.json").is_file() else None


def train_size(
    shape: ModelShape, name: str, preset: Preset, samples: megatron.IndexedDataset, vocab_size: int,
    size_dir: Path, seed: int, device: torch.device, dtype: str = "fp32",
) -> list[str]:
    """Train one size, resuming from its last checkpoint; returns its revision names. dtype bf16:
    float32 weights, the forward pass under bf16 autocast."""
    from transformers import GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per checkpoint shard is noise here
    checkpoints = preset.checkpoint_steps()
    batch = samples.batch(0, len(samples))  # [n_samples, seq_length + 1], memory-mapped
    start = _latest_checkpoint(size_dir)
    if start is None:
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(model_config(shape, vocab_size, preset.seq_length)).to(device)
        start, log = 0, []
    else:
        model = GPTNeoXForCausalLM.from_pretrained(size_dir / revision_name(start)).to(device)
        log = []  # resumed at step 0 (killed right after the first checkpoint): nothing logged yet
    mixed = dtype == "bf16"
    if mixed and device.type == "cpu":
        # on a CPU, SDPA's bf16 backward is slower than float32's (4.2m of the tiny preset: 182 against
        # 202 ms per step; eager attention 120 ms on two threads with AMX): train with eager attention
        model.set_attn_implementation("eager")
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, betas=(0.9, 0.95), weight_decay=0.01)
    if start:
        state = torch.load(size_dir / "trainer_state.pt", map_location=device, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        log = state["log"]

    def save(step: int) -> None:
        # a kill between a checkpoint and trainer_state.pt leaves the checkpoint ahead of the state:
        # the resumed run writes the same one again
        with atomic_path(size_dir / revision_name(step), replaces=lambda p: (p / "config.json").is_file()) as tmp:
            model.save_pretrained(tmp)
        with atomic_path(size_dir / "trainer_state.pt") as tmp:
            torch.save(canonical({"step": step, "optimizer": optimizer.state_dict(), "log": log}), tmp)  # same bytes after a resume

    if start == 0 and not (size_dir / "step0").is_dir():
        save(0)
    model.train()
    bar = tqdm(range(start, preset.steps), desc=f"train {name}", initial=start, total=preset.steps, leave=False)
    for step in bar:
        rows = np.arange(step * preset.batch_size, (step + 1) * preset.batch_size) % len(batch)
        x = torch.from_numpy(batch[rows].astype(np.int64)).to(device)  # [B, seq_length + 1]
        lr = learning_rate(step, preset, preset.peak_rate(shape))
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
            logits = model(input_ids=x[:, :-1]).logits  # [B, T, V]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log.append((step + 1, loss.item(), lr))
        bar.set_postfix(loss=f"{log[-1][1]:.3f}")
        if step + 1 in checkpoints:
            save(step + 1)
    bar.close()
    import csv

    with atomic_path(size_dir / "train_log.csv") as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([("step", "loss", "lr"), *log])
    return [revision_name(s) for s in checkpoints]


@locks_output()
def train_family(
    preset: str,
    out: str | Path,
    corpus: str = "stdlib",
    seed: int = 0,
    text_field: str = "text",
    tokenizer: str | None = None,
    device: str | None = None,
    dtype: str = "fp32",
    lr: float | None = None,
) -> FamilySpec:
    """Build the corpus, tokenizer and data, train every size, and write family.json. dtype: fp32,
    or bf16 for mixed precision (float32 weights, bf16 autocast). lr: one peak learning rate for
    every size and the reference, instead of the preset's per-size rates (which fall with size, as
    Pythia's): a controlled family in which only the size changes."""
    p = get_preset(preset)
    out = Path(out)
    check_lr(lr)
    plan = family_plan(p, seed, dtype, corpus, text_field, tokenizer, lr)
    check_family_dir(out, plan)
    if (out / "family.json").is_file() and not (out / PLAN_FILE).is_file():
        return load_family(out)
    source = parse_source(corpus, text_field)  # validates before anything is written
    check_world_settings(p)
    dev = resolve_device(device)  # an unavailable device fails before anything is written
    check_train_dtype(dtype, dev)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PLAN_FILE, plan)
    try:
        record = _build_data(out, p, corpus, text_field, tokenizer, seed)
    except MemdynError:  # a refused corpus: leave nothing that would refuse the corrected command
        if created:
            shutil.rmtree(out, ignore_errors=True)
        elif not (out / "data" / "corpus.json").is_file() and not any((out / w).exists() for w in _WEIGHTS):
            _clear_unfinished(out)  # the directory is as empty as it was given
        raise
    from transformers import AutoTokenizer

    vocab_size = len(AutoTokenizer.from_pretrained(out / "tokenizer"))
    train = megatron.IndexedDataset(out / "data" / "train")
    if train.fixed_length() > 2 * p.seq_length:
        raise MemdynError(f"samples of {train.fixed_length()} tokens are longer than the models' positions")
    sizes = []
    for shape in p.shapes:
        params = _count_params(shape, vocab_size, p.seq_length)
        name = size_name(params)
        revisions = train_size(shape_at(shape, lr), name, p, train, vocab_size, out / "models" / name, seed, dev, dtype)
        sizes.append(SizeSpec(name, params, f"models/{name}", revisions, shape.layers, shape.d_model))
    family = FamilySpec(
        name=f"{p.name}-{source.kind}" if corpus == "stdlib" else f"{p.name}-{Path(source.location).stem}",
        kind="local",
        sizes=sizes,
        tokenizer="tokenizer",
        data=DataSpec("data/train", p.seq_length, p.batch_size, str(train.dtype), "data/heldout"),
        seed=seed,
        corpus=record,
        preset=p.name,
    )
    manifest = family.to_json() | {"plan": plan, "steps": p.steps, "checkpoint_steps": p.checkpoint_steps()}
    if not source.tokenized:  # the world's settings; old families lack them (family/world.py)
        manifest["world"] = {"duplication": p.duplication.as_dict(), "canaries": p.canaries.as_dict()}
        if (out / CANARIES).is_file():
            manifest["canaries"] = CANARIES
    write_json(out / "family.json", manifest)
    (out / PLAN_FILE).unlink()
    return load_family(out)


def train_references(family: FamilySpec, *, device: str | None = None) -> FamilySpec:
    """Reference models for unintended memorization, recorded in family.json "references".

    Embedded world (data/reference.json written with the family, family/world.py): ONE model of the
    preset's reference shape, trained for one pass on documents the world never uses, so every
    training sample is a non-member of it; every size is compared with it. Otherwise (other corpora,
    old families): per size a model of the size's shape and schedule trained without a seeded set
    of probe documents (`build_reference_data`). Trained in the family's precision; resumes like
    family training."""
    if family.kind != "local" or not family.preset:
        raise MemdynError(f"{family.root}: reference models can be trained only for a family trained by memdyn")
    family_dir = Path(family.root)
    if family.references:
        return family
    p = get_preset(family.preset)
    seed = family.seed or 0
    from transformers import AutoTokenizer

    vocab_size = len(AutoTokenizer.from_pretrained(family_dir / "tokenizer"))
    dev = resolve_device(device)
    check_train_dtype(family.train_dtype, dev)
    disjoint = (family_dir / "data" / "reference.json").is_file() and p.reference_shape is not None
    record = read_json(family_dir / "data" / "reference.json") if disjoint else build_reference_data(family_dir / "data", seed)
    reference = megatron.IndexedDataset(family_dir / "data" / "reference")
    extra = {}
    if disjoint:
        one_pass = replace(p, steps=len(reference) // p.batch_size)
        params = _count_params(p.reference_shape, vocab_size, p.seq_length)
        revisions = train_size(shape_at(p.reference_shape, family.train_lr), "reference", one_pass, reference, vocab_size,
                               family_dir / "references" / "reference", seed, dev, family.train_dtype)
        paths = {size.name: f"references/reference/{revisions[-1]}" for size in family.sizes}
        extra = {"design": record["design"], "params": params, "steps": one_pass.steps}
    else:
        for shape, size in zip(p.shapes, family.sizes):
            train_size(shape_at(shape, family.train_lr), f"{size.name} (reference)", p, reference, vocab_size, family_dir / "references" / size.name,
                       seed, dev, family.train_dtype)
        paths = {size.name: f"references/{size.name}/{size.final}" for size in family.sizes}
    manifest = read_json(family_dir / "family.json")
    manifest["references"] = {
        "data": "data/reference", "members": "data/reference.json", "n_members": len(record["members"]),
        "sizes": paths, **extra,
    }
    write_json(family_dir / "family.json", manifest)
    return load_family(family_dir)


def build_reference_data(data_dir: Path, seed: int, fraction: float = 0.1) -> dict:
    """Data for per-size reference models when the corpus leaves no unused documents.

    A seeded set of "probe" training documents is chosen until about `fraction` of the training
    samples lie wholly inside it; those samples are the members whose unintended memorization is
    measured. The reference data is every training sample that touches no probe document, plus the
    held-out samples (so it is about as large as the training data), shuffled with the seed.
    A sample covers the documents of its doc_ids list (old layouts: first_doc..last_doc)."""
    path = data_dir / "reference.json"
    if path.is_file() and megatron.paths(data_dir / "reference")[1].is_file():
        return read_json(path)
    train = TrainingData(str(data_dir / "train")).samples.sort_values("sample_idx")
    rng = seeds.rng(seed, "reference")
    if "doc_ids" in train:
        covered = [np.asarray(d, dtype=np.int64) for d in train.doc_ids]
    elif (train.first_doc < 0).all():  # no document boundaries (adopted Megatron samples): one sample, one document
        covered = [np.array([i]) for i in range(len(train))]
    else:
        covered = [np.arange(a, b + 1) for a, b in zip(train.first_doc, train.last_doc)]
    docs = np.unique(np.concatenate(covered))
    in_probe = np.zeros(int(docs.max()) + 1, dtype=bool)
    touched = members = np.zeros(len(train), dtype=bool)
    for doc in rng.permutation(docs):
        in_probe[doc] = True
        hits = np.array([in_probe[c].sum() for c in covered])
        touched, members = hits > 0, hits == np.array([len(c) for c in covered])
        if members.sum() >= fraction * len(train):
            break
    if members.all() or not members.any():
        raise MemdynError(f"the corpus has too few documents ({len(docs)}) to hold some out for reference models")
    train_ds = megatron.IndexedDataset(data_dir / "train")
    held = megatron.IndexedDataset(data_dir / "heldout")
    rows = np.r_[train.sample_idx.to_numpy()[~touched], -1 - np.arange(len(held))]  # negative: held-out rows
    rows = rows[rng.permutation(len(rows))]
    items = (train_ds[int(r)] if r >= 0 else held[int(-1 - r)] for r in rows)
    megatron.write(data_dir / "reference", items, train_ds.dtype)
    record = {
        "members": train.sample_idx.to_numpy()[members].tolist(),
        "probe_docs": np.flatnonzero(in_probe).tolist(),
        "reference_samples": int(len(rows)),
        "excluded_train_samples": int(touched.sum()),
    }
    write_json(path, record)
    return record


def _count_params(shape: ModelShape, vocab_size: int, seq_length: int) -> int:
    from transformers import GPTNeoXForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in GPTNeoXForCausalLM(model_config(shape, vocab_size, seq_length)).parameters())


def final_step(size: SizeSpec) -> int:
    return revision_step(size.final)
