import json

import numpy as np
import pandas as pd
import pytest

from dynamics.corpus import megatron
from dynamics.corpus.packing import pack_documents, select_documents
from dynamics.corpus.sources import Document, content_hash, documents, parse_source
from dynamics.corpus.tokenizer import train_tokenizer
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


def test_packing_reconstructs_documents(tmp_path):
    rng = np.random.default_rng(0)
    docs = [Document(f"d{i}", "", "code" if i % 3 else "docs") for i in range(40)]
    tokens = [rng.integers(2, 50, size=rng.integers(5, 60)) for _ in docs]
    packed = pack_documents(tokens, docs, tmp_path, seq_length=15, seed=1, heldout_fraction=0.25, dtype=np.uint16)
    meta = pd.read_parquet(tmp_path / "samples.parquet")
    doc_table = pd.read_parquet(tmp_path / "documents.parquet")
    train = megatron.IndexedDataset(tmp_path / "train")
    assert train.fixed_length() == 16 and len(train) == packed.n_train
    held_docs = set(doc_table.loc[doc_table.split == "heldout", "doc_id"])
    train_meta = meta[meta.split == "train"].sort_values("sample_idx")
    assert not held_docs & set(train_meta.first_doc) and not held_docs & set(train_meta.last_doc)
    # every training sample is a window of its documents' token stream, EOD-separated
    for row, sample in zip(train_meta.itertuples(), train.batch(0, len(train))):
        stream = np.concatenate([np.append(tokens[d], 0) for d in range(row.first_doc, row.last_doc + 1) if d not in held_docs])
        window = sample.tolist()
        assert any(stream[i : i + 16].tolist() == window for i in range(len(stream) - 15))
    assert set(meta.domain) <= {"code", "docs"}
    # same seed, same files
    pack_documents(tokens, docs, tmp_path / "again", 15, 1, 0.25, np.uint16)
    assert (tmp_path / "train.bin").read_bytes() == (tmp_path / "again" / "train.bin").read_bytes()


def test_empty_corpus_is_refused(tmp_path):
    with pytest.raises(MemdynError, match="too small"):
        pack_documents([np.array([5, 6])], [Document("d", "", "x")], tmp_path, 32, 0, 0.0, np.uint16)
