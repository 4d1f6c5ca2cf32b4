import json

import pytest
import torch

from dynamics.corpus.megatron import IndexedDataset
from dynamics.errors import MemdynError
from dynamics.family.load import check_vocab, load_model, load_reference_model, load_tokenizer, resolve_dtype
from dynamics.family.presets import PRESETS
from dynamics.family.spec import load_family
from dynamics.family.train import train_family
from dynamics.files import read_json
from tests.conftest import run_cli


def test_family_directory_contract(micro_family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = read_json(micro_family / "family.json")
    assert {"name", "sizes", "tokenizer", "data", "seed", "corpus"} <= set(manifest)
    assert {"prefix", "seq_length", "batch_size", "dtype"} <= set(manifest["data"])
    assert len(manifest["corpus"]["hash"]) == 64
    params = [s["params"] for s in manifest["sizes"]]
    assert params == sorted(params) and len(params) == len(PRESETS["micro"].shapes)
    tok = AutoTokenizer.from_pretrained(micro_family / "tokenizer")
    steps = PRESETS["micro"].checkpoint_steps()
    for size in manifest["sizes"]:
        assert size["revisions"] == [f"step{s}" for s in steps]
        for rev in (size["revisions"][0], size["revisions"][-1]):
            model = AutoModelForCausalLM.from_pretrained(micro_family / size["path"] / rev)
            assert type(model).__name__ == "GPTNeoXForCausalLM"
            assert sum(p.numel() for p in model.parameters()) == size["params"]
            assert model.config.vocab_size == len(tok)
    data = IndexedDataset(micro_family / "data" / "train")
    assert data.fixed_length() == manifest["data"]["seq_length"] + 1


def test_training_learned_something(micro_family):
    import csv

    family = load_family(micro_family)
    for size in family.sizes:
        rows = list(csv.DictReader(open(micro_family / size.path / "train_log.csv")))
        assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) - 1.0


def test_killed_or_refused_data_build_leaves_a_usable_directory(micro_family, tmp_path, monkeypatch):
    """Killed after the tokenizer was written but before the data (corpus.json marks the build
    done): the rerun builds again (it refused: 'tokenizer is a non-empty directory that memdyn did
    not write'). A refused build over such leftovers empties the directory (it kept them, without
    the plan, and every later command refused it). The finished family equals an uninterrupted one."""
    from safetensors.torch import load_file

    import dynamics.family.train as train_module

    out = tmp_path / "f"
    out.mkdir()  # given empty, so a refused build leaves it empty rather than removing it
    real = train_module.build_text_world

    def fails(error):
        def build(*args, **kwargs):
            raise error
        return build

    monkeypatch.setattr(train_module, "build_text_world", fails(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train_family("micro", out, seed=0, device="cpu")
    assert (out / "tokenizer" / "tokenizer.json").is_file() and not (out / "data" / "corpus.json").exists()
    monkeypatch.setattr(train_module, "build_text_world", fails(MemdynError("refused")))
    with pytest.raises(MemdynError, match="refused"):
        train_family("micro", out, seed=0, device="cpu")
    assert list(out.iterdir()) == []
    monkeypatch.setattr(train_module, "build_text_world", fails(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train_family("micro", out, seed=0, device="cpu")
    monkeypatch.setattr(train_module, "build_text_world", real)
    family = train_family("micro", out, seed=0, device="cpu")
    assert (out / "data" / "train.bin").read_bytes() == (micro_family / "data" / "train.bin").read_bytes()
    size = family.sizes[-1]
    a = load_file(out / size.path / size.final / "model.safetensors")
    b = load_file(micro_family / size.path / size.final / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_family_info_cli(micro_family):
    code, out, _ = run_cli("family", "info", micro_family)
    assert code == 0
    assert "micro-stdlib" in out and "step200" in out and "samples x 33 tokens" in out


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_resume_after_interruption_gives_identical_weights(tmp_path, monkeypatch, dtype):
    """Crash in the middle of training, rerun the same command: same final weights as an
    uninterrupted run (both trained here, under the same torch thread settings); in mixed precision
    too (a resumed size trains with the same attention implementation)."""
    from safetensors.torch import load_file

    train_family("micro", tmp_path / "a", seed=0, device="cpu", dtype=dtype)
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def crashing_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 300:  # inside the second size, between checkpoints
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train_family("micro", tmp_path / "b", seed=0, device="cpu", dtype=dtype)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert not (tmp_path / "b" / "family.json").exists()
    train_family("micro", tmp_path / "b", seed=0, device="cpu", dtype=dtype)
    for size in load_family(tmp_path / "a").sizes:
        a = load_file(tmp_path / "a" / size.path / size.final / "model.safetensors")
        b = load_file(tmp_path / "b" / size.path / size.final / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if dtype == "bf16":
        assert read_json(tmp_path / "a" / "family.json")["plan"]["dtype"] == "bf16"
        with pytest.raises(MemdynError, match="other settings"):  # the same family in another precision
            train_family("micro", tmp_path / "a", seed=0, device="cpu")


def test_mixed_precision_keeps_float32_weights_and_trains_differently(micro_family, tmp_path):
    """bf16: float32 weights and optimizer state, the forward pass under bf16 autocast, so the
    weights differ from the float32 family's after the first step; fp32 families record no dtype."""
    from safetensors.torch import load_file

    family = load_family(micro_family)
    size = family.sizes[0]
    assert "dtype" not in read_json(micro_family / "family.json")["plan"]
    from dynamics.family.presets import get_preset
    from dynamics.family.train import train_size
    from dynamics.corpus.megatron import IndexedDataset as Data

    p = get_preset("micro")
    data = Data(micro_family / "data" / "train")
    vocab = len(load_tokenizer(family))
    train_size(p.shapes[0], size.name, p, data, vocab, tmp_path / "bf16", 0, torch.device("cpu"), "bf16")
    fp32 = load_file(micro_family / size.path / size.final / "model.safetensors")
    bf16 = load_file(tmp_path / "bf16" / size.final / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in bf16.values())
    assert not all(torch.equal(fp32[k], bf16[k]) for k in fp32)
    step0 = load_file(micro_family / size.path / "step0" / "model.safetensors")
    assert all(torch.equal(step0[k], load_file(tmp_path / "bf16" / "step0" / "model.safetensors")[k]) for k in step0)


def test_common_learning_rate_trains_every_size_and_the_reference_at_it(micro_family, tmp_path):
    """--lr: every size and the reference peak at that rate (the preset's per-size rates otherwise),
    the plan records it, `family info` says it, and a family of other rates is not resumed."""
    import csv

    from dynamics.family.train import train_references

    out = tmp_path / "lr"
    code, _, err = run_cli("family", "train", "--preset", "micro", "--out", out, "--lr", "3e-3", "--device", "cpu")
    assert code == 0, err
    family = train_references(load_family(out), device="cpu")
    assert read_json(out / "family.json")["plan"]["lr"] == 3e-3 and family.train_lr == 3e-3
    assert "lr" not in read_json(micro_family / "family.json")["plan"] and load_family(micro_family).train_lr is None
    logs = [out / s.path / "train_log.csv" for s in family.sizes] + list((out / "references").glob("*/train_log.csv"))
    assert len(logs) == len(family.sizes) + 1
    for log in logs:
        rates = [float(row["lr"]) for row in csv.DictReader(open(log))]
        assert max(rates) == pytest.approx(3e-3)
    # the same data as the family of the preset's rates, other weights
    assert (out / "data" / "train.bin").read_bytes() == (micro_family / "data" / "train.bin").read_bytes()
    from safetensors.torch import load_file

    size = family.sizes[0]
    a, b = (load_file(d / size.path / size.final / "model.safetensors") for d in (out, micro_family))
    assert not all(torch.equal(a[k], b[k]) for k in a)
    code, info, _ = run_cli("family", "info", out)
    assert code == 0 and "every size at peak learning rate 0.003" in info
    assert [line.split()[4] for line in info.splitlines()[2:2 + len(family.sizes)]] == ["0.003"] * len(family.sizes)
    assert family.peak_rates() == {s.name: 3e-3 for s in family.sizes}
    assert load_family(micro_family).peak_rates() == {s.name: PRESETS["micro"].lr for s in family.sizes}
    # the preset's own rates fall with size where its shapes say so
    assert PRESETS["tiny"].peak_rates() == [1e-2, 1e-2, 3e-3] and PRESETS["tiny"].peak_rates(6e-3) == [6e-3] * 3
    with pytest.raises(MemdynError, match="other settings"):
        train_family("micro", out, seed=0, device="cpu", lr=1e-3)
    with pytest.raises(MemdynError, match="other settings"):
        train_family("micro", micro_family, seed=0, device="cpu", lr=3e-3)
    # a damaged plan is one line, not a stack trace
    manifest = read_json(out / "family.json")
    (out / "family.json").write_text(json.dumps({**manifest, "plan": {**manifest["plan"], "lr": "fast"}}))
    code, _, err = run_cli("family", "info", out)
    assert code == 2 and "not a valid family manifest" in err and "'fast'" in err and len(err.strip().splitlines()) == 1
    for bad in ("0", "-1e-3", "nan", "inf", "2"):
        code, _, err = run_cli("family", "train", "--preset", "micro", "--out", tmp_path / "bad", "--lr", bad)
        assert code == 2 and "--lr must be a peak learning rate in (0, 1]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_bad_family_inputs(micro_family, tmp_path):
    with pytest.raises(MemdynError, match="unknown preset"):
        train_family("huge", tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(MemdynError, match="not empty"):
        train_family("micro", tmp_path / "busy")
    (tmp_path / "empty_corpus").mkdir()
    with pytest.raises(MemdynError, match="no documents"):
        train_family("micro", tmp_path / "out", corpus=str(tmp_path / "empty_corpus"))
    assert not (tmp_path / "out" / "family.json").exists()
    with pytest.raises(MemdynError, match="other settings"):
        train_family("micro", micro_family, seed=1)
    code, _, err = run_cli("family", "train", "--preset", "nano", "--out", tmp_path / "y")
    assert code == 2 and err.strip().startswith("memdyn: error: unknown preset") and len(err.strip().splitlines()) == 1
    for dtype in ("fp16", "int8"):  # fp16 would need loss scaling
        code, _, err = run_cli("family", "train", "--preset", "micro", "--out", tmp_path / "z", "--dtype", dtype)
        assert code == 2 and f"--dtype '{dtype}' cannot train" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "z").exists()


def test_loading_and_checks(micro_family):
    family = load_family(micro_family)
    size = family.sizes[0]
    model = load_model(family, size.name, "step0", device="cpu")
    assert not model.training
    tok = load_tokenizer(family)
    check_vocab(tok, model, size.name)
    model.resize_token_embeddings(10)
    with pytest.raises(MemdynError, match="vocabulary mismatch"):
        check_vocab(tok, model, size.name)
    with pytest.raises(MemdynError, match="no revision 'step7'"):
        load_model(family, size.name, "step7", device="cpu")
    with pytest.raises(MemdynError, match="has no model 'big'"):
        load_model(family, "big", device="cpu")
    with pytest.raises(MemdynError, match="fp16 is not supported on the CPU"):
        resolve_dtype("fp16", torch.device("cpu"))
    assert load_model(family, size.name, device="cpu", dtype="bf16").dtype == torch.bfloat16


def test_hub_family_offline_error_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    family = load_family("pythia-deduped")
    assert family.size("70m").path == "EleutherAI/pythia-70m-deduped"
    assert family.revision(family.size("70m"), None) == "step143000"
    with pytest.raises(MemdynError) as e:
        load_model(family, "70m", "step1000", device="cpu")
    msg = str(e.value)
    assert "EleutherAI/pythia-70m-deduped" in msg and "offline" in msg and "\n" not in msg


def test_reference_model_loads_a_directory_and_says_what_is_missing(micro_family, tmp_path, monkeypatch):
    """Unintended memorization and the reference attack load their reference the way load_model
    loads a target: the same one-line errors for a hub id offline and for a directory with no model."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    family = load_family(micro_family)
    path = micro_family / "models" / family.sizes[0].name / "step200"
    model = load_reference_model(str(path), torch.device("cpu"))
    assert not model.training and model.config.model_type == "gpt_neox"
    # worker processes name the device; bf16 as `memdyn membership --dtype bf16` asks
    assert next(load_reference_model(str(path), "cpu", "bf16").parameters()).dtype == torch.bfloat16
    with pytest.raises(MemdynError) as e:
        load_reference_model("EleutherAI/pythia-70m-deduped", torch.device("cpu"))
    msg = str(e.value)
    assert msg.startswith("reference model 'EleutherAI/pythia-70m-deduped'") and "offline" in msg and "\n" not in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemdynError, match="not a loadable model directory"):
        load_reference_model(str(tmp_path / "empty"), torch.device("cpu"))


def test_explicit_model_paths(micro_family):
    path = micro_family / "models" / load_family(micro_family).sizes[0].name / "step200"
    family = load_family(str(path))
    assert family.kind == "models"
    model = load_model(family, family.sizes[0].name, device="cpu")
    assert model.config.model_type == "gpt_neox"
    with pytest.raises(MemdynError, match="unknown family"):
        load_family("no-such-family")


def test_world_contract(micro_family):
    """Duplicated documents, one pass, canaries at their recorded places and nowhere else."""
    import numpy as np

    from dynamics.family.world import load_canaries, load_canary_words, load_documents, load_samples

    family = load_family(micro_family)
    manifest = read_json(micro_family / "family.json")
    p = PRESETS["micro"]
    assert manifest["canaries"] == "canaries.parquet" and manifest["world"]["duplication"]["max_copies"] == p.duplication.max_copies
    docs, samples, canaries = load_documents(family), load_samples(family), load_canaries(family)
    train_docs = docs[docs.split == "train"]
    assert (train_docs.copies == 1).mean() > 0.5 and train_docs.copies.max() >= 10  # mostly unique, a heavy tail
    train = samples.sort_values("sample_idx")
    assert (train.split == "train").all()
    assert len(train) == p.steps * p.batch_size == manifest["corpus"]["train_samples"]  # exactly one pass
    assert (train.step == train.sample_idx // p.batch_size).all()
    copies = docs.set_index("doc_id").copies
    assert all(m == copies[list(d)].max() for m, d in zip(train.max_doc_copies, train.doc_ids))
    assert {"canary_id", "kind", "text", "tokens", "count", "insert", "steps", "sample_idx", "offsets",
            "length", "space_size_log2"} <= set(canaries.columns)
    assert sorted(canaries["count"].unique()) == list(p.canaries.counts) and set(canaries.kind) == {"tokens", "words"}
    words = load_canary_words(family)
    data = IndexedDataset(micro_family / "data" / "train").batch(0, len(train))
    other = np.concatenate([IndexedDataset(micro_family / "data" / n).tokens() for n in ("heldout", "reference")])
    on_rows = {i: set(ids) for i, ids in zip(train.sample_idx, train.canary_ids) if len(ids)}
    for c in canaries.itertuples():
        tokens = list(c.tokens)
        if c.kind == "words":
            assert set(c.text.split(" ")) <= set(words) and len(c.text.split(" ")) == c.length
        assert len(c.sample_idx) == c.count and len(tokens) >= p.canaries.length
        third = ("early", "middle", "late").index(c.insert)
        for row, off, step in zip(c.sample_idx, c.offsets, c.steps):
            assert data[row, off : off + len(tokens)].tolist() == tokens and data[row, off - 1] == 0
            assert step == row // p.batch_size and third * p.steps // 3 <= step < (third + 1) * p.steps // 3
            assert c.canary_id in on_rows[row]
        head = np.lib.stride_tricks.sliding_window_view(other, 8)
        assert not (head == np.asarray(tokens[:8])).all(1).any()  # never in held-out or reference data
    assert sum(len(v) for v in on_rows.values()) == canaries["count"].sum()
    # the held-out split is filled from documents beyond the world's, which no model trains on
    held_docs = set(docs.name[docs.split == "heldout"])
    assert manifest["corpus"]["heldout_samples"] == p.heldout_samples == len(IndexedDataset(micro_family / "data" / "heldout"))
    assert not held_docs & set(docs.name[docs.split == "train"])
    assert not held_docs & set(read_json(micro_family / "data" / "reference.json")["reference_docs"])
    assert manifest["corpus"]["documents"] == len(docs)


def test_old_family_layout_loads_and_names_the_rebuild(micro_family, tmp_path):
    import json
    import shutil

    from dynamics.family.world import load_canaries, load_documents

    old = tmp_path / "old"
    shutil.copytree(micro_family, old, ignore=shutil.ignore_patterns("models", "references"))
    manifest = json.loads((old / "family.json").read_text())
    for key in ("world", "canaries"):
        manifest.pop(key)
    (old / "family.json").write_text(json.dumps(manifest))
    (old / "canaries.parquet").unlink()
    family = load_family(old)
    assert family.size_names == load_family(micro_family).size_names  # everything else still loads
    for loader in (load_documents, load_canaries):
        with pytest.raises(MemdynError, match=r"before memdyn recorded duplicate counts and canaries: rebuild it with "
                                              r"`memdyn family train --preset micro --out NEW_DIR`") as e:
            loader(family)
        assert "\n" not in str(e.value)


def test_bad_world_settings_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    import dataclasses

    from dynamics.corpus.world import CanarySettings
    from dynamics.family import presets

    micro = PRESETS["micro"]
    for canaries, message in ((CanarySettings(counts=(1,), length=40), "canaries of 40 tokens do not fit samples of 33 tokens"),
                              (CanarySettings(counts=(64, 128), length=12),
                               "the early canaries need 384 copies but the early third of training has only 264 samples"),
                              (CanarySettings(counts=(1,), length=12, extra=(("late", 300),)),
                               "the late canaries need 602 copies but the late third of training has only 268 samples")):
        monkeypatch.setitem(presets.PRESETS, "micro", dataclasses.replace(micro, canaries=canaries))
        with pytest.raises(MemdynError, match=message):
            train_family("micro", tmp_path / "w")
        assert not (tmp_path / "w").exists()
    monkeypatch.setitem(presets.PRESETS, "micro", dataclasses.replace(micro, heldout_samples=0))
    with pytest.raises(MemdynError, match="heldout_samples must be None or an integer >= 2, got 0"):
        train_family("micro", tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_reference_is_one_model_on_unused_documents_and_beats_unigram(micro_family, tmp_path):
    """The embedded world's reference: one model trained on documents the world does not use; on
    the members it needs fewer bits than the training tokens' unigram distribution, on average."""
    import shutil

    import numpy as np
    import pandas as pd

    from dynamics.capacity.text import text_capacity
    from dynamics.family.train import train_references

    fam_dir = tmp_path / "fam"
    shutil.copytree(micro_family, fam_dir)
    family = train_references(load_family(fam_dir), device="cpu")
    assert len(set(family.references["sizes"].values())) == 1 and family.references["steps"] == 200
    record = read_json(fam_dir / "data" / "reference.json")
    world_docs = set(pd.read_parquet(fam_dir / "data" / "documents.parquet").name)
    assert record["reference_docs"] and world_docs.isdisjoint(record["reference_docs"])
    assert len(record["members"]) == PRESETS["micro"].members
    def rows(name):
        ds = IndexedDataset(fam_dir / "data" / name)
        return {tuple(r) for r in ds.batch(0, len(ds)).tolist()}

    assert rows("reference").isdisjoint(rows("train"))  # not even a near-copy of a training sample
    table = text_capacity(family, tmp_path / "cap", models=family.size_names[-1:], device="cpu")
    row = table.iloc[0]
    assert row.mean_bits_reference < row.mean_bits_baseline
    assert 0 <= row.share_reference_above_unigram < 0.5
    samples = pd.read_parquet(tmp_path / "cap" / "text_samples.parquet")
    assert row.share_reference_above_unigram == np.mean(samples.bits_reference > samples.bits_baseline)


def test_splits_by_document_keep_every_copy_of_a_document_on_one_side(micro_family):
    """Duplicated documents are shuffled into the stream, so a sample's documents are its doc_ids,
    not the range first_doc..last_doc; predictor splits and folds must use them."""
    import numpy as np

    from predictor.data import fold_splits, sample_documents, split_by_document

    family = load_family(micro_family)
    docs = sample_documents(family, np.arange(PRESETS["micro"].steps * PRESETS["micro"].batch_size))
    assert "doc_ids" in docs
    ids = [set(d) for d in docs.doc_ids]
    train, test, _ = split_by_document(docs, seed=0)
    assert len(test) and set().union(*(ids[i] for i in train)).isdisjoint(set().union(*(ids[i] for i in test)))
    for tr, te in fold_splits(docs, folds=3, seed=0):
        assert len(te) and set().union(*(ids[i] for i in tr)).isdisjoint(set().union(*(ids[i] for i in te)))
