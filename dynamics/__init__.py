"""memdyn: memorization dynamics of causal language model families.

The package face: every main entry point, imported on first use (so `import dynamics` and the CLI
stay fast and do not load torch until a function runs).

    import dynamics as md
    family = md.load_family("runs/family")            # or "pythia-deduped", or a model directory
    md.score(family, "runs/my_scores", contexts=[32], continuations=[16, 32])
    table = md.read_scores("runs/my_scores")
    print(md.summarize(table))
"""

from __future__ import annotations

import importlib

from dynamics.errors import MemdynError

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "load_family": "dynamics.family.spec",
    "FamilySpec": "dynamics.family.spec",
    "train_family": "dynamics.family.train",
    "train_references": "dynamics.family.train",
    "load_model": "dynamics.family.load",
    "load_tokenizer": "dynamics.family.load",
    "score": "dynamics.scoring.table",
    "read_scores": "dynamics.scoring.table",
    "read_generations": "dynamics.scoring.table",
    "summarize": "dynamics.scoring.transitions",
    "transition_matrix": "dynamics.scoring.transitions",
    "main_cell": "dynamics.scoring.grid",
    "score_classes": "dynamics.scoring.grid",
    "run_dynamics": "dynamics.decoding.analyze",
    "NgramIndex": "dynamics.ngrams",
    "text_capacity": "dynamics.capacity.text",
    "run_sweep": "dynamics.capacity.synthetic",
    "write_reports": "dynamics.report",
    "Workdir": "dynamics.workdir",
    "run_pipeline": "dynamics.pipeline",
}
# modules of functions that draw or describe a finished run (figures and captions), for notebooks
_MODULES = {"plots": "dynamics.decoding.plots", "findings": "dynamics.report.findings", "figures": "dynamics.report.figures"}

__all__ = ["MemdynError", *_API, *_MODULES]


def __getattr__(name: str):
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
    else:
        raise AttributeError(f"module 'dynamics' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
