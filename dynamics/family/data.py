"""A family's training data as one handle, opened once and passed down: the packed samples
(Megatron .bin/.idx, in training order), their per-sample table (data/samples.parquet beside
them, when memdyn packed them) and the suffix-array n-gram index over their tokens, each loaded
on first use."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from dynamics.corpus.megatron import IndexedDataset
from dynamics.errors import MemdynError
from dynamics.family.spec import FamilySpec


@dataclass(eq=False)
class TrainingData:
    prefix: str
    ngram_dir: Path | None = None  # default: <prefix>.ngrams/ beside the data

    @cached_property
    def dataset(self) -> IndexedDataset:
        return IndexedDataset(self.prefix)

    @cached_property
    def samples(self) -> pd.DataFrame | None:
        """The rows of data/samples.parquet for these samples, indexed by sample_idx: memdyn packs
        data/train and data/heldout beside one table, whose `split` names the prefix (None for data
        memdyn did not pack, e.g. the pre-shuffled Pile)."""
        path = Path(self.prefix).parent / "samples.parquet"
        if not path.is_file():
            return None
        table = pd.read_parquet(path)
        table = table[table["split"] == Path(self.prefix).name]
        return table.set_index("sample_idx", drop=False).rename_axis(None) if len(table) else None

    @cached_property
    def canary_samples(self) -> np.ndarray | None:
        """sample_idx of the training samples that hold a canary copy, sorted (empty for a world
        without canaries); None for data memdyn did not pack."""
        if self.samples is None:
            return None
        if "canary_ids" not in self.samples:
            return np.empty(0, dtype=np.int64)
        return np.sort(self.samples.index[self.samples["canary_ids"].map(len) > 0].to_numpy(np.int64))

    def documents(self, sample_idx) -> np.ndarray:
        """The document each sample starts in (first_doc; the copies of a duplicated document share
        its id), the unit every bootstrap interval over these samples resamples (dynamics.bootstrap);
        the sample's own index where the data records no documents (data memdyn did not pack)."""
        sample_idx = np.asarray(sample_idx, dtype=np.int64)
        if self.samples is None or (self.samples["first_doc"] < 0).all():
            return sample_idx
        missing = np.setdiff1d(sample_idx, self.samples.index.to_numpy())
        if len(missing):
            raise MemdynError(f"the samples table beside {self.prefix} does not list samples {missing[:5].tolist()}; "
                              "were these scores computed on other data?")
        return self.samples["first_doc"].to_numpy(np.int64)[self.samples.index.get_indexer(sample_idx)]

    def domains(self) -> pd.Series | None:
        """sample_idx -> domain (None when the samples table has no domains)."""
        return self.samples["domain"] if self.samples is not None and "domain" in self.samples else None

    @cached_property
    def ngrams(self):
        """The n-gram index of the tokens: built beside the data if missing; refused if it was built
        over other data."""
        from dynamics.ngrams import build_for_dataset, default_index_dir, open_for_dataset

        index_dir = self.ngram_dir or default_index_dir(self.prefix)
        if not (index_dir / "manifest.json").is_file():
            return build_for_dataset(self.prefix, index_dir)
        return open_for_dataset(self.prefix, index_dir)


def training_data(family: FamilySpec, data: str | None = None, ngram_index: str | Path | None = None) -> TrainingData:
    """The handle of `data` (a Megatron prefix), else of the family's own training data."""
    prefix = data or (family.data.prefix if family.data else None)
    if not prefix:
        raise MemdynError(f"family {family.name!r} has no training data on record: pass --data PREFIX (a Megatron .bin/.idx)")
    return TrainingData(str(prefix), Path(ngram_index) if ngram_index else None)
