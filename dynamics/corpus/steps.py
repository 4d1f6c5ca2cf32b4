"""Pythia's step <-> sample mapping.

Pythia trains on the pre-shuffled data in order, `batch_size` samples per step (1024 for every
Pythia model). Checkpoint `step<N>` is saved after N optimizer steps, so it has seen samples
[0, N * batch_size). memdyn's own families follow the same rule; when a family trains for more
than one epoch, stream index i is dataset sample i % num_samples.
"""

from __future__ import annotations

PYTHIA_BATCH_SIZE = 1024


def _check(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def step_samples(step: int, batch_size: int = PYTHIA_BATCH_SIZE) -> range:
    """Stream indices of the samples consumed by optimizer step `step` (0-based)."""
    _check("step", step)
    return range(step * batch_size, (step + 1) * batch_size)


def samples_seen(step: int, batch_size: int = PYTHIA_BATCH_SIZE) -> int:
    """Number of samples checkpoint `step<N>` has trained on: the stream prefix [0, N*batch_size)."""
    _check("step", step)
    return step * batch_size


def sample_step(sample_idx: int, batch_size: int = PYTHIA_BATCH_SIZE) -> int:
    """The optimizer step that trains on stream index `sample_idx`; first seen in checkpoint step+1."""
    _check("sample_idx", sample_idx)
    return sample_idx // batch_size


def revision_step(revision: str) -> int:
    """'step1000' -> 1000; the inverse of `revision_name`."""
    if not revision.startswith("step") or not revision[4:].isdigit():
        raise ValueError(f"revision must look like 'step<N>' (e.g. step143000), got {revision!r}")
    return int(revision[4:])


def sort_revisions(revisions) -> list[str]:
    """Revision names in training order (step0, step1, ..., step1000)."""
    return sorted(revisions, key=revision_step)


def revision_name(step: int) -> str:
    _check("step", step)
    return f"step{step}"


def pythia_revisions(final_step: int = 143000) -> list[str]:
    """Pythia's published checkpoints: step0, log-spaced 1..512, then every 1000 to the end."""
    steps = [0] + [2**i for i in range(10)] + list(range(1000, final_step + 1, 1000))
    return [revision_name(s) for s in steps if s <= final_step]
