"""Render a Document as Markdown; figures are written as PNG files beside it (figures/<stem>-<name>.png)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dynamics.files import atomic_path
from dynamics.report.document import Document, Figure, Samples, Table, Text, cell_text


def _cell(v) -> str:
    return cell_text(v).replace("|", "\\|").replace("\n", "⏎")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured pipe table (pandas.to_markdown would need tabulate)."""
    lines = ["| " + " | ".join(map(_cell, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def render_markdown(doc: Document, figure_paths: dict[str, str]) -> str:
    out = [f"# {doc.title}", ""]
    if doc.links:
        out += [" · ".join(f"[{text}]({path.replace('.html', '.md')})" for text, path in doc.links), ""]
    out += [f"- {s}" for s in doc.summary] + [""]
    for section in doc.sections:
        out += [f"## {section.title}", ""]
        for b in section.blocks:
            if isinstance(b, Figure):
                out += [f"![{b.name}]({figure_paths[b.name]})", "", f"*{b.caption}*", ""]
            elif isinstance(b, Samples):
                out += [f"*{b.caption}*", "", markdown_table(b.frame), ""]
            elif isinstance(b, Table):
                out += [markdown_table(b.frame), "", f"*{b.caption}*", ""]
            elif isinstance(b, Text):
                out += [b.text, ""]
    return "\n".join(out)


def write_markdown(doc: Document, path: Path) -> Path:
    paths = {}
    for fig in doc.figures():
        rel = f"figures/{path.stem}-{fig.name}.png"
        (path.parent / "figures").mkdir(parents=True, exist_ok=True)
        with atomic_path(path.parent / rel) as tmp:
            Path(tmp).write_bytes(fig.png)
        paths[fig.name] = rel
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_markdown(doc, paths), encoding="utf-8")
    return path
