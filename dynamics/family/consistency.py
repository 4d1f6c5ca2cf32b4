"""A local family's tokenizer, models and data must agree, checked when the family is opened: a
swapped tokenizer or data tokenized with another vocabulary would otherwise be scored without a
word. The checks read only small files (each size's final config.json, the tokenizer's JSON files)
and a strided sample of the data's tokens, so opening a family stays fast. Hub families are checked
when their models load (dynamics.family.load.check_vocab)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dynamics.errors import MemdynError

DATA_SAMPLE_TOKENS = 1 << 18  # tokens read from the data, in 64 evenly spaced slices


def _json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except OSError as e:
        raise MemdynError(f"{what}: cannot read {path} ({e.strerror}); restore it or retrain the family") from None
    except ValueError as e:
        raise MemdynError(f"{what}: {path} is truncated or not JSON ({e}); restore it or retrain the family") from None
    if not isinstance(obj, dict):
        raise MemdynError(f"{what}: {path} is not a JSON object; restore it or retrain the family")
    return obj


def tokenizer_ids(tokenizer_dir: Path) -> tuple[int, dict[str, int]] | None:
    """(number of token ids, {special role: id}) of a tokenizer saved by `tokenizers`/transformers,
    or None when it is not in that format (nothing to check cheaply)."""
    file = tokenizer_dir / "tokenizer.json"
    if not file.is_file():
        return None
    tok = _json(file, f"tokenizer {tokenizer_dir}")
    vocab = (tok.get("model") or {}).get("vocab")
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab or [])))
    added = {t["content"]: t["id"] for t in tok.get("added_tokens") or [] if "content" in t and "id" in t}
    ids += list(added.values())
    if not ids:
        return None
    config = tokenizer_dir / "tokenizer_config.json"
    roles = {}
    if config.is_file():
        cfg = _json(config, f"tokenizer {tokenizer_dir}")
        for role in ("eos", "pad", "bos"):
            token = cfg.get(f"{role}_token")
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str) and token in added:
                roles[role] = added[token]
    return max(ids) + 1, roles


def sampled_max_token(prefix: str, dtype: str | None = None) -> tuple[int, str]:
    """(largest token id in a strided sample of the data, the data's .bin path); refuses data of
    another dtype than the family recorded."""
    from dynamics.corpus.megatron import IndexedDataset

    ds = IndexedDataset(prefix)
    if dtype and str(ds.dtype) != dtype:
        raise MemdynError(f"{ds.bin_path} holds {ds.dtype} tokens but the family recorded {dtype}; use the family's own data")
    if ds.n_tokens == 0:
        return -1, str(ds.bin_path)
    tokens = ds.tokens()
    span = max(1, DATA_SAMPLE_TOKENS // 64)
    starts = np.unique(np.linspace(0, max(0, ds.n_tokens - span), 64).astype(np.int64))
    return int(max(tokens[s : s + span].max() for s in starts)), str(ds.bin_path)


def check_family(family) -> None:
    """Refuse a local family whose tokenizer, models and data disagree (see the module docstring)."""
    root = family.root
    tok = tokenizer_ids(root / family.tokenizer)
    fix = "use the tokenizer, models and data of one family (or retrain it with `memdyn family train`)"
    smallest = None
    for size in family.sizes:
        if not size.final:
            continue
        config_file = root / size.path / size.final / "config.json"
        if not config_file.is_file():
            continue  # an unfinished family: the missing checkpoint is reported when it is needed
        config = _json(config_file, f"model {size.name!r}")
        vocab = config.get("vocab_size")
        if not isinstance(vocab, int):
            continue
        smallest = vocab if smallest is None else min(smallest, vocab)
        if tok is None:
            continue
        n_tok, roles = tok
        if n_tok > vocab:
            raise MemdynError(f"family {root}: the tokenizer has {n_tok} token ids but model {size.name!r} embeds only "
                              f"{vocab}; {fix}")
        for role, token_id in roles.items():
            expected = config.get(f"{role}_token_id")
            if isinstance(expected, int) and expected != token_id:
                raise MemdynError(f"family {root}: the tokenizer's {role} token is id {token_id} but model {size.name!r} "
                                  f"uses {expected}; {fix}")
    if smallest is not None and family.data and family.data.prefix:
        try:
            top, where = sampled_max_token(family.data.prefix, family.data.dtype)
        except OSError:
            return  # data missing or unreadable: reported by the command that reads it
        if top >= smallest:
            raise MemdynError(f"family {root}: {where} holds token id {top} but the smallest model embeds only {smallest} "
                              f"ids (the data was tokenized with another tokenizer); {fix}")
