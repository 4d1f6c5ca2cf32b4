"""One `memdyn run` work directory: where each stage writes (the pipeline), and its tables loaded
once (the reports and notebooks).

    WORKDIR/run.json             preset and seed the directory belongs to
    WORKDIR/family/              `memdyn family train` output
    WORKDIR/scores/              final checkpoints of every size over the preset's grid
    WORKDIR/scores_checkpoints/  every checkpoint of every size at the main cell
    WORKDIR/dynamics/            entropy, n-gram and hidden-state dynamics at the main cell
    WORKDIR/predictor/<size>-<mode>/  memorization predictors per size and input mode
    WORKDIR/predictor/skipped.json    sizes whose labels have too few samples of a class
    WORKDIR/capacity/            unintended memorization in bits per size, loss-threshold membership law
    WORKDIR/membership/          membership-inference attacks per size and checkpoint
    WORKDIR/analyses/            duplication dose-response, taxonomy, canaries

Every stage the pipeline writes is required by the readers; a missing one is named with the
command that produces it. The capacity stage is optional.
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
from dynamics.scoring.grid import pick_cell

def _stages(w: "Workdir", preset: str) -> list[tuple[str, Path, str]]:
    """(stage, file that proves it finished, command that produces it)."""
    p = get_preset(preset)
    grid = f"--contexts {','.join(map(str, p.contexts))} --continuations {','.join(map(str, p.continuations))}"
    rerun = f"memdyn run --workdir {w.root} --preset {preset}"
    return [
        ("family", w.family_dir / "family.json", f"memdyn family train --preset {preset} --out {w.family_dir}"),
        ("scores", w.scores_dir / "_settings.json", f"memdyn score --family {w.family_dir} --out {w.scores_dir} {grid} --exclude-canaries"),
        ("scores_checkpoints", w.checkpoints_dir / "_settings.json", rerun),
        ("dynamics", w.dynamics_dir / "tables" / "curves.parquet",
         f"memdyn dynamics --family {w.family_dir} --scores {w.scores_dir} --out {w.dynamics_dir}"),
        ("predictor", w.predictor_root / "skipped.json", rerun),
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
    for stage, proof, command in _stages(Workdir(w), run["preset"]):
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
class Workdir:
    """A work directory: its stages' locations, and (once opened finished) their tables, each
    loaded on first use."""

    root: Path
    preset: str | None = None

    def __post_init__(self):
        self.root = Path(self.root)

    @classmethod
    def open(cls, workdir: str | Path, preset: str | None = None) -> "Workdir":
        """A finished work directory, every stage checked."""
        return cls(Path(workdir), check_workdir(workdir, preset))

    run_json = property(lambda self: self.root / "run.json")
    family_dir = property(lambda self: self.root / "family")
    scores_dir = property(lambda self: self.root / "scores")
    checkpoints_dir = property(lambda self: self.root / "scores_checkpoints")
    dynamics_dir = property(lambda self: self.root / "dynamics")
    predictor_root = property(lambda self: self.root / "predictor")
    capacity_dir = property(lambda self: self.root / "capacity")
    capacity_table = property(lambda self: self.capacity_dir / "text_capacity.parquet")
    membership_dir = property(lambda self: self.root / "membership")
    analyses_dir = property(lambda self: self.root / "analyses")

    def predictor_dir(self, size: str, mode: str) -> Path:
        return self.predictor_root / f"{size}-{mode}"

    @cached_property
    def family(self) -> FamilySpec:
        return load_family(self.family_dir)

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

        return _final(read_scores(self.scores_dir))

    @cached_property
    def checkpoints(self) -> pd.DataFrame:
        from dynamics.scoring.table import read_scores

        return read_scores(self.checkpoints_dir)

    @cached_property
    def generations(self) -> pd.DataFrame:
        from dynamics.scoring.table import read_generations

        return _final(read_generations(self.scores_dir))

    @cached_property
    def cell(self) -> tuple[int, int]:
        """The main (context, continuation) cell of the scores."""
        return pick_cell(self.scores)

    def dynamics_table(self, name: str) -> pd.DataFrame:
        path = self.dynamics_dir / "tables" / f"{name}.parquet"
        if not path.is_file():
            return pd.DataFrame()
        self._verify(self.dynamics_dir, "tables/", "dynamics")
        return pd.read_parquet(path)

    def sequences(self, size: str) -> pd.DataFrame:
        path = self.dynamics_dir / size / "sequences.parquet"
        if not path.is_file():
            return pd.DataFrame()
        self._verify(self.dynamics_dir, f"{size}/", "dynamics")
        return pd.read_parquet(path)

    def _verify(self, root: Path, prefix: str, what: str) -> None:
        """A stage's files as its manifest records them (else the reports would show a damaged table)."""
        from dynamics import manifest

        manifest.verify(root, [f"{prefix}*.parquet"], f"memdyn run --workdir {self.root}", what, prefix=prefix)

    @cached_property
    def predictor(self) -> dict[str, dict]:
        """'<size>-<mode>' -> cv.json (cross-validated), else metrics.json (one split); skipped ones ->
        {'skipped': reason}."""
        from predictor.store import trained_on, verify_predictor

        root = self.predictor_root
        out = {}
        for p in sorted(root.iterdir()):
            if not (p / "metrics.json").is_file():
                continue
            verify_predictor(p, f"memdyn run --workdir {self.root}")
            if not trained_on(p, scores=self.scores_dir, dynamics=self.dynamics_dir):
                raise MemdynError(f"{p} was trained on other scores or dynamics than {self.root} holds (settings "
                                  f"fingerprints differ); remove it and rerun `memdyn run --workdir {self.root}`")
            out[p.name] = read_json(p / "cv.json") if (p / "cv.json").is_file() else read_json(p / "metrics.json")
        out.update({name: {"skipped": why} for name, why in read_json(root / "skipped.json").items()})
        return out

    @cached_property
    def capacity(self) -> pd.DataFrame | None:
        """The capacity stage's per-model table, or None when that stage has not run."""
        from dynamics.capacity.text import SETTINGS, computed_from

        if not self.capacity_table.is_file():
            return None
        self._verify(self.capacity_dir, "", "capacity")
        if not (self.capacity_dir / SETTINGS).is_file():  # written last: the stage was stopped before its end
            raise MemdynError(f"{self.capacity_dir} is unfinished (its run was stopped); rerun `memdyn run --workdir "
                              f"{self.root}` to complete it")
        if not computed_from(self.capacity_dir, self.family):
            raise MemdynError(f"{self.capacity_dir} was computed from other inputs than {self.family_dir} holds (corpus, "
                              f"checkpoints or reference models differ); remove it and rerun `memdyn run --workdir {self.root}`")
        return pd.read_parquet(self.capacity_table)

    @cached_property
    def training_data(self):
        from dynamics.family.data import training_data

        return training_data(self.family)

    @cached_property
    def domains(self) -> pd.Series | None:
        return self.training_data.domains()
