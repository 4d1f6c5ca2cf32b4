import json

import numpy as np
import pandas as pd
import pytest

from dynamics.corpus import megatron
from dynamics.corpus.packing import pack_documents, select_documents
from dynamics.corpus.sources import Document, content_hash, documents, parse_source
from dynamics.corpus.tokenizer import train_tokenizer
from dynamics.corpus.world import CanarySettings, Duplication, check_collisions, make_canaries, place_canaries, plan_documents
from dynamics.errors import MemdynError


def test_stdlib_source_is_deterministic_and_excludes_tests():
    docs = list(documents(parse_source("stdlib")))
    names = [d.name for d in docs]
    assert names == [d.name for d in documents(parse_source("stdlib"))]
    assert {d.domain for d in docs} == {"code", "docs"}
    assert not any("/test/" in n or "/tests/" in n or n.split("/")[-1].startswith("test_") for n in names)
    assert any(n == "stdlib/json/decoder.py" for n in names)
    assert any(n.startswith("pydoc/") for n in names)


def test_dir_and_jsonl_sources(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("hello world")
    (tmp_path / "y.txt").write_text("top level")
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00")
    docs = list(documents(parse_source(str(tmp_path))))
    assert [(d.name, d.domain) for d in docs] == [("a/x.txt", "a"), ("y.txt", "text")]

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "one", "domain": "web"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    with pytest.raises(MemdynError, match="c.jsonl:3: no 'text' field"):
        list(documents(parse_source(str(path))))
    path.write_text(json.dumps({"text": "one", "domain": "web"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    docs = list(documents(parse_source(f"jsonl:{path}")))
    assert [(d.name, d.text, d.domain) for d in docs] == [("c.jsonl:1", "one", "web"), ("c.jsonl:3", "two", "text")]
    path.write_text("{not json\n")
    with pytest.raises(MemdynError, match="not valid JSON"):
        list(documents(parse_source(str(path))))


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown corpus"), ("dir:/does/not/exist", "does not exist"), ("jsonl:/no.jsonl", "does not exist"),
    ("megatron:/no/data", "file not found"),
])
def test_bad_sources(spec, message):
    with pytest.raises(MemdynError, match=message):
        parse_source(spec)


def test_hf_source_without_cache_is_a_clear_error():
    with pytest.raises(MemdynError, match="datasets|could not be loaded"):
        list(documents(parse_source("hf:surely-not-a-cached-dataset-xyz")))


def test_content_hash_changes_with_content():
    a = [Document("a", "text", "code")]
    assert content_hash(a) == content_hash([Document("a", "text", "code")])
    assert content_hash(a) != content_hash([Document("a", "texT", "code")])
    assert content_hash(a) != content_hash([Document("a", "text", "docs")])


def test_tokenizer_special_ids_and_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    texts = [d.text for d in select_documents(list(documents(parse_source("stdlib"))), 0, 20_000, 2_000)]
    train_tokenizer(texts, 300, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|padding|>"]) == [0, 1]
    assert tok.eos_token_id == 0 and tok.pad_token_id == 1
    ids = tok("def f(x):\n    return x  # ünïcode", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "def f(x):\n    return x  # ünïcode"


def _doc_tokens(n_docs: int, rng, width: int = 1000) -> list[np.ndarray]:
    """Documents whose tokens identify them: document d uses only ids in [2 + d*width, 2 + (d+1)*width)."""
    return [2 + d * width + rng.integers(0, width, size=rng.integers(5, 60)) for d in range(n_docs)]


def test_packing_reconstructs_documents(tmp_path):
    rng = np.random.default_rng(0)
    docs = [Document(f"d{i}", "", "code" if i % 3 else "docs") for i in range(40)]
    tokens = _doc_tokens(len(docs), rng)
    dup = Duplication(share=0.3, max_copies=20, doc_tokens=30)
    packed = pack_documents(tokens, docs, tmp_path, seq_length=15, seed=1, heldout_fraction=0.25, dtype=np.uint16,
                            duplication=dup, batch_size=4)
    meta = pd.read_parquet(tmp_path / "samples.parquet")
    doc_table = pd.read_parquet(tmp_path / "documents.parquet").set_index("doc_id")
    train = megatron.IndexedDataset(tmp_path / "train")
    assert train.fixed_length() == 16 and len(train) == packed.n_train
    held_docs = set(doc_table.index[doc_table.split == "heldout"])
    train_meta = meta[meta.split == "train"].sort_values("sample_idx")
    assert (train_meta.step == train_meta.sample_idx // 4).all()
    # every training sample holds exactly the documents it lists, none held out, with their copies
    seen = np.zeros(len(docs), dtype=np.int64)
    for row, sample in zip(train_meta.itertuples(), train.batch(0, len(train))):
        owners = (sample[sample != 0].astype(np.int64) - 2) // 1000
        assert set(owners) <= set(row.doc_ids) and not held_docs & set(row.doc_ids)
        assert owners[0] == row.first_doc if sample[0] else row.first_doc in row.doc_ids
        assert row.max_doc_copies == doc_table.loc[list(row.doc_ids), "copies"].max()
        assert list(row.canary_ids) == []
        np.add.at(seen, owners, 1)
    train_docs = doc_table[doc_table.split == "train"]
    n_tok = train_docs.n_tokens - 1  # without the end-of-document token
    # each copy counted once: all of its tokens are in the stream, except for a copy cut at the end
    assert ((seen[train_docs.index] <= train_docs.copies * n_tok) & (seen[train_docs.index] > (train_docs.copies - 1) * n_tok)).all()
    assert (train_docs.copies > 1).any() and (train_docs.copies == 1).any()
    assert (doc_table.loc[doc_table.copies > 1, "n_tokens"] <= 31).all()  # duplicated documents are cut
    assert set(meta.domain) <= {"code", "docs"}
    # same seed, same files
    pack_documents(tokens, docs, tmp_path / "again", 15, 1, 0.25, np.uint16, duplication=dup, batch_size=4)
    assert (tmp_path / "train.bin").read_bytes() == (tmp_path / "again" / "train.bin").read_bytes()


def test_stream_is_cut_at_one_pass_and_leaves_later_documents_unused(tmp_path):
    rng = np.random.default_rng(1)
    docs = [Document(f"d{i}", "", "code") for i in range(60)]
    packed = pack_documents(_doc_tokens(60, rng), docs, tmp_path, 15, 0, 0.0, np.uint16, target_samples=20, batch_size=4)
    assert packed.n_train == 20 and packed.unused and max(packed.unused) == 59
    assert set(pd.read_parquet(tmp_path / "documents.parquet").doc_id).isdisjoint(packed.unused)


def test_heldout_split_is_filled_from_the_pool_without_changing_training(tmp_path):
    rng = np.random.default_rng(2)
    tokens = _doc_tokens(70, rng)
    docs = [Document(f"d{i}", "", "code") for i in range(70)]
    dup = Duplication(share=0.3, max_copies=20, doc_tokens=30)
    plain = pack_documents(tokens[:40], docs[:40], tmp_path / "plain", 15, 0, 0.2, np.uint16, duplication=dup,
                           target_samples=20, batch_size=4)
    pool = (docs[40:], tokens[40:])
    packed = pack_documents(tokens[:40], docs[:40], tmp_path / "full", 15, 0, 0.2, np.uint16, duplication=dup,
                            target_samples=20, batch_size=4, heldout_pool=pool, heldout_samples=80)
    # the training stream and its documents are those without the pool; the held-out split is filled to 80
    assert (tmp_path / "plain" / "train.bin").read_bytes() == (tmp_path / "full" / "train.bin").read_bytes()
    assert plain.unused == packed.unused and plain.n_heldout < packed.n_heldout == 80
    table = pd.read_parquet(tmp_path / "full" / "documents.parquet")
    added = table[table.doc_id >= 40]
    assert len(added) and (added.split == "heldout").all()
    assert list(added.name) == [d.name for d in docs[40 : 40 + len(added)]]  # taken in order, only as many as needed
    assert len(added) < len(pool[0]) and packed.n_documents == len(table)
    held = megatron.IndexedDataset(tmp_path / "full" / "heldout")
    owners = (held.tokens()[held.tokens() != 0].astype(np.int64) - 2) // 1000
    assert set(owners) <= set(table.doc_id[table.split == "heldout"]) and set(owners) & set(added.doc_id)
    # held-out documents are duplicated as training ones are, and each copy is counted
    held_docs = table[table.split == "heldout"].set_index("doc_id")
    seen = np.bincount(owners, minlength=held_docs.index.max() + 1)[held_docs.index]
    n_tok = held_docs.n_tokens - 1
    assert ((seen <= held_docs.copies * n_tok) & (seen > (held_docs.copies - 1) * n_tok)).all()
    assert (held_docs.copies > 1).any() and (held_docs.loc[held_docs.copies > 1, "n_tokens"] <= 31).all()
    # a held-out split that already holds more is cut to heldout_samples
    few = pack_documents(tokens[:40], docs[:40], tmp_path / "few", 15, 0, 0.2, np.uint16, target_samples=20, batch_size=4,
                         heldout_pool=pool, heldout_samples=2)
    assert few.n_heldout == 2


def test_duplicate_counts_are_log_uniform_and_seeded():
    lengths = np.full(20_000, 10)
    split, copies = plan_documents(lengths, Duplication(share=0.2, max_copies=100), 0.1, None, np.random.default_rng(0))
    dup = copies[(split == "train") & (copies > 1)]
    assert 0.17 < len(dup) / (split == "train").sum() < 0.23 and dup.min() == 2 and dup.max() == 100
    # log-uniform: as many counts in [2, 10) as in [20, 100)
    assert abs(((dup >= 2) & (dup < 10)).mean() - ((dup >= 20) & (dup < 100)).mean()) < 0.03
    held = copies[split == "heldout"]  # duplicated by the same rule, in a stream of their own
    assert 0.17 < (held > 1).mean() < 0.23 and held.max() <= 100
    again = plan_documents(lengths, Duplication(share=0.2, max_copies=100), 0.1, None, np.random.default_rng(0))
    assert np.array_equal(again[1], copies)


class _Tok:
    """The two things make_canaries needs from a tokenizer: its size and a word encoder."""

    all_special_ids = [0, 1]

    def __len__(self):
        return 50

    def decode(self, tokens):
        return " ".join(map(str, tokens))

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + sum(map(ord, w)) % 48 for w in text.split(" ")]}


def test_canaries_are_placed_in_their_third_with_end_of_document_around():
    settings = CanarySettings(counts=(1, 3, 8), length=6)
    canaries = make_canaries(settings, _Tok(), ["alpha", "beta", "gamma", "delta"], seed=0)
    assert len(canaries) == 2 * 3 * 3 and {c["kind"] for c in canaries} == {"tokens", "words"}
    tok = canaries[0]
    assert tok["kind"] == "tokens" and len(tok["tokens"]) == 6 and min(tok["tokens"]) >= 2
    assert tok["space_size_log2"] == pytest.approx(6 * np.log2(48))
    word = next(c for c in canaries if c["kind"] == "words")
    assert word["space_size_log2"] == pytest.approx(word["length"] * 2.0) and len(word["tokens"]) >= 6
    samples = np.full((120, 16), 7, dtype=np.uint16)  # 30 steps of 4
    per_sample = place_canaries(samples, canaries, 4, np.random.default_rng(0))
    assert all(len(ids) <= 1 for ids in per_sample)
    for c in canaries:
        assert len(c["sample_idx"]) == c["count"] == len(set(c["sample_idx"]))
        third = ("early", "middle", "late").index(c["insert"])
        assert all(third * 10 <= s < (third + 1) * 10 for s in c["steps"])
        for row, off, step in zip(c["sample_idx"], c["offsets"], c["steps"]):
            assert step == row // 4 and c["canary_id"] in per_sample[row]
            assert samples[row, off : off + len(c["tokens"])].tolist() == c["tokens"]
            assert samples[row, off - 1] == 0 and (off + len(c["tokens"]) == 16 or samples[row, off + len(c["tokens"])] == 0)


def test_extra_canaries_follow_the_grid_and_are_checked():
    """`extra` adds canaries of every kind at chosen (insert, count) cells after the grid."""
    settings = CanarySettings(counts=(1, 3), length=6, kinds=("tokens",), extra=(("late", 3), ("late", 3)))
    canaries = make_canaries(settings, _Tok(), [], seed=0)
    assert [(c["count"], c["insert"]) for c in canaries] == [
        (1, "early"), (1, "middle"), (1, "late"), (3, "early"), (3, "middle"), (3, "late"), (3, "late"), (3, "late")]
    assert len({tuple(c["tokens"]) for c in canaries}) == len(canaries) and [c["canary_id"] for c in canaries] == list(range(8))
    with pytest.raises(MemdynError, match="canary inserts must be among"):
        CanarySettings(counts=(1,), extra=(("last", 2),)).check(64)
    with pytest.raises(MemdynError, match="counts and replicates must be >= 1"):
        CanarySettings(counts=(1,), extra=(("late", 0),)).check(64)
    with pytest.raises(MemdynError, match="canaries of 40 tokens do not fit"):
        CanarySettings(extra=(("late", 2),), length=40).check(33)


def test_bad_canaries_are_refused():
    with pytest.raises(MemdynError, match="canaries of 40 tokens do not fit samples of 33"):
        CanarySettings(counts=(1,), length=40).check(33)
    canaries = make_canaries(CanarySettings(counts=(16,), length=6, kinds=("tokens",)), _Tok(), [], seed=0)
    with pytest.raises(MemdynError, match="early canaries need 16 copies but the early third of training has only 12"):
        place_canaries(np.zeros((40, 16), np.uint16), canaries, 4, np.random.default_rng(0))
    corpus = np.arange(2, 40)
    clash = [{"canary_id": 3, "kind": "words", "text": "x", "tokens": corpus[5:25].tolist()}]
    with pytest.raises(MemdynError, match="canary 3 .* collides with corpus text"):
        check_collisions(clash, [np.arange(100, 200), corpus])
    check_collisions([{**clash[0], "tokens": [5, 4, 3]}], [corpus])  # not in the corpus: accepted


def test_empty_corpus_is_refused(tmp_path):
    with pytest.raises(MemdynError, match="too small"):
        pack_documents([np.array([5, 6])], [Document("d", "", "x")], tmp_path, 32, 0, 0.0, np.uint16)
