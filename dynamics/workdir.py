"""A `memdyn run` work directory as the report reads it: each stage checked, its tables loaded once.

Every stage the pipeline writes is required; a missing one is named with the command that produces
it. The capacity stage is optional (WORKDIR/capacity/text_capacity.parquet).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from dynamics.errors import MemdynError
from dynamics.family.presets import get_preset
from dynamics.family.spec import FamilySpec, load_family
from dynamics.files import read_json

CAPACITY_TABLE = "capacity/text_capacity.parquet"


def _stages(w: Path, preset: str) -> list[tuple[str, Path, str]]:
    """(stage, file that proves it finished, command that produces it)."""
    p = get_preset(preset)
    grid = f"--contexts {','.join(map(str, p.contexts))} --continuations {','.join(map(str, p.continuations))}"
    return [
        ("family", w / "family" / "family.json", f"memdyn family train --preset {preset} --out {w / 'family'}"),
        ("scores", w / "scores" / "_settings.json", f"memdyn score --family {w / 'family'} --out {w / 'scores'} {grid}"),
        ("scores_checkpoints", w / "scores_checkpoints" / "_settings.json", f"memdyn run --workdir {w} --preset {preset}"),
        ("dynamics", w / "dynamics" / "tables" / "curves.parquet",
         f"memdyn dynamics --family {w / 'family'} --scores {w / 'scores'} --out {w / 'dynamics'}"),
        ("predictor", w / "predictor" / "skipped.json", f"memdyn run --workdir {w} --preset {preset}"),
    ]


def check_workdir(workdir: str | Path, preset: str | None = None) -> str:
    """The run's preset; raises MemdynError naming the first missing stage and its command."""
    w = Path(workdir)
    if not (w / "run.json").is_file():
        raise MemdynError(f"{w} is not a memdyn work directory (no run.json); create it with `memdyn run --workdir {w}`")
    run = read_json(w / "run.json")
    if preset is not None and run.get("preset") != preset:
        raise MemdynError(f"{w} holds a run of preset {run.get('preset')!r}, not {preset!r}; "
                          f"use --preset {run.get('preset')} or another --workdir")
    for stage, proof, command in _stages(w, run["preset"]):
        if not proof.is_file():
            raise MemdynError(f"stage {stage} is missing in {w} (no {proof.relative_to(w)}); produce it with `{command}`")
    family_preset = read_json(w / "family" / "family.json").get("preset")
    if family_preset not in (None, run["preset"]):
        raise MemdynError(f"{w}/family was trained with preset {family_preset!r} but run.json says {run['preset']!r}; "
                          f"use a fresh --workdir")
    return run["preset"]


def _final(table: pd.DataFrame) -> pd.DataFrame:
    """Each model's last scored revision."""
    return table[table["step"] == table.groupby("model")["step"].transform("max")]


@dataclass
class Run:
    """The tables of a finished work directory; each loaded on first use."""

    workdir: Path
    preset: str

    @classmethod
    def open(cls, workdir: str | Path, preset: str | None = None) -> "Run":
        return cls(Path(workdir), check_workdir(workdir, preset))

    @cached_property
    def family(self) -> FamilySpec:
        return load_family(self.workdir / "family")

    @cached_property
    def sizes(self) -> list[str]:
        """Model sizes, smallest first."""
        return sorted(self.family.size_names, key=lambda s: (self.params[s] or 0, s))

    @cached_property
    def params(self) -> dict[str, int | None]:
        return {s.name: s.params for s in self.family.sizes}

    @cached_property
    def scores(self) -> pd.DataFrame:
        """Final checkpoints over the grid."""
        from dynamics.scoring.table import read_scores

        return _final(read_scores(self.workdir / "scores"))

    @cached_property
    def checkpoints(self) -> pd.DataFrame:
        from dynamics.scoring.table import read_scores

        return read_scores(self.workdir / "scores_checkpoints")

    @cached_property
    def generations(self) -> pd.DataFrame:
        from dynamics.scoring.table import read_generations

        return _final(read_generations(self.workdir / "scores"))

    @cached_property
    def cell(self) -> tuple[int, int]:
        """The main (context, continuation) cell: nearest to the paper's 32 / 16, as the pipeline picks it."""
        ks, cs = self.scores["context_len"].unique(), self.scores["continuation_len"].unique()
        return int(min(ks, key=lambda v: abs(v - 32))), int(min(cs, key=lambda v: abs(v - 16)))

    def dynamics_table(self, name: str) -> pd.DataFrame:
        path = self.workdir / "dynamics" / "tables" / f"{name}.parquet"
        return pd.read_parquet(path) if path.is_file() else pd.DataFrame()

    def sequences(self, size: str) -> pd.DataFrame:
        path = self.workdir / "dynamics" / size / "sequences.parquet"
        return pd.read_parquet(path) if path.is_file() else pd.DataFrame()

    @cached_property
    def predictor(self) -> dict[str, dict]:
        """'<size>-<mode>' -> cv.json (cross-validated), else metrics.json (one split); skipped ones ->
        {'skipped': reason}."""
        root = self.workdir / "predictor"
        out = {p.name: read_json(p / "cv.json") if (p / "cv.json").is_file() else read_json(p / "metrics.json")
               for p in sorted(root.iterdir()) if (p / "metrics.json").is_file()}
        out.update({name: {"skipped": why} for name, why in read_json(root / "skipped.json").items()})
        return out

    @cached_property
    def capacity(self) -> pd.DataFrame | None:
        """The capacity stage's per-model table, or None when that stage has not run."""
        path = self.workdir / CAPACITY_TABLE
        return pd.read_parquet(path) if path.is_file() else None

    @cached_property
    def domains(self) -> pd.Series | None:
        from dynamics.decoding.collect import sample_domains

        return sample_domains(self.family.data.prefix)
