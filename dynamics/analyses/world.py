"""The embedded world's manifests as the analyses read them, through dynamics.family.world's
loaders (which raise a one-line MemdynError naming the rebuild command for a family directory of
the old layout, before any work):

  <family>/data/samples.parquet    per sample: split, sample_idx, max_doc_copies, canary_ids, step, ...
  <family>/canaries.parquet        per canary: canary_id, kind, text, tokens, count, insert, steps, ...
  <family>/canary_words.json       the word canaries' alphabet
"""

from __future__ import annotations

import pandas as pd

from dynamics.errors import MemdynError
from dynamics.family.spec import FamilySpec


def train_samples(family: FamilySpec) -> pd.DataFrame:
    """Training samples indexed by sample_idx, with max_doc_copies (and canary_ids)."""
    from dynamics.family.world import load_samples, rebuild_hint

    t = load_samples(family)
    if "max_doc_copies" not in t:
        raise MemdynError(f"{family.root}/data/samples.parquet has no max_doc_copies (old layout): {rebuild_hint(family)}")
    return t.sort_index()


def canaries(family: FamilySpec) -> pd.DataFrame:
    from dynamics.family.world import load_canaries, rebuild_hint

    t = load_canaries(family)
    if t.empty:
        raise MemdynError(f"family {family.name!r} lists no canaries: {rebuild_hint(family)} with a preset that inserts canaries")
    return t.sort_values("canary_id", ignore_index=True)


def canary_words(family: FamilySpec) -> list[str]:
    from dynamics.family.world import load_canary_words

    words = load_canary_words(family)
    return list(words["words"] if isinstance(words, dict) else words)
