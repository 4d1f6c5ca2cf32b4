"""Corpus sources. Each yields `Document`s in a deterministic order.

A source is named by a string, as on the command line:
  stdlib                 the running Python's standard-library sources (no test suites) and the
                         pydoc topics text; domains `code` and `docs`
  dir:PATH  | PATH/      every UTF-8 text file below a directory; domain = its top-level folder
  jsonl:PATH | *.jsonl   one JSON object per line with a `text` field (and optional `domain`)
  hf:NAME[:SPLIT]        a Hugging Face `datasets` dataset that is local or cached
  megatron:PREFIX | *.bin | *.idx   an already tokenized Megatron dataset (e.g. Pythia's Pile)
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dynamics.errors import MemdynError


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    domain: str


@dataclass(frozen=True)
class Source:
    kind: str  # stdlib | dir | jsonl | hf | megatron
    location: str = ""
    text_field: str = "text"

    @property
    def tokenized(self) -> bool:
        return self.kind == "megatron"

    def describe(self) -> str:
        return self.kind if not self.location else f"{self.kind}:{self.location}"


def parse_source(spec: str, text_field: str = "text") -> Source:
    """Turn a command-line corpus name into a `Source`, checking that it exists."""
    kind, _, location = spec.partition(":")
    if spec == "stdlib":
        return Source("stdlib")
    if kind not in {"dir", "jsonl", "hf", "megatron"}:  # a bare path: guess the kind from it
        location, path = spec, Path(spec)
        if path.is_dir():
            kind = "dir"
        elif path.suffix == ".jsonl":
            kind = "jsonl"
        elif path.suffix in {".bin", ".idx"}:
            kind = "megatron"
        else:
            raise MemdynError(
                f"unknown corpus {spec!r}: use stdlib, a directory of text files, a .jsonl file, "
                "hf:NAME[:SPLIT] or a Megatron .bin/.idx prefix"
            )
    if not location:
        raise MemdynError(f"corpus {spec!r} names no location (e.g. {kind}:PATH)")
    if kind == "dir" and not Path(location).is_dir():
        raise MemdynError(f"corpus directory {location} does not exist")
    if kind == "jsonl" and not Path(location).is_file():
        raise MemdynError(f"corpus file {location} does not exist")
    if kind == "megatron":
        from dynamics.corpus.megatron import IndexedDataset

        IndexedDataset(location)  # fails now, with the file named, if the pair is corrupt
    return Source(kind, location, text_field)


def _stdlib_documents() -> Iterator[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    excluded = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    files = sorted(
        p for p in root.rglob("*.py")
        if not excluded.intersection(p.relative_to(root).parts) and not p.name.startswith("test_")
    )
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield Document(f"stdlib/{path.relative_to(root).as_posix()}", text, "code")
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"pydoc/{name}", topics[name], "docs")


def _dir_documents(root: Path) -> Iterator[Document]:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files are not text documents
        rel = path.relative_to(root)
        if text.strip():
            yield Document(rel.as_posix(), text, rel.parts[0] if len(rel.parts) > 1 else "text")


def _jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MemdynError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise MemdynError(f"{path}:{line_no}: no {text_field!r} field (choose it with --text-field)")
            domain = record.get("domain") or (record.get("meta") or {}).get("pile_set_name") or "text"
            yield Document(f"{path.name}:{line_no}", str(record[text_field]), str(domain))


def _hf_documents(location: str, text_field: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise MemdynError("corpus hf:... needs the `datasets` package: pip install 'memdyn[hf]'") from None
    name, _, split = location.partition(":")
    try:
        data = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # datasets raises many types for "not cached and offline"
        raise MemdynError(
            f"dataset {name!r} could not be loaded ({type(e).__name__}); it must be local or in the "
            "Hugging Face cache when offline: download it where the hub is reachable first"
        ) from None
    if text_field not in data.column_names:
        raise MemdynError(f"dataset {name!r} has no column {text_field!r} (columns: {data.column_names})")
    for i, record in enumerate(data):
        yield Document(f"{name}:{i}", str(record[text_field]), str(record.get("domain") or "text"))


def documents(source: Source) -> Iterator[Document]:
    """The documents of a text source, in a deterministic order."""
    if source.kind == "stdlib":
        return _stdlib_documents()
    if source.kind == "dir":
        return _dir_documents(Path(source.location))
    if source.kind == "jsonl":
        return _jsonl_documents(Path(source.location), source.text_field)
    if source.kind == "hf":
        return _hf_documents(source.location, source.text_field)
    raise MemdynError(f"corpus {source.describe()} is already tokenized; it has no text documents")


def content_hash(docs: list[Document]) -> str:
    """sha256 over names, domains and texts: two families with equal hashes saw the same corpus."""
    h = hashlib.sha256()
    for doc in docs:
        for part in (doc.name, doc.domain, doc.text):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))
