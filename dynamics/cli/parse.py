"""Command-line syntax (comma lists, START:END ranges), turned into the typed values the library
takes. Only the CLI parses text; library functions never see these spellings."""

from __future__ import annotations

import re

from dynamics.errors import MemdynError


def int_list(text: str, option: str, minimum: int = 1) -> list[int]:
    """'32,48,64' -> [32, 48, 64] (sorted, distinct, each >= minimum)."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise MemdynError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not values or values[0] < minimum:
        raise MemdynError(f"{option} must be integers >= {minimum}, got {text!r}")
    return values


def name_list(text: str | None) -> list[str] | None:
    """'a,b' -> ['a', 'b']; None (the option not given) stays None."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    return names or None


def sample_range(text: str | None, option: str = "--samples") -> tuple[int, int | None] | None:
    """'START:END' -> (START, END); either side may be empty (0, and the end of the data)."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d*):(\d*)", text.strip())
    if not m:
        raise MemdynError(f"{option} must look like START:END (e.g. 0:1000), got {text!r}")
    return int(m[1]) if m[1] else 0, int(m[2]) if m[2] else None


def float_list(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MemdynError(f"{option} must be comma-separated numbers, got {text!r}") from None


def class_edges(text: str) -> tuple[float, float]:
    """'LO,HI' -> (LO, HI): unmemorized score <= LO, memorized score >= HI, partial between."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise MemdynError(f"--edges must be two numbers LO,HI (unmemorized <= LO, memorized >= HI), got {text!r}") from None
    if not 0 <= lo < hi <= 1:
        raise MemdynError(f"--edges needs 0 <= LO < HI <= 1, got {text!r}")
    return lo, hi


def hidden_layers(text: str, option: str = "--layers") -> str | list[int]:
    """'last', 'all' or comma-separated hidden_states indexes (0 = embeddings)."""
    spec = text.strip().lower()
    if spec in ("last", "all"):
        return spec
    try:
        layers = sorted({int(v) for v in spec.split(",") if v.strip()})
    except ValueError:
        raise MemdynError(f"{option} must be last, all or comma-separated layer indexes, got {text!r}") from None
    if not layers or layers[0] < 0:
        raise MemdynError(f"{option} indexes must be >= 0 (0 = embeddings), got {text!r}")
    return layers
