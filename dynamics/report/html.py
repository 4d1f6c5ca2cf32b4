"""Render a Document as one self-contained HTML file: figures inline as base64 PNG, no external files."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

import pandas as pd

from dynamics.files import atomic_path
from dynamics.report.document import Document, Figure, Samples, Table, Text, cell_text

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .caption { font-size: 0.92em; color: #333; margin-top: 0.4em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
td.text { font-family: monospace; white-space: pre-wrap; max-width: 28em; }
ul.summary li { margin: 0.3em 0; } nav a { margin-right: 1em; }
"""


def _table(frame: pd.DataFrame, text_columns=()) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for col, v in zip(frame.columns, row):
            cls = ' class="text"' if col in text_columns else ""
            cells.append(f"<td{cls}>{escape(cell_text(v))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _block(block) -> str:
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (f'<figure><img alt="{escape(block.name)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{escape(block.caption)}</figcaption></figure>")
    if isinstance(block, Samples):
        return (f'<p class="caption">{escape(block.caption)}</p>'
                + _table(block.frame, text_columns=("context", "continuation", "generated")))
    if isinstance(block, Table):
        return f'{_table(block.frame)}<p class="caption">{escape(block.caption)}</p>'
    if isinstance(block, Text):
        return f"<p>{escape(block.text)}</p>"
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(doc: Document) -> str:
    nav = "".join(f'<a href="{escape(path)}">{escape(text)}</a>' for text, path in doc.links)
    summary = "".join(f"<li>{escape(s)}</li>" for s in doc.summary)
    body = "".join(f"<section><h2>{escape(s.title)}</h2>{''.join(_block(b) for b in s.blocks)}</section>"
                   for s in doc.sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(doc.title)}</title>'
            f"<style>{STYLE}</style></head><body><nav>{nav}</nav><h1>{escape(doc.title)}</h1>"
            f'<ul class="summary">{summary}</ul>{body}</body></html>\n')


def write_html(doc: Document, path: Path) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_html(doc), encoding="utf-8")
    return path
