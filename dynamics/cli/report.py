"""`memdyn report`: the family overview and one report per model size."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def report(
    workdir: Path = typer.Option(Path("runs"), help="Work directory of a `memdyn run`."),
    out: Path = typer.Option(Path("reports"), help="Reports go to OUT/<family>/ (index.html, <size>/report.html)."),
    preset: Optional[str] = typer.Option(None, help="Refuse a work directory of another preset (default: any)."),
):
    """Family overview and one report per model size (HTML, self-contained, and Markdown)."""
    from dynamics.report import write_reports

    paths = write_reports(workdir, out, preset)
    print(f"family overview: {paths[0]}")
    for path in paths[1:]:
        print(f"size report:     {path}")
