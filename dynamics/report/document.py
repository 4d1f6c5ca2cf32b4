"""The document model both renderers (html.py, markdown.py) share: sections of blocks."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def cell_text(v) -> str:
    """A table cell as a report shows it: a number to 4 significant digits, a missing or undefined
    value (a share of nothing, a baseline that did not run) as "-"."""
    if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


@dataclass
class Figure:
    name: str  # file stem, unique within a document
    png: bytes
    caption: str

    @classmethod
    def of(cls, name: str, fig, caption: str) -> "Figure":
        """Render a matplotlib Figure once to PNG bytes."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})  # the same bytes on every run
        return cls(name, buf.getvalue(), caption)


@dataclass
class Table:
    frame: pd.DataFrame
    caption: str


@dataclass
class Text:
    text: str


@dataclass
class Samples:
    """Decoded samples: rows with context, continuation, generated text plus scalar columns."""

    frame: pd.DataFrame
    caption: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)


@dataclass
class Document:
    title: str
    summary: list[str]  # headline findings, one sentence each
    sections: list[Section]
    links: list[tuple[str, str]] = field(default_factory=list)  # (text, relative path)

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def captions(self) -> list[str]:
        return [b.caption for s in self.sections for b in s.blocks if hasattr(b, "caption")]
